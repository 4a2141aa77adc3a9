"""Python helpers for the Swin UNETR bundle's configs: what MONAI does not provide itself."""

"""Self-supervised pre-training network: the Swin UNETR encoder with rotation, contrastive and
reconstruction heads (Tang et al., CVPR 2022)."""

from __future__ import annotations

import torch
from monai.networks.nets import SwinUNETR
from torch import nn

from scripts.options import choice


class SSLHead(nn.Module):
    """Swin encoder (``swinViT``, named exactly as in ``SwinUNETR``) plus the three proxy-task heads.

    Args:
        in_channels: input channels.
        feature_size: Swin embedding size (12, 24 or 48); heads are sized from it (bottleneck 16x).
        proj_dim: size of the contrastive projection.
        token_choice: ``"reference"`` feeds bottleneck token 0 to the rotation head and token 1 to the
            contrastive head, as the reference code does (``"paper"`` is accepted as an older name of
            it); ``"pool"`` feeds both the mean over all tokens.
        use_checkpoint: gradient checkpointing in the encoder.
        downsample: patch merging of the encoder, as in ``SwinUNETR`` (``scripts.weights.loading.patch_merging``
            picks the legacy order for weights trained with it).
        window_size: Swin attention window (paper: 7); the relative-position tables are sized by it, so
            weights load only into a network of the same window.
        use_flash_attention: MONAI's fused attention whenever no gradient is taken (validation).

    Input ``(B, in_channels, H, W, D)`` with sides divisible by 32 and at least 64. Returns
    ``(rotation logits (B, 4), projection (B, proj_dim), reconstruction (B, in_channels, H, W, D))``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        feature_size: int = 48,
        proj_dim: int = 512,
        token_choice: str = "reference",
        use_checkpoint: bool = False,
        downsample="merging",
        window_size: int = 7,
        use_flash_attention: bool = False,
    ):
        super().__init__()
        token_choice = {"paper": "reference"}.get(token_choice, token_choice)
        self.token_choice = choice("token_choice", token_choice, ("reference", "pool"))
        # taking the encoder from SwinUNETR guarantees identical parameter names and defaults
        self.swinViT = SwinUNETR(
            in_channels=in_channels,
            out_channels=1,
            feature_size=feature_size,
            use_checkpoint=use_checkpoint,
            downsample=downsample,
            window_size=window_size,
            use_flash_attention=use_flash_attention,
        ).swinViT
        dim = 16 * feature_size
        self.rotation_head = nn.Linear(dim, 4)
        self.contrastive_head = nn.Linear(dim, proj_dim)
        channels = [dim, dim // 2, dim // 4, dim // 8, dim // 16, dim // 16]
        stages: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            stages += [
                nn.Conv3d(c_in, c_out, 3, padding=1),
                nn.InstanceNorm3d(c_out),
                nn.LeakyReLU(),
                nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False),
            ]
        stages.append(nn.Conv3d(channels[-1], in_channels, 1))
        self.reconstruction_head = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor):
        if min(x.shape[2:]) < 64 or any(s % 32 for s in x.shape[2:]):
            raise ValueError(f"spatial size must be a multiple of 32 and at least 64, got {tuple(x.shape[2:])}")
        features = self.swinViT(x.contiguous())[4]  # (B, 16f, H/32, W/32, D/32)
        tokens = features.flatten(2).transpose(1, 2)  # (B, N, 16f)
        if self.token_choice == "reference":
            rotation_token, contrastive_token = tokens[:, 0], tokens[:, 1]
        else:
            rotation_token = contrastive_token = tokens.mean(1)
        return (
            self.rotation_head(rotation_token),
            self.contrastive_head(contrastive_token),
            self.reconstruction_head(features),
        )

"""The Swin networks as the workflows run them: attention kernel, compilation, device."""

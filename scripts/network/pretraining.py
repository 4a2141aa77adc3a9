"""Self-supervised pre-training network: the Swin UNETR encoder with rotation, contrastive and
reconstruction heads (Tang et al., CVPR 2022), and optionally a SimMIM masked-image-modelling head."""

from __future__ import annotations

import torch
from monai.networks.nets import SwinUNETR
from monai.networks.utils import pixelshuffle
from torch import nn

from scripts.options import choice
from scripts.pretraining.tasks import PAPER_TASKS, check_tasks

ENCODER_STRIDE = 32  # the last Swin stage is at 1/32 of the crop: MIM's head predicts 32^3 voxels per token
HEAD_TYPES = ("linear", "mlp")
# what ``proxy_heads`` sets: the reference code's heads, and the bundle's (docs/pretraining.md, "Heads that learn")
HEAD_PRESETS = {
    "reference": {"token_choice": "reference", "head_type": "linear"},
    "pooled_mlp": {"token_choice": "pool", "head_type": "mlp"},
}


def head_preset(name: str) -> dict:
    """``token_choice`` and ``head_type`` of a ``proxy_heads`` preset (``HEAD_PRESETS``)."""
    return HEAD_PRESETS[choice("proxy_heads", name, tuple(HEAD_PRESETS))]


def _head(dim: int, out: int, head_type: str) -> nn.Module:
    if head_type == "linear":
        return nn.Linear(dim, out)
    return nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim), nn.GELU(), nn.Linear(dim, out))


class SSLHead(nn.Module):
    """Swin encoder (``swinViT``, named exactly as in ``SwinUNETR``) plus the heads of the selected proxy tasks.

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
        tasks: the proxy tasks (``scripts.pretraining.tasks``); only their heads are built. ``mim`` adds a
            mask token (substituted at the patch embedding, not part of the encoder) and a one-layer head.
        head_type: ``"linear"``: one linear layer per head, as the reference code; ``"mlp"``: Linear,
            LayerNorm, GELU, Linear (hidden size ``dim``), a per-sample normalisation that needs no batch.

    ``forward(x, mim_x=None, mim_mask=None)``: ``x`` (B, in_channels, H, W, D) the views of the paper's tasks,
    ``mim_x`` (M, in_channels, H, W, D) crops for MIM with ``mim_mask`` (M, 1, H, W, D) 0/1 block mask; sides
    divisible by 32 and at least 64. Both go through the encoder in one batch. Returns a dict with the built
    heads' outputs: ``rotation`` logits (B, 4), ``projection`` (B, proj_dim), ``reconstruction`` and ``mim``
    (B or M, in_channels, H, W, D).
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
        tasks=PAPER_TASKS,
        head_type: str = "linear",
    ):
        super().__init__()
        self.head_type = choice("head_type", head_type, HEAD_TYPES)
        self.tasks = check_tasks(tasks)
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
        if "inpainting" in self.tasks:
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
        # built after the decoder, so that the encoder and decoder start alike (for a seed) whatever the heads
        if "rotation" in self.tasks:
            self.rotation_head = _head(dim, 4, self.head_type)
        if "contrastive" in self.tasks:
            self.contrastive_head = _head(dim, proj_dim, self.head_type)
        if "mim" in self.tasks:
            self.mask_token = nn.Parameter(nn.init.trunc_normal_(torch.zeros(1, feature_size, 1, 1, 1), std=0.02))
            self.mim_head = nn.Conv3d(dim, ENCODER_STRIDE**3 * in_channels, 1)

    def _encode(self, x: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
        """Bottleneck features (N, 16f, H/32, W/32, D/32); patch tokens where ``token_mask`` is 1 are the mask token."""
        if token_mask is None:
            return self.swinViT(x.contiguous())[4]

        def substitute(module, inputs, tokens):  # (N, f, H/2, W/2, D/2) out of the patch embedding
            return tokens * (1 - token_mask) + self.mask_token.to(tokens.dtype) * token_mask

        handle = self.swinViT.patch_embed.register_forward_hook(substitute)
        try:
            return self.swinViT(x.contiguous())[4]
        finally:
            handle.remove()

    def forward(self, x: torch.Tensor | None = None, mim_x: torch.Tensor | None = None, mim_mask=None) -> dict:
        parts = [t for t in (x, mim_x) if t is not None]
        if not parts:
            raise ValueError("SSLHead needs views x, MIM crops mim_x, or both")
        batch = torch.cat(parts) if len(parts) > 1 else parts[0]
        if min(batch.shape[2:]) < 64 or any(s % 32 for s in batch.shape[2:]):
            raise ValueError(f"spatial size must be a multiple of 32 and at least 64, got {tuple(batch.shape[2:])}")
        token_mask = None
        if mim_x is not None:
            if "mim" not in self.tasks or mim_mask is None:
                raise ValueError("mim_x needs the mim task and its mim_mask")
            patch = self.swinViT.patch_embed.patch_size[0]
            token_mask = mim_mask[:, :, ::patch, ::patch, ::patch].to(batch.dtype)
            if x is not None:  # the views keep every token
                token_mask = torch.cat([token_mask.new_zeros((x.shape[0], *token_mask.shape[1:])), token_mask])
        features = self._encode(batch, token_mask)  # (N, 16f, H/32, W/32, D/32)
        out = {}
        if x is not None:
            views = features[: x.shape[0]]
            tokens = views.flatten(2).transpose(1, 2)  # (B, N, 16f)
            if self.token_choice == "reference":
                rotation_token, contrastive_token = tokens[:, 0], tokens[:, 1]
            else:
                rotation_token = contrastive_token = tokens.mean(1)
            if "rotation" in self.tasks:
                out["rotation"] = self.rotation_head(rotation_token)
            if "contrastive" in self.tasks:
                out["projection"] = self.contrastive_head(contrastive_token)
            if "inpainting" in self.tasks:
                out["reconstruction"] = self.reconstruction_head(views)
        if mim_x is not None:
            out["mim"] = pixelshuffle(self.mim_head(features[batch.shape[0] - mim_x.shape[0] :]), 3, ENCODER_STRIDE)
        return out

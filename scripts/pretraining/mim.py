"""SimMIM-style masked image modelling on the Swin encoder (Xie et al., CVPR 2022, arXiv 2111.09886), in 3-D.

Cubic blocks of ``block_size`` voxels are masked at random, ``ceil(ratio x blocks)`` per crop; the patch tokens
inside them are replaced by one learnable mask token at the patch embedding (the network never sees their
voxels), and a one-layer head predicts every voxel from the last encoder stage; the loss is the L1 on the
masked voxels only. SimMIM's Swin settings: mask patch size 32 (the encoder's stride), mask ratio 0.6, a 1x1
convolution + pixel shuffle as the head, the mask token initialised N(0, 0.02) truncated.
"""

from __future__ import annotations

import math

import torch

from scripts.errors import ConfigError


def check_blocks(roi_size, block_size: int, patch_size: int = 2) -> None:
    """``block_size`` must divide every crop side and be a multiple of the encoder's patch size."""
    if block_size < patch_size or block_size % patch_size or any(int(s) % block_size for s in roi_size):
        raise ConfigError(
            f"mim_block_size {block_size}: must be a multiple of the patch size {patch_size} that divides every side "
            f"of roi_size {list(roi_size)} (e.g. 32 for multiples of 32)"
        )


def block_mask(batch: int, spatial, block_size: int, ratio: float, device=None) -> torch.Tensor:
    """Random block mask (B, 1, *spatial) of 0/1 floats: exactly ``ceil(ratio x blocks)`` of each crop's
    cubic blocks of side ``block_size`` are 1 (masked). Drawn from torch's global generator."""
    if not 0 < ratio < 1:
        raise ConfigError(f"mim_mask_ratio {ratio}: must be between 0 and 1 (SimMIM: 0.6)")
    grid = [int(s) // block_size for s in spatial]
    blocks = math.prod(grid)
    count = math.ceil(blocks * ratio)
    order = torch.rand(batch, blocks).argsort(1)
    mask = torch.zeros(batch, blocks)
    mask.scatter_(1, order[:, :count], 1.0)
    mask = mask.view(batch, 1, *grid)
    for axis in range(3):
        mask = mask.repeat_interleave(block_size, dim=axis + 2)
    return mask.to(device)


def masked_l1(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the masked voxels only (SimMIM's loss): ``prediction`` and ``target``
    (B, C, H, W, D), ``mask`` (B, 1, H, W, D) of 0/1. Voxels outside the mask do not contribute."""
    weight = mask.expand_as(target)
    return ((prediction - target).abs() * weight).sum() / weight.sum().clamp_min(1.0)

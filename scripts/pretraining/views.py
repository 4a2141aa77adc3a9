"""The two views of each crop that the three proxy tasks learn from (Tang et al., CVPR 2022)."""

from __future__ import annotations

import torch

from scripts.options import choice
from scripts.pretraining.proxy_tasks import REFERENCE_ROTATION_AXES, mask, rotate

VIEW_ROTATIONS = ("independent", "shared")


def make_views(
    x: torch.Tensor,
    max_fraction: float = 0.3,
    min_side: float = 0.05,
    max_side: float = 0.25,
    rotation_axes=REFERENCE_ROTATION_AXES,
    swap_source: str = "unmasked",
    view_rotation: str = "independent",
):
    """Two views of each crop of ``x`` (B, C, H, W, D), each rotated and then masked independently
    (``view_rotation="independent"``, as the reference code), or both turned by the same quarter turns and
    masked independently (``"shared"``: the contrastive pair then differs by its masking only).

    Returns ``(inputs, rotation targets, reconstruction targets)``: the masked rotated crops
    (2B, C, H, W, D), k (2B,) and the rotated crops without masking (2B, C, H, W, D); view 1 of all
    crops first, then view 2. Masking arguments: see ``scripts.pretraining.proxy_tasks.mask``.
    """
    choice("view_rotation", view_rotation, VIEW_ROTATIONS)
    x1, k1 = rotate(x, rotation_axes)
    x2, k2 = (x1, k1) if view_rotation == "shared" else rotate(x, rotation_axes)
    m1, _ = mask(x1, max_fraction, min_side, max_side, swap_source)
    m2, _ = mask(x2, max_fraction, min_side, max_side, swap_source)
    return torch.cat([m1, m2]), torch.cat([k1, k2]).to(x.device), torch.cat([x1, x2])

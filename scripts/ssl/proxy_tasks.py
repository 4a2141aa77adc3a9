"""Proxy tasks of Swin UNETR pre-training on a batch of crops: rotation and masked volume inpainting.

Random numbers come from torch's global generator, so ``monai.utils.set_determinism`` makes them
reproducible.
"""

from __future__ import annotations

import torch


def rotate(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate each crop of ``x`` (B, C, H, W, D) by k x 90 degrees in the (W, D) plane, k uniform in 0..3.

    Returns the rotated batch and the targets k (B,), int64. ``torch.rot90(y, -k, dims=(2, 3))`` on
    a rotated sample (C, H, W, D) gives back the original crop.
    """
    k = torch.randint(0, 4, (x.shape[0],))
    return torch.stack([xi.rot90(int(ki), dims=(2, 3)) for xi, ki in zip(x, k)]), k


def _random_boxes(shape, max_fraction: float, min_side: float, max_side: float):
    """Boxes (slices) at random positions until their summed volume reaches U(0, max_fraction) of ``shape``."""
    target = float(torch.rand(())) * max_fraction * float(torch.tensor(shape).prod())
    lo = [max(int(min_side * s), 1) for s in shape]
    hi = [max(int(max_side * s), low + 1) for s, low in zip(shape, lo)]
    boxes, covered = [], 0
    while covered < target:
        box = []
        for s, a, b in zip(shape, lo, hi):
            start = int(torch.randint(0, s - a + 1, ()))
            size = int(torch.randint(a, b, ()))
            box.append(slice(start, min(start + size, s)))
        boxes.append(tuple(box))
        covered += int(torch.tensor([sl.stop - sl.start for sl in box]).prod())
    return boxes


def mask(x: torch.Tensor, max_fraction: float = 0.3, min_side: float = 0.05, max_side: float = 0.25):
    """Masked volume inpainting input for a batch ``x`` (B, C, H, W, D) of intensities in [0, 1].

    For each crop, boxes with sides in [min_side, max_side) of the crop side are added at random
    positions until their summed volume reaches a fraction U(0, max_fraction) of the crop (the last
    box may overshoot by its own volume); they are filled with Gaussian noise rescaled to [0, 1].
    Then, when a randomly drawn other crop of the batch differs from this one, a second set of boxes
    drawn the same way is filled with that crop's voxels at the same location. Returns the masked
    batch and a fill map (B, H, W, D): 0 kept, 1 noise, 2 other crop.
    """
    if not 0 <= max_fraction <= 1 or not 0 < min_side < max_side <= 1:
        raise ValueError(
            f"need 0 <= max_fraction <= 1 and 0 < min_side < max_side <= 1, got {max_fraction}, {min_side}, {max_side}"
        )
    out, fill = x.clone(), torch.zeros((x.shape[0], *x.shape[2:]), dtype=torch.uint8, device=x.device)
    spatial = tuple(x.shape[2:])
    for i in range(x.shape[0]):
        for box in _random_boxes(spatial, max_fraction, min_side, max_side):
            noise = torch.randn((x.shape[1], *[b.stop - b.start for b in box]), device=x.device)
            out[(i, slice(None), *box)] = (noise - noise.min()) / (noise.max() - noise.min()).clamp_min(1e-8)
            fill[(i, *box)] = 1
        other = int(torch.randint(0, x.shape[0], ()))
        if other != i:
            for box in _random_boxes(spatial, max_fraction, min_side, max_side):
                out[(i, slice(None), *box)] = x[(other, slice(None), *box)]
                fill[(i, *box)] = 2
    return out, fill

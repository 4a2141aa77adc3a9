"""Proxy tasks of Swin UNETR pre-training on a batch of crops: rotation and masked volume inpainting.

Random numbers come from torch's global generator, so ``monai.utils.set_determinism`` makes them
reproducible. Spatial axes are those of the crop after ``Orientationd("RAS")``: 0 = x (right to left),
1 = y (anterior to posterior), 2 = z (inferior to superior).
"""

from __future__ import annotations

import torch

from scripts.errors import ConfigError
from scripts.options import choice

# the reference code's rot90(k, dims=(2, 3)) on a (C, H, W, D) sample: the y-z plane, about the x axis
REFERENCE_ROTATION_AXES = (1, 2)
SWAP_SOURCES = ("unmasked", "masked")


def check_rotation_plane(roi_size, axes=REFERENCE_ROTATION_AXES) -> tuple[int, int]:
    """The rotation plane ``axes`` (two distinct spatial axes), checked against the crop size: a quarter
    turn swaps the plane's two sides, so they must be equal for the rotated crops to stack into a batch."""
    axes = tuple(int(a) for a in axes)
    if len(axes) != 2 or len(set(axes)) != 2 or not all(0 <= a <= 2 for a in axes):
        raise ConfigError(f"rotation_axes {list(axes)}: need two different spatial axes out of 0, 1, 2")
    a, b = (int(roi_size[i]) for i in axes)
    if a != b:
        raise ConfigError(
            f"roi_size {list(roi_size)} with rotation_axes {list(axes)}: quarter turns need the two sides of the "
            f"rotation plane to be equal ({a} != {b}); make them equal or rotate in another plane"
        )
    return axes


def rotate(x: torch.Tensor, axes=REFERENCE_ROTATION_AXES) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate each crop of ``x`` (B, C, H, W, D) by k x 90 degrees in the plane of the spatial ``axes``
    (default: the reference code's y-z plane), k uniform in 0..3.

    Returns the rotated batch and the targets k (B,), int64. ``torch.rot90(y, -k, dims=(a + 1, b + 1))``
    on a rotated sample (C, H, W, D) gives back the original crop.
    """
    dims = tuple(a + 1 for a in check_rotation_plane(x.shape[2:], axes))  # spatial axis -> sample dim
    k = torch.randint(0, 4, (x.shape[0],))
    return torch.stack([xi.rot90(int(ki), dims=dims) for xi, ki in zip(x, k)]), k


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


def mask(
    x: torch.Tensor,
    max_fraction: float = 0.3,
    min_side: float = 0.05,
    max_side: float = 0.25,
    swap_source: str = "unmasked",
):
    """Masked volume inpainting input for a batch ``x`` (B, C, H, W, D) of intensities in [0, 1].

    For each crop, boxes with sides in [min_side, max_side) of the crop side are added at random
    positions until their summed volume reaches a fraction U(0, max_fraction) of the crop (the last
    box may overshoot by its own volume); they are filled with Gaussian noise rescaled to [0, 1].
    Then, when a randomly drawn other crop of the batch differs from this one, a second set of boxes
    drawn the same way is filled with that crop's voxels at the same location: from its ``"unmasked"``
    voxels, or (``"masked"``, as the reference code) from the batch as masked so far, where crops
    earlier in the batch already carry their boxes. Returns the masked batch and a fill map
    (B, H, W, D): 0 kept, 1 noise, 2 other crop.
    """
    if not 0 <= max_fraction <= 1 or not 0 < min_side < max_side <= 1:
        raise ValueError(
            f"need 0 <= max_fraction <= 1 and 0 < min_side < max_side <= 1, got {max_fraction}, {min_side}, {max_side}"
        )
    choice("swap_source", swap_source, SWAP_SOURCES)
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
                source = x if swap_source == "unmasked" else out
                out[(i, slice(None), *box)] = source[(other, slice(None), *box)]
                fill[(i, *box)] = 2
    return out, fill

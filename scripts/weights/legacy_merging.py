"""3-D patch merging as MONAI computed it before 1.5, for Swin weights trained with it (all 2022 releases).

MONAI < 1.5 concatenated eight strided slices ``x[:, d::2, h::2, w::2]`` in an order that repeats two
offsets and never uses two others; MONAI 1.5 made all eight distinct. Weights are interchangeable in
shape, so old weights run through the new order without any error, computing something else.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.nets.swin_unetr import PatchMergingV2

# (d, h, w) start offsets in the pre-1.5 order: (0, 1, 0) and (0, 0, 1) twice, (1, 1, 0) and (0, 1, 1) never
LEGACY_OFFSETS = ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 0), (0, 0, 1), (1, 1, 1))


class LegacyPatchMerging(PatchMergingV2):
    """``PatchMerging`` with MONAI's pre-1.5 3-D slice order; same parameters, so weights load unchanged.

    Input (B, D, H, W, C) channels-last, output (B, ceil(D/2), ceil(H/2), ceil(W/2), 2C); 2-D inputs
    are merged as by MONAI's current class.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            return super().forward(x)
        _, d, h, w, _ = x.shape
        if d % 2 or h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2, 0, d % 2))
        x = torch.cat([x[:, i::2, j::2, k::2, :] for i, j, k in LEGACY_OFFSETS], -1)
        return self.reduction(self.norm(x))

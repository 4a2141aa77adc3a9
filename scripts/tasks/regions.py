"""Region labels: overlapping structures (brain tumour core, whole tumour, enhancing tumour) as channels."""

from __future__ import annotations

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform


class LabelToRegionsd(MapTransform):
    """Turn a label map ``(1, ...)`` into one binary channel per region, a region being a set of label values.

    With ``regions=None`` the label map is left as it is (the multi-class tasks), so the same transform
    chain serves every task. Regions may overlap (whole tumour contains tumour core contains enhancing
    tumour), which one-hot classes cannot express; the network then predicts them with sigmoid outputs.
    Keys absent from the data (inference has no label) are skipped.
    """

    def __init__(self, keys: KeysCollection, regions=None, allow_missing_keys: bool = True):
        super().__init__(keys, allow_missing_keys)
        if regions is not None:
            regions = [[int(v) for v in region] for region in regions]
            if not regions or any(not region for region in regions):
                raise ValueError(f"regions must be non-empty lists of label values, got {regions}")
        self.regions = regions

    def __call__(self, data):
        d = dict(data)
        if self.regions is None:
            return d
        for key in self.key_iterator(d):
            label = d[key]
            if label.shape[0] != 1:
                raise ValueError(f"{key}: expected a one-channel label map, got shape {tuple(label.shape)}")
            channels = [torch.isin(torch.as_tensor(label[0]), torch.tensor(r)) for r in self.regions]
            regions = torch.stack(channels).to(torch.float32)
            # keep the label's metadata (affine, file name): the evaluation scores on its grid in mm
            if isinstance(label, MetaTensor):
                regions = MetaTensor(regions, meta=label.meta, applied_operations=label.applied_operations)
            d[key] = regions
        return d

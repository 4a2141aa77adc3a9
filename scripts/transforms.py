"""The bundle's own MONAI transforms, used by the configs' transform chains.

- ``PathSafeSpacingd``: ``Spacingd`` that MONAI Label's string companions of the image do not break.
- ``LabelToRegionsd``: a label map as overlapping binary regions (brain tumour core, whole, enhancing).
- ``InvertedLabelsd``: class scores on the network's grid -> labels on the input's grid, one class at a time.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Invertd, MapTransform, Spacingd


class PathSafeSpacingd(Spacingd):
    """``Spacingd`` that leaves non-dict companions of its keys alone.

    Since MONAI 1.6 ``Spacingd`` updates, as metadata, every item whose key starts with ``<key>_``; MONAI Label
    puts the input file name, a string, at ``image_path``, which then fails with "'str' object has no attribute
    'update'". Such items are set aside during the call and put back unchanged; dict companions
    (``image_meta_dict``) are updated as before.
    """

    def __call__(self, data, lazy: bool | None = None):
        prefixes = tuple(f"{key}_" for key in self.keys)
        aside = {
            k: v for k, v in data.items() if isinstance(k, str) and k.startswith(prefixes) and not isinstance(v, dict)
        }
        d = super().__call__({k: v for k, v in data.items() if k not in aside}, lazy=lazy)
        d.update(aside)
        return d


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


class InvertedLabelsd(MapTransform):
    """Class scores ``(C, ...)`` on the network's grid -> labels on the input's grid, a few slices at a time.

    Every spatial step of the chains (reorientation, resampling, cropping) is affine, so the input's voxel
    ``v`` lies at ``inv(A_net) @ A_in @ v`` on the network's grid (``A_net``: the preprocessed image's affine;
    ``A_in``, the input's grid: its ``original_affine`` and ``spatial_shape``). The scores are sampled there
    trilinearly, as ``Invertd`` resamples them, zero outside the cropped region (the crop's inverse pads
    zeros), for a slab of input slices at a time, and the slab's labels are taken at once. Memory on the input's
    grid is then the ``uint8`` labels alone (a 512 x 512 x 240 CT: 60 MB), not ``C`` float32 maps and their
    resampling grids (3.5 GB and more for BTCV's 14 classes). Without that metadata (an image not read by
    ``LoadImage``) each class is inverted by ``Invertd`` in turn.

    Args:
        keys: the scores, e.g. ``"pred"`` after ``Activationsd`` (probabilities on the network's grid).
        transform: the preprocessing whose invertible steps are undone, as ``Invertd``'s.
        orig_keys: the key whose applied operations are undone (the image).
        argmax: one label map ``(1, ...)``, ``uint8``: the most likely class (ties: the lower class).
        threshold: with ``argmax`` False, one ``uint8`` channel per class: score above ``threshold``.
        slab_mb: the float32 scores of one slab of input slices, at most (MB).
    """

    def __init__(
        self,
        keys: KeysCollection,
        transform,
        orig_keys: str = "image",
        argmax: bool = True,
        threshold: float | None = None,
        slab_mb: float = 64.0,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        if not argmax and threshold is None:
            raise ValueError("InvertedLabelsd: argmax=False needs a threshold")
        self.argmax, self.threshold, self.orig_key, self.slab_mb = argmax, threshold, orig_keys, slab_mb
        self.inverter = Invertd(keys="_scores", transform=transform, orig_keys=orig_keys, nearest_interp=False)

    def _labels(self, scores: torch.Tensor) -> torch.Tensor:
        """``(C, ...)`` scores -> ``uint8`` labels: ``(1, ...)`` argmax (first maximum) or ``(C, ...)`` thresholds."""
        if self.argmax:
            return torch.argmax(scores, dim=0, keepdim=True).to(torch.uint8)
        return (scores > self.threshold).to(torch.uint8)

    def by_slabs(self, scores: torch.Tensor, image: MetaTensor) -> MetaTensor:
        """Labels on ``image``'s input grid: the scores sampled where its voxels lie, a slab of slices at a time."""
        shape = [int(s) for s in image.meta["spatial_shape"]][:3]
        original = torch.as_tensor(np.asarray(image.meta["original_affine"], dtype=np.float64))
        to_net = torch.linalg.inv(torch.as_tensor(image.affine, dtype=torch.float64)) @ original
        to_net = to_net.to(torch.float32).to(scores.device)
        net = torch.tensor(scores.shape[1:], dtype=torch.float32, device=scores.device)
        values = scores.as_tensor() if isinstance(scores, MetaTensor) else scores
        values = values.float()[None]  # (1, C, D, H, W)
        labels = torch.zeros((1 if self.argmax else scores.shape[0], *shape), dtype=torch.uint8, device=values.device)
        meta = dict(image.meta)
        meta["affine"] = torch.as_tensor(original)
        if values.numel() == 0:  # nothing above the intensity window: the crop is empty, every voxel background
            return MetaTensor(labels, affine=meta["affine"], meta=meta)
        axes = [torch.arange(n, dtype=torch.float32, device=values.device) for n in shape]
        per_slice = scores.shape[0] * shape[0] * shape[1] * 4 / 2**20
        step = max(1, int(self.slab_mb // max(per_slice, 1e-9)))
        for z0 in range(0, shape[2], step):
            k = axes[2][z0 : z0 + step]
            # network-grid index of every input voxel of the slab, per axis: (X, Y, K) each
            points = [
                to_net[a, 0] * axes[0][:, None, None]
                + to_net[a, 1] * axes[1][None, :, None]
                + to_net[a, 2] * k[None, None, :]
                + to_net[a, 3]
                for a in range(3)
            ]
            # a voxel a whole step or more outside the crop is zero, exactly: float32 normalising puts it at
            # -0.9999999, and 1e-7 of a class leaking into all-zero scores would win their argmax
            inside = torch.ones_like(points[0], dtype=torch.bool)
            for a in range(3):
                inside &= (points[a] > -1 + 1e-4) & (points[a] < net[a] - 1e-4)
            # grid_sample's last grid axis runs (W, H, D) = (axis 2, 1, 0); align_corners False: index i is
            # at (2 i + 1) / n - 1, so voxel centres are sampled exactly as the resampling does
            grid = torch.stack([(2 * points[a] + 1) / net[a] - 1 for a in (2, 1, 0)], dim=-1)[None]
            del points
            sampled = torch.nn.functional.grid_sample(
                values, grid, mode="bilinear", padding_mode="zeros", align_corners=False
            )[0]
            labels[:, :, :, z0 : z0 + step] = self._labels(sampled * inside)
            del grid, sampled, inside
        return MetaTensor(labels, affine=meta["affine"], meta=meta)

    def _class(self, scores: torch.Tensor, data: dict, c: int) -> MetaTensor:
        """Class ``c``'s scores on the input's grid, by ``Invertd``."""
        return self.inverter({"_scores": scores[c : c + 1], self.orig_key: data[self.orig_key]})["_scores"]

    def by_classes(self, scores: torch.Tensor, data: dict) -> MetaTensor:
        """Labels on the input's grid by ``Invertd`` of one class at a time and a running argmax (or thresholds)."""
        first = self._class(scores, data, 0)
        meta, applied = first.meta, first.applied_operations
        if self.argmax:
            best = first.as_tensor()  # first is this call's own tensor: updated in place
            labels = torch.zeros(best.shape, dtype=torch.uint8, device=best.device)
            for c in range(1, scores.shape[0]):
                one = self._class(scores, data, c).as_tensor()
                better = one > best  # strictly: a tie keeps the lower class, as argmax does
                labels[better] = c
                best = torch.maximum(best, one, out=best)
                del one, better
        else:
            channels = [(first.as_tensor() > self.threshold).to(torch.uint8)]
            for c in range(1, scores.shape[0]):
                channels.append((self._class(scores, data, c).as_tensor() > self.threshold).to(torch.uint8))
            labels = torch.cat(channels)
        return MetaTensor(labels, meta=meta, applied_operations=applied)

    def __call__(self, data):
        d = dict(data)
        image = d[self.orig_key]
        by_slabs = isinstance(image, MetaTensor) and {"original_affine", "spatial_shape"} <= set(image.meta)
        for key in self.key_iterator(d):
            d[key] = self.by_slabs(d[key], image) if by_slabs else self.by_classes(d[key], d)
        return d

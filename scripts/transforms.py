"""The bundle's own MONAI transforms, used by the configs' transform chains.

- ``PathSafeSpacingd``: ``Spacingd`` that MONAI Label's string companions of the image do not break.
- ``LabelToRegionsd``: a label map as overlapping binary regions (brain tumour core, whole, enhancing).
- ``InvertedLabelsd``: class scores on the network's grid -> labels on the input's grid, one class at a time.
"""

from __future__ import annotations

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
    """Undo the preprocessing's spatial steps on class scores ``(C, ...)`` and take the labels, class by class.

    The same label map as ``Invertd`` of all ``C`` channels followed by ``AsDiscreted(argmax=True)`` (or a
    threshold per channel, for region outputs), but only one class's scores are at the input's resolution
    at a time: a 512 x 512 x 240 CT takes 0.25 GB per class in float32, 3.5 GB for BTCV's 14 classes,
    several times that with the copies resampling makes.

    Args:
        keys: the scores, e.g. ``"pred"`` after ``Activationsd`` (probabilities on the network's grid).
        transform: the preprocessing whose invertible steps are undone, as ``Invertd``'s.
        orig_keys: the key whose applied operations are undone (the image).
        argmax: one label map ``(1, ...)``, ``uint8``: the most likely class (ties: the lower class).
        threshold: with ``argmax`` False, one ``uint8`` channel per class: score above ``threshold``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        transform,
        orig_keys: str = "image",
        argmax: bool = True,
        threshold: float | None = None,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        if not argmax and threshold is None:
            raise ValueError("InvertedLabelsd: argmax=False needs a threshold")
        self.argmax, self.threshold, self.orig_key = argmax, threshold, orig_keys
        self.inverter = Invertd(keys="_scores", transform=transform, orig_keys=orig_keys, nearest_interp=False)

    def _class(self, scores: torch.Tensor, data: dict, c: int) -> MetaTensor:
        """Class ``c``'s scores on the input's grid."""
        return self.inverter({"_scores": scores[c : c + 1], self.orig_key: data[self.orig_key]})["_scores"]

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            scores = d[key]
            first = self._class(scores, d, 0)
            meta, applied = first.meta, first.applied_operations
            if self.argmax:
                best = first.as_tensor()  # first is this call's own tensor: updated in place
                labels = torch.zeros(best.shape, dtype=torch.uint8, device=best.device)
                for c in range(1, scores.shape[0]):
                    one = self._class(scores, d, c).as_tensor()
                    better = one > best  # strictly: a tie keeps the lower class, as argmax does
                    labels[better] = c
                    best = torch.maximum(best, one, out=best)
                    del one, better
            else:
                channels = [(first.as_tensor() > self.threshold).to(torch.uint8)]
                for c in range(1, scores.shape[0]):
                    channels.append((self._class(scores, d, c).as_tensor() > self.threshold).to(torch.uint8))
                labels = torch.cat(channels)
            del first
            d[key] = MetaTensor(labels, meta=meta, applied_operations=applied)
        return d

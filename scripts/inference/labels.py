"""Class scores on the network's grid -> a label map on the input's grid, one class at a time."""

from __future__ import annotations

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Invertd, MapTransform


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

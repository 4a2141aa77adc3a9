"""Which volumes can teach pre-training: a crop must hold anatomy, not padding or clipped constants.

A volume thinner than a crop is padded to the crop size (``SpatialPadd``): a 3 mm slab in a 192 mm crop is 98%
zeros, and its rotations and views differ only in where the padding lies. A volume whose intensities lie
mostly outside the HU window (or span a sliver of it: a label map, an image already scaled to [0, 1]) becomes
a near-constant crop after ``ScaleIntensityRanged(clip=True)``. The rule, applied before pre-training by
``usable_images`` and reported by ``python -m scripts.tools.check_data --pretraining true``:

- thinner than the crop along an axis: a warning naming the axis and the padding it causes;
- skipped when padding would fill more than ``1 - min_crop_fill`` of its crops (default: more than half);
- skipped when fewer than ``min_window_fraction`` of its voxels lie inside (a_min, a_max), or when those
  voxels span less than ``min_window_span`` of the window (1st to 99th percentile).
"""

from __future__ import annotations

import numpy as np

AXES = "xyz"  # the crop's axes after Orientationd("RAS"): world x, y, z


class CropContent:
    """The content rule of the module docstring.

    Args:
        roi_size: the pre-training crop (voxels, RAS order).
        pixdim: the working spacing (mm) the crop is taken at.
        a_min, a_max: the HU window of ``ScaleIntensityRanged``.
        min_crop_fill: the least fraction of a crop the volume must fill (product over the three axes).
        min_window_fraction: the least fraction of voxels inside the window.
        min_window_span: the least 1st-99th percentile spread of those voxels, as a fraction of the window.
    """

    def __init__(
        self,
        roi_size,
        pixdim,
        a_min: float = -1000.0,
        a_max: float = 1000.0,
        min_crop_fill: float = 0.5,
        min_window_fraction: float = 0.25,
        min_window_span: float = 0.05,
    ):
        if not a_min < a_max:
            raise ValueError(f"need a_min < a_max, got {a_min}, {a_max}")
        for name, value in (("min_crop_fill", min_crop_fill), ("min_window_fraction", min_window_fraction)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        self.crop_mm = np.asarray(roi_size, dtype=float) * np.asarray(pixdim, dtype=float)
        self.a_min, self.a_max = float(a_min), float(a_max)
        self.min_crop_fill, self.min_window_fraction = min_crop_fill, min_window_fraction
        self.min_window_span = min_window_span

    @staticmethod
    def extent_mm(affine: np.ndarray, shape) -> np.ndarray:
        """Physical extent (mm) along world x, y, z of a volume with this ``affine`` and voxel ``shape``."""
        columns = np.asarray(affine, dtype=float)[:3, :3]
        extent = np.zeros(3)
        for axis in range(3):  # each voxel axis lies (mostly) along one world axis
            extent[int(np.argmax(np.abs(columns[:, axis])))] += shape[axis] * np.linalg.norm(columns[:, axis])
        return extent

    def check(self, affine: np.ndarray, data: np.ndarray) -> tuple[str | None, list[str]]:
        """(why the volume is skipped or None, warnings) for a volume ``data`` (x, y, z[, c]) in HU."""
        extent = self.extent_mm(affine, data.shape)
        fill = np.minimum(extent / self.crop_mm, 1.0)
        thin = [
            f"{extent[a]:.0f} mm along {AXES[a]}, thinner than the {self.crop_mm[a]:.0f} mm crop"
            for a in range(3)
            if fill[a] < 1
        ]
        padding = 1 - float(np.prod(fill))
        warnings = []
        if thin:
            message = f"{'; '.join(thin)}: its crops are {padding:.0%} padding"
            if float(np.prod(fill)) < self.min_crop_fill:
                return f"{message} (more than {1 - self.min_crop_fill:.0%}; min_crop_fill)", warnings
            warnings.append(message)
        inside = data[(data > self.a_min) & (data < self.a_max)]
        fraction = inside.size / data.size
        window = f"HU window ({self.a_min:g}, {self.a_max:g})"
        if fraction < self.min_window_fraction:
            return (
                f"only {fraction:.0%} of its voxels lie inside the {window}, its crops are near-constant after "
                f"clipping (below min_window_fraction={self.min_window_fraction:g}; not CT in HU?)"
            ), warnings
        low, high = np.percentile(inside, [1, 99])
        span = (high - low) / (self.a_max - self.a_min)
        if span < self.min_window_span:
            return (
                f"its voxels inside the {window} span {low:.4g}..{high:.4g}, {span:.1%} of the window: flat after "
                f"scaling (below min_window_span={self.min_window_span:g}; a label map or a normalised image?)"
            ), warnings
        return None, warnings

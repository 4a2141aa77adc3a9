"""What segmenting one volume costs in memory, known before the compute starts."""

from __future__ import annotations

import numpy as np

# Measured peak resident memory of inference.json + small.json on 2 CPU cores (docs/speed.md, inference
# memory): about 40 bytes per input voxel and channel (the image read as float32, then one class's scores on
# the input's grid, its resampling grid, the running best score and the labels) on top of the libraries and
# the network; 16 bytes per class and voxel of the network's grid (scores, their softmax, sliding-window sums).
BYTES_PER_INPUT_VOXEL = 40
BYTES_PER_CLASS_VOXEL = 16
FIXED_GB = 0.6


def inference_gb(shape, spacing, pixdim, channels: int, classes: int) -> float:
    """Estimated peak memory (GB) of segmenting a volume of ``shape`` voxels of ``spacing`` mm at ``pixdim``."""
    inputs = float(np.prod(shape[:3])) * channels
    network = float(np.prod(np.ceil(np.asarray(shape[:3]) * np.asarray(spacing) / np.asarray(pixdim))))
    return FIXED_GB + (BYTES_PER_INPUT_VOXEL * inputs + BYTES_PER_CLASS_VOXEL * classes * network) / 2**30


def available_gb() -> float | None:
    """Memory the system can give this process now (Linux ``MemAvailable``), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) / 2**20
    except (OSError, KeyError, ValueError):
        return None

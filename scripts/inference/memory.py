"""What segmenting one volume costs in memory, known before the compute starts."""

from __future__ import annotations

import numpy as np

# Fitted above peak resident memory measured on 2 CPU cores (docs/measurements.md): about 6 bytes per input
# voxel and channel (the image read as float32 and reoriented, then only the uint8 labels on the input's grid:
# the scores are brought there a few slices at a time), 16 bytes per class and voxel of the network's grid
# (scores, their softmax, sliding-window sums); on the CPU the network's activations, about 33 bytes per voxel
# of a sliding-window batch and feature channel (feature_size 48: 5.2 GB); the libraries about 0.45 GB.
BYTES_PER_INPUT_VOXEL = 10
BYTES_PER_CLASS_VOXEL = 16
BYTES_PER_FEATURE_VOXEL = 36
LIBRARIES_GB = 0.45


def network_gb(feature_size: int, roi_size, sw_batch_size: int) -> float:
    """Activations of one sliding-window batch of the network, on the CPU (GB)."""
    return BYTES_PER_FEATURE_VOXEL * sw_batch_size * float(np.prod(roi_size)) * feature_size / 2**30


def inference_gb(shape, spacing, pixdim, channels: int, classes: int, network: float = 0.0) -> float:
    """Estimated peak memory (GB) of segmenting a volume of ``shape`` voxels of ``spacing`` mm at ``pixdim``,
    with ``network`` GB of activations in this process (``network_gb``; 0 when the network runs on a GPU)."""
    inputs = float(np.prod(shape[:3])) * channels
    grid = float(np.prod(np.ceil(np.asarray(shape[:3]) * np.asarray(spacing) / np.asarray(pixdim))))
    return LIBRARIES_GB + network + (BYTES_PER_INPUT_VOXEL * inputs + BYTES_PER_CLASS_VOXEL * classes * grid) / 2**30


def available_gb() -> float | None:
    """Memory the system can give this process now (Linux ``MemAvailable``), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) / 2**20
    except (OSError, KeyError, ValueError):
        return None

"""Label tables, each read from the one file that holds it: a task preset's ``class_names``, or the bundle
metadata's output ``channel_def`` (what MONAI Label and DICOM SEG name the segments by)."""

from __future__ import annotations

import json
import os

from scripts.tasks.presets import CONFIGS, preset_path

METADATA = os.path.join(CONFIGS, "metadata.json")


def preset_class_names(task: str) -> list[str]:
    """Output channel names of a task preset, e.g. ``preset_class_names("btcv")[1] == "spleen"``."""
    with open(preset_path(task)) as f:
        return list(json.load(f)["class_names"])


def preset_segment_types(task: str) -> dict:
    """``{class name: SNOMED CT keyword of pydicom's codes.SCT}`` of a task preset, e.g. ``{"liver": "Liver"}``:
    the segmented property type a DICOM SEG gives each class."""
    with open(preset_path(task)) as f:
        return dict(json.load(f).get("segment_types", {}))


def metadata_class_names(metadata: str = METADATA) -> dict:
    """``{label value: name}`` from the bundle metadata's output ``channel_def`` (empty when not found)."""
    try:
        with open(metadata) as f:
            channels = json.load(f)["network_data_format"]["outputs"]["pred"]["channel_def"]
        return {int(k): str(v) for k, v in channels.items()}
    except (OSError, KeyError, ValueError, TypeError):
        return {}


# BTCV's label values -> organ names (0 is background), from configs/tasks/btcv.json
BTCV_LABELS = dict(enumerate(preset_class_names("btcv")))

"""Task presets (``configs/tasks/*.json``): names, and the per-task bundle files MONAI Label reads.

MONAI Label loads ``configs/inference.json`` alone (no overlays) and takes the label names from
``configs/metadata.json`` (``network_data_format.outputs.pred.channel_def``). To serve a task there,
write both files for it into a copy of the bundle:

    python -m scripts.tasks.presets --task task09_spleen --out_dir /apps/spleen_bundle/configs
"""

from __future__ import annotations

import copy
import json
import os

from scripts.atomic_files import atomic_path, refuse_bundle_folder, replaced_note
from scripts.errors import ConfigError, install_error_hook

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")
TASKS_DIR = os.path.join(CONFIGS, "tasks")


def preset_names() -> list[str]:
    return sorted(os.path.splitext(n)[0] for n in os.listdir(TASKS_DIR) if n.endswith(".json"))


def preset_path(task: str) -> str:
    """``configs/tasks/<task>.json``; a file path is taken as it is."""
    path = task if task.endswith(".json") else os.path.join(TASKS_DIR, f"{task}.json")
    if not os.path.isfile(path):
        raise ConfigError(f"task preset {path}: file not found (presets: {', '.join(preset_names())})")
    return path


def task_inference_config(task: str) -> dict:
    """``inference.json`` with the preset's values merged in, as one config MONAI Label can load alone."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([os.path.join(CONFIGS, "inference.json"), preset_path(task)])
    return copy.deepcopy(parser.config)


def task_metadata(task: str, metadata: dict | None = None) -> dict:
    """The bundle metadata (``configs/metadata.json`` by default) describing the preset's inputs and outputs."""
    with open(preset_path(task)) as f:
        preset = json.load(f)
    if metadata is None:
        with open(os.path.join(CONFIGS, "metadata.json")) as f:
            metadata = json.load(f)
    meta = copy.deepcopy(metadata)
    channels, classes = preset["channel_names"], preset["class_names"]
    ct, regions = preset["modality"] == "CT", preset.get("multi_label", False)
    listed = ", ".join(f"{i} {name}" for i, name in enumerate(classes))
    meta["name"] = f"Swin UNETR {preset['task']} segmentation (self-supervised pre-training ready)"
    meta["task"] = f"{preset['task']} segmentation"
    meta["image_classes"] = (
        "single channel CT in Hounsfield units" if ct else f"{len(channels)} channel MRI: {', '.join(channels)}"
    )
    meta["label_classes"] = ", ".join(f"{k} {v}" for k, v in enumerate(_label_names(preset)))
    meta["pred_classes"] = (
        f"{len(classes)} sigmoid channels, overlapping regions: {listed}"
        if regions
        else f"{len(classes)} channels: {listed}"
    )
    image = meta["network_data_format"]["inputs"]["image"]
    image.update(
        format="hounsfield" if ct else "magnitude",
        modality=preset["modality"],
        num_channels=len(channels),
        channel_def={str(i): name for i, name in enumerate(channels)},
    )
    if not ct:  # z-scored intensities have no fixed range (the schema requires the field)
        image["value_range"] = []
    pred = meta["network_data_format"]["outputs"]["pred"]
    pred.update(num_channels=len(classes), channel_def={str(i): name for i, name in enumerate(classes)})
    return meta


def _label_names(preset: dict) -> list:
    names = preset.get("label_names", "@class_names")
    return preset["class_names"] if names == "@class_names" else names


def fitting_presets(label_values: int, channels: list[str]) -> list[str]:
    """The presets whose task has ``label_values`` label values and the input ``channels`` (MSD ``modality``
    names: the count, and CT or not, must agree)."""
    ct = all(str(c).upper() == "CT" for c in channels)
    fits = []
    for task in preset_names():
        with open(preset_path(task)) as f:
            preset = json.load(f)
        same_input = len(preset["channel_names"]) == len(channels) and (preset["modality"] == "CT") == ct
        if same_input and len(_label_names(preset)) == label_values:
            fits.append(task)
    return fits


def write_task_bundle_configs(task: str, out_dir: str) -> list[str]:
    """Write ``inference.json`` and ``metadata.json`` for ``task`` into ``out_dir``; returns their paths."""
    refuse_bundle_folder(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for name, content in (("inference.json", task_inference_config(task)), ("metadata.json", task_metadata(task))):
        paths.append(os.path.join(out_dir, name))
        if note := replaced_note(paths[-1]):
            print(f"{paths[-1]}{note}")
        with atomic_path(paths[-1]) as tmp, open(tmp, "w") as f:
            f.write(json.dumps(content, indent=4, ensure_ascii=False) + "\n")
    print(f"wrote {' and '.join(paths)} for {task}")
    return paths


if __name__ == "__main__":
    import fire

    install_error_hook(command=True)
    fire.Fire(write_task_bundle_configs)

"""Check a dataset in one pass before training: every problem of every file, with counts.

    python -m scripts.tools.check_data --datalist data/btcv/dataset_0.json --dataset_dir data/btcv --labels
    python -m scripts.tools.check_data --folder /data/new_scans
    python -m scripts.tools.check_data --datalist /data/Task01_BrainTumour/dataset.json

What the cases must be defaults to what the datalist declares: labels are required when any training or
validation entry has one (a fine-tuning list), label values must lie below the number of its ``labels`` (an MSD
``dataset.json``), images must hold as many channels as its ``modality`` lists. ``--labels``, ``--label_values``,
``--channels`` and ``--modality`` set them instead; the summary line says which rules were applied.

First checks the datalist itself with the workflows' rules (valid JSON; every entry an object with an
``image`` file path, a ``label`` path where given, required with ``--labels``; ``test`` may list plain
paths), one line per malformed entry with its list and index. Then checks each image (and label,
when listed) of the datalist's ``training``, ``validation`` and ``test`` lists, or every NIfTI in a
folder, as the workflows do: missing, empty, unreadable, corrupt or
truncated files, 2-D or multi-volume images, non-finite voxels, label shape / affine / values;
warns about images whose intensities do not look like CT in HU. Prints one line per problem and a
summary; exits 1 when any error was found.

``--pretraining true`` adds pre-training's content rule (``scripts.pretraining.content``): volumes thinner than
a crop are named with the padding they cause, and those pre-training would skip (mostly padding, mostly
outside the HU window, or flat inside it) are listed as such. The crop, spacing and window are those of
``configs/pretrain.json``; ``--roi_size``, ``--pixdim``, ``--a_min``, ``--a_max`` change them (the CPU overlay
``configs/small_pretrain.json``: ``--roi_size "[64,64,64]" --pixdim "[4,4,4]"``).
"""

from __future__ import annotations

import functools
import json
import os
import sys

import fire

from scripts.errors import InputError, install_error_hook
from scripts.inputs import Geometry, check_case, entry_problems, load_datalist_json, nifti_files
from scripts.pretraining.content import CropContent

LISTS = ("training", "validation", "test")
PRETRAIN_CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "pretrain.json")


def pretraining_content(roi_size=None, pixdim=None, a_min=None, a_max=None) -> CropContent:
    """Pre-training's content rule with ``configs/pretrain.json``'s crop, spacing and window unless given."""
    with open(PRETRAIN_CONFIG) as f:
        config = json.load(f)
    return CropContent(
        roi_size=roi_size or config["roi_size"],
        pixdim=pixdim or config["pixdim"],
        a_min=config["a_min"] if a_min is None else a_min,
        a_max=config["a_max"] if a_max is None else a_max,
        min_crop_fill=config["min_crop_fill"],
        min_window_fraction=config["min_window_fraction"],
    )


def _rules(declared: dict, labels, label_values, channels, modality) -> tuple[bool, int | None, int, str]:
    """The rules given, else those the datalist declares: labels where any entry has one, MSD labels / modality."""
    if labels is None:
        entries = [e for key in ("training", "validation") for e in declared.get(key) or [] if isinstance(e, dict)]
        labels = any("label" in e for e in entries)
    if label_values is None and isinstance(declared.get("labels"), dict):
        label_values = len(declared["labels"])
    names = list(declared["modality"].values()) if isinstance(declared.get("modality"), dict) else ["CT"]
    if channels is None:
        channels = len(names)
    if modality is None:
        modality = "CT" if all(str(n).upper() == "CT" for n in names) else "MRI"
    return bool(labels), label_values, channels, modality


def _cases(datalist: str, dataset_dir: str, folder: str, errors: list, labels: bool) -> list[tuple[str, dict]]:
    """(list name, entry with full paths) of every well-formed entry; malformed ones go to ``errors``."""
    if folder:
        return [("folder", {"image": p}) for p in nifti_files(folder)]
    lists = load_datalist_json(datalist)
    base = dataset_dir or os.path.dirname(os.path.abspath(datalist))
    cases = []
    for name in LISTS:
        entries = lists.get(name, [])
        problems = entry_problems(entries, name, labels=labels and name != "test")
        errors += [f"datalist {datalist}: {problem}" for problem in problems]
        if problems:
            continue
        for entry in entries:
            entry = entry if isinstance(entry, dict) else {"image": entry}
            cases.append((name, {k: os.path.join(base, v) for k, v in entry.items() if k in ("image", "label")}))
    return cases


def check(
    datalist: str = "",
    dataset_dir: str = "",
    folder: str = "",
    label_values: int | None = None,
    labels: bool | None = None,
    channels: int | None = None,
    modality: str | None = None,
    pretraining: bool = False,
    roi_size=None,
    pixdim=None,
    a_min: float | None = None,
    a_max: float | None = None,
) -> int:
    """Check every case; returns the number of errors (printed, with warnings and a summary).

    ``labels``: require a label in training and validation entries, as fine-tuning does (default: when any
    entry has one). ``label_values``: labels hold values 0..label_values-1 (default: the datalist's ``labels``).
    ``channels``, ``modality``: the task's input (``configs/tasks/``; default: the datalist's ``modality``, else
    1 and CT): images must hold that many channels; only CT images are warned about intensities unlike HU.
    ``pretraining``: also apply pre-training's content rule (crop ``roi_size`` at ``pixdim``, window ``a_min`` to
    ``a_max``; defaults from ``configs/pretrain.json``); a volume pre-training would skip counts as an error.
    """
    if bool(datalist) == bool(folder):
        raise SystemExit("check_data: give either --datalist (with --dataset_dir) or --folder")
    errors, warnings = [], []
    try:
        declared = load_datalist_json(datalist) if datalist else {}
        labels, label_values, channels, modality = _rules(declared, labels, label_values, channels, modality)
        cases = _cases(datalist, dataset_dir, folder, errors, labels)
    except InputError as e:  # missing or unreadable datalist: nothing to check
        print(f"ERROR {e}")
        return 1
    content = pretraining_content(roi_size, pixdim, a_min, a_max) if pretraining else None
    for name, item in cases:
        try:
            keys = tuple(k for k in ("image", "label") if k in item)
            loaded = check_case(item, keys, label_values, warnings, Geometry(channels=channels, modality=modality))
        except InputError as e:
            errors.append(f"{name}: {e}")
            continue
        if content is not None:
            reason, notes = content.check(loaded["image"][0].affine, loaded["image"][1])
            warnings += [f"{name}: image {item['image']}: {note}" for note in notes]
            if reason:
                errors.append(f"{name}: image {item['image']}: pre-training skips it: {reason}")
    for line in errors:
        print(f"ERROR {line}")
    for line in warnings:
        print(f"WARNING {line}")
    values = f"values 0..{label_values - 1}" if label_values else "any label values"
    rules = f"labels {'required' if labels else 'optional'}, {values}, {channels} channel(s) of {modality}"
    if content is not None:
        crop = " x ".join(f"{v:.0f}" for v in content.crop_mm)
        rules += f", pre-training crops of {crop} mm in HU ({content.a_min:g}, {content.a_max:g})"
    print(f"checked {len(cases)} cases ({rules}): {len(errors)} with errors, {len(warnings)} warnings")
    return len(errors)


@functools.wraps(check)  # the same arguments and help, for fire
def check_data_command(*args, **kwargs) -> None:
    sys.exit(1 if check(*args, **kwargs) else 0)


if __name__ == "__main__":
    install_error_hook(command=True)
    fire.Fire(check_data_command)

"""Check a dataset in one pass before training: every problem of every file, with counts.

    python -m scripts.tools.check_data --datalist data/btcv/dataset_0.json --dataset_dir data/btcv --num_classes 14
    python -m scripts.tools.check_data --folder /data/new_scans

Checks each image (and label, when listed) of the datalist's ``training``, ``validation`` and ``test``
lists, or every NIfTI in a folder, as the workflows do: missing, empty, unreadable, corrupt or
truncated files, 2-D or multi-volume images, non-finite voxels, label shape / affine / values;
warns about images whose intensities do not look like CT in HU. Prints one line per problem and a
summary; exits 1 when any error was found.
"""

from __future__ import annotations

import json
import os
import sys

import fire

from scripts.errors import InputError
from scripts.inputs import check_case, nifti_files

LISTS = ("training", "validation", "test")


def _cases(datalist: str, dataset_dir: str, folder: str) -> list[tuple[str, dict]]:
    if folder:
        return [("folder", {"image": p}) for p in nifti_files(folder)]
    with open(datalist) as f:
        lists = json.load(f)
    base = dataset_dir or os.path.dirname(os.path.abspath(datalist))
    cases = []
    for name in LISTS:
        for entry in lists.get(name, []):
            entry = entry if isinstance(entry, dict) else {"image": entry}
            cases.append((name, {k: os.path.join(base, v) for k, v in entry.items() if k in ("image", "label")}))
    return cases


def check(datalist: str = "", dataset_dir: str = "", folder: str = "", num_classes: int | None = None) -> int:
    """Check every case; returns the number of errors (printed, with warnings and a summary)."""
    if bool(datalist) == bool(folder):
        raise SystemExit("check_data: give either --datalist (with --dataset_dir) or --folder")
    if datalist and not os.path.isfile(datalist):
        raise SystemExit(f"check_data: datalist {datalist}: file not found")
    cases = _cases(datalist, dataset_dir, folder)
    errors, warnings = [], []
    for name, item in cases:
        try:
            check_case(item, tuple(k for k in ("image", "label") if k in item), num_classes, warnings)
        except InputError as e:
            errors.append(f"{name}: {e}")
    for line in errors:
        print(f"ERROR {line}")
    for line in warnings:
        print(f"WARNING {line}")
    print(f"checked {len(cases)} cases: {len(errors)} with errors, {len(warnings)} warnings")
    return len(errors)


def check_data_command(
    datalist: str = "", dataset_dir: str = "", folder: str = "", num_classes: int | None = None
) -> None:
    sys.exit(1 if check(datalist, dataset_dir, folder, num_classes) else 0)


if __name__ == "__main__":
    fire.Fire(check_data_command)

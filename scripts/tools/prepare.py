"""Prepare a CT collection for pre-training: every CT volume to NIfTI (HU, int16), a datalist and a report.

    python -m scripts.tools.prepare /data/raw/LIDC-IDRI /data/ssl/lidc --num_workers 8

Walks ``input_dir``: DICOM files in any folder structure and with any names (grouped into series by
SeriesInstanceUID), MetaImage (``.mhd``/``.mha``), NRRD and NIfTI files. Keeps CT volumes and skips the
rest with a reason: not CT, localizer/scout, not an image (dose reports), multi-frame, too few slices,
mixed size, orientation or pixel spacing, slices at one position, missing slices, non-uniform slice
spacing (``spacing_tolerance``), unreadable pixel data, duplicates (the same series in two folders, or
the same voxels on the same grid). Each kept volume is written atomically to
``<output_dir>/images/<name>.nii.gz`` in RAS with the exact scanner geometry; ``num_workers`` processes
convert in parallel. A rerun (after a crash or with new data) keeps each output that reads back fully
on the expected grid and converts only the rest.

Writes ``<output_dir>/<name>.json`` (an MSD-style datalist: ``training`` and ``validation`` lists of
``{"image": "images/..."}``, paths relative to the JSON's folder, the validation share ``val_fraction``
chosen by a hash of each file name so it is stable across reruns) and ``<output_dir>/<name>_report.csv``
(one row per series or file: kept or skipped, reason, size, spacing, output), and prints a summary.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import os
import re
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import fire
import nibabel as nib
import numpy as np
from tqdm import tqdm

from scripts.atomic_files import atomic_path, check_writable
from scripts.dicom.extras import require
from scripts.dicom.series import (
    LPS_TO_RAS,
    Series,
    check_series,
    content_hash,
    file_key,
    group_series,
    read_header,
    read_volume,
    save_nifti,
    series_key,
    verified,
)
from scripts.errors import InputError, install_error_hook, one_line
from scripts.inputs import NIFTI_SUFFIXES, ct_warning

ITK_SUFFIXES = (".mhd", ".mha", ".nrrd", ".nhdr")
VOLUME_SUFFIXES = ITK_SUFFIXES + NIFTI_SUFFIXES
DATA_SUFFIXES = (".raw", ".zraw", ".img")  # the voxels of an .mhd/.nhdr header, read through the header
REPORT_HEADER = [
    "source",
    "series_uid",
    "description",
    "status",
    "reason",
    "slices",
    "size",
    "spacing_mm",
    "output",
    "note",
]


@dataclass
class Task:
    """One volume to convert: a checked DICOM series or a volume file."""

    source: str
    output: str  # relative to the output folder
    series: Series | None = None


def _suffix(path: str) -> str:
    name = path.lower()
    return next((s for s in VOLUME_SUFFIXES + DATA_SUFFIXES if name.endswith(s)), "")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "unknown"


def _walk(folder: str) -> tuple[list, list]:
    """(candidate DICOM files, volume files) under ``folder``, sorted."""
    candidates, volumes = [], []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            suffix = _suffix(name)
            if suffix in VOLUME_SUFFIXES:
                volumes.append(path)
            elif not suffix and not name.startswith("."):
                candidates.append(path)
    return candidates, volumes


def _map(function, items: list, num_workers: int, desc: str, chunksize: int = 1) -> list:
    """``function`` over ``items`` in order, in ``num_workers`` processes (none when <= 1), with a progress bar."""
    bar = tqdm(total=len(items), desc=desc, unit="", file=sys.stderr, disable=not items)
    try:
        if num_workers <= 1:
            out = []
            for item in items:
                out.append(function(item))
                bar.update()
            return out
        with ProcessPoolExecutor(max_workers=num_workers) as pool:
            out = []
            for result in pool.map(function, items, chunksize=chunksize):
                out.append(result)
                bar.update()
            return out
    finally:
        bar.close()


def _itk_grid(path: str) -> tuple[tuple, np.ndarray]:
    """(shape, RAS affine) of an ITK-readable file from its header alone."""
    sitk = require("SimpleITK", f"reading {path}")
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    if reader.GetDimension() != 3 or reader.GetNumberOfComponents() != 1:
        raise InputError(
            f"not a 3-D volume: {reader.GetDimension()}-D with {reader.GetNumberOfComponents()} components per voxel"
        )
    lps = np.eye(4)
    lps[:3, :3] = np.array(reader.GetDirection()).reshape(3, 3) * np.array(reader.GetSpacing())
    lps[:3, 3] = reader.GetOrigin()
    return tuple(int(n) for n in reader.GetSize()), LPS_TO_RAS @ lps


def _file_grid(path: str) -> tuple[tuple, np.ndarray]:
    if path.lower().endswith(NIFTI_SUFFIXES):
        img = nib.load(path)
        shape = tuple(int(n) for n in img.shape)
        if len(shape) < 3 or int(np.prod(shape[3:])) > 1:
            raise InputError(f"not a 3-D volume: shape {shape}")
        return shape[:3], img.affine
    return _itk_grid(path)


def _read_file(path: str, shape: tuple) -> np.ndarray:
    """The voxels of a volume file as int16 HU, shape (x, y, z)."""
    if path.lower().endswith(NIFTI_SUFFIXES):
        data = np.asanyarray(nib.load(path).dataobj).reshape(shape)
    else:
        sitk = require("SimpleITK", f"reading {path}")
        data = sitk.GetArrayFromImage(sitk.ReadImage(path)).transpose(2, 1, 0)  # ITK arrays are (z, y, x)
    if np.issubdtype(data.dtype, np.floating):
        if not np.isfinite(data).all():
            raise InputError("non-finite voxels (NaN or infinite)")
        data = np.rint(data)
    if data.min() < -32768 or data.max() > 32767:
        raise InputError(f"HU out of int16 range: {data.min():g}..{data.max():g}")
    return data.astype(np.int16)


def _row(task: Task, status: str, reason: str = "", shape=(), spacing=(), note: str = "") -> dict:
    series = task.series
    return {
        "source": task.source,
        "series_uid": series.uid if series else "",
        "description": series.describe() if series else "",
        "status": status,
        "reason": reason,
        "slices": str(shape[2]) if len(shape) == 3 else "",
        "size": "x".join(str(n) for n in shape),
        "spacing_mm": "x".join(f"{v:.4g}" for v in spacing),
        "output": task.output if status == "kept" else "",
        "note": note,
    }


def _convert(task: Task, output_dir: str, min_slices: int) -> tuple[dict, str]:
    """(report row, content hash) of one task; runs in a worker process, never raises."""
    out = os.path.join(output_dir, task.output)
    try:
        if task.series is not None:
            geometry = task.series.geometry
            shape, affine, notes = geometry["shape"], geometry["affine"], []
            if geometry["tilt"] > 0.1:
                notes.append(f"gantry tilt {geometry['tilt']:.1f} degrees (sheared affine)")
            if task.series.duplicate_files:
                notes.append(f"{task.series.duplicate_files} duplicate files ignored")
        else:
            shape, affine = _file_grid(task.source)
            if shape[2] < min_slices:
                return _row(task, "skipped", f"too few slices: {shape[2]} (min_slices={min_slices})", shape), ""
            notes = []
        spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
        key = series_key(task.series) if task.series is not None else file_key(task.source)
        volume = verified(out, shape, affine, key)
        if volume is not None:
            notes.insert(0, "already converted")
        else:
            volume = read_volume(task.series) if task.series is not None else _read_file(task.source, shape)
            save_nifti(volume, affine, out, key)
        if warning := ct_warning(out, volume):
            notes.append(warning.split(": ", 1)[1])
        return _row(task, "kept", "", shape, spacing, "; ".join(notes)), content_hash(volume, affine)
    except InputError as e:
        reason = str(e)
    except Exception as e:  # any reader failure of one volume is that volume's skip reason, not the run's end
        reason = f"unreadable: {one_line(e)}"
    if task.series is None and not reason.startswith(("unreadable", "HU out", "too few", "not a 3-D")):
        reason = f"unreadable: {reason}"
    return _row(task, "skipped", reason), ""


def _remove_partials(folder: str) -> int:
    """Remove the temporary files a killed run left (atomic writes rename them only when complete)."""
    removed = 0
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if name.startswith(".") and ".partial" in name:
                os.remove(os.path.join(folder, name))
                removed += 1
    return removed


def _split(outputs: list, val_fraction: float) -> tuple[list, list]:
    """(training, validation) outputs; validation by a hash of the name, so reruns keep the split."""
    ranked = sorted(outputs, key=lambda p: hashlib.sha1(p.encode()).hexdigest())
    n_val = int(round(len(outputs) * val_fraction))
    if val_fraction > 0 and len(outputs) >= 2:
        n_val = max(1, n_val)
    validation = set(ranked[:n_val])
    return [p for p in outputs if p not in validation], [p for p in outputs if p in validation]


def _write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            f.write(text)


def _category(reason: str) -> str:
    return reason.split(":", 1)[0]


def prepare(
    input_dir: str,
    output_dir: str,
    name: str = "",
    num_workers: int = 4,
    min_slices: int = 16,
    spacing_tolerance: float = 0.05,
    val_fraction: float = 0.05,
) -> dict:
    """Convert the collection in ``input_dir``; returns the summary counts (also printed).

    Args:
        name: the collection's name for the datalist and report files (default: the input folder's name).
        num_workers: processes reading headers and converting (0 or 1: in this process).
        min_slices: fewer slices than this are not a volume worth pre-training on.
        spacing_tolerance: largest relative deviation of a slice gap from the median gap.
        val_fraction: share of the volumes in the datalist's ``validation`` list.
    """
    started = time.time()
    if not os.path.isdir(input_dir):
        raise InputError(f"input_dir {input_dir}: folder not found")
    if not 0 <= val_fraction < 1:
        raise InputError(f"val_fraction {val_fraction}: must be in [0, 1)")
    check_writable(output_dir)
    name = _safe(name or os.path.basename(os.path.normpath(os.path.abspath(input_dir))))
    stale = _remove_partials(os.path.join(output_dir, "images"))
    candidates, files = _walk(input_dir)
    headers = _map(read_header, candidates, num_workers, "reading DICOM headers", chunksize=64)
    found = [h for h in headers if h is not None]
    rows, tasks, used = [], [], set()
    for series in group_series(found):
        task = Task(series.folder, "", series)
        if reason := check_series(series, min_slices, spacing_tolerance):
            rows.append(_row(task, "skipped", reason, note=f"{len(series.slices)} files"))
            continue
        task.output = _unique(f"images/{_safe(series.first.patient_id)}_{_safe(series.uid)}.nii.gz", used)
        tasks.append(task)
    for path in files:
        stem = os.path.relpath(path, input_dir)[: -len(_suffix(path))].replace(os.sep, "_")
        tasks.append(Task(path, _unique(f"images/{_safe(stem)}.nii.gz", used)))
    convert = functools.partial(_convert, output_dir=output_dir, min_slices=min_slices)
    results = _map(convert, tasks, num_workers, "converting")
    first_of = {}
    for task, (row, digest) in zip(tasks, results):
        if digest and digest in first_of:
            row.update(status="skipped", reason=f"duplicate: same voxels and grid as {first_of[digest]}", output="")
            os.remove(os.path.join(output_dir, task.output))
        elif digest:
            first_of[digest] = task.output
        rows.append(row)
    rows.sort(key=lambda r: r["source"])
    kept = [r["output"] for r in rows if r["status"] == "kept"]
    training, validation = _split(kept, val_fraction)
    datalist = os.path.join(output_dir, f"{name}.json")
    report = os.path.join(output_dir, f"{name}_report.csv")
    lists = {
        "name": name,
        "description": f"CT volumes of {os.path.abspath(input_dir)} (scripts.tools.prepare)",
        "numTraining": len(training),
        "training": [{"image": p} for p in training],
        "validation": [{"image": p} for p in validation],
    }
    _write_text(datalist, json.dumps(lists, indent=2) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=REPORT_HEADER)
    writer.writeheader()
    writer.writerows(rows)
    _write_text(report, buffer.getvalue())
    reused = sum(1 for r in rows if r["note"].startswith("already converted"))
    skipped = Counter(_category(r["reason"]) for r in rows if r["status"] == "skipped")
    summary = {
        "dicom_files": len(found),
        "series": sum(1 for r in rows if r["series_uid"]),
        "volume_files": len(files),
        "kept": len(kept),
        "converted": len(kept) - reused,
        "already_converted": reused,
        "skipped": sum(skipped.values()),
        "skipped_by_reason": dict(sorted(skipped.items())),
        "training": len(training),
        "validation": len(validation),
        "datalist": datalist,
        "report": report,
        "stale_partial_files_removed": stale,
        "seconds": round(time.time() - started, 1),
    }
    _print_summary(name, summary, len(candidates) - len(found))
    return summary


def _unique(path: str, used: set) -> str:
    stem, n, candidate = path[: -len(".nii.gz")], 1, path
    while candidate in used:
        n += 1
        candidate = f"{stem}_{n}.nii.gz"
    used.add(candidate)
    return candidate


def _print_summary(name: str, s: dict, ignored: int) -> None:
    lines = [
        f"prepare {name}: {s['series']} DICOM series in {s['dicom_files']} files, {s['volume_files']} volume files"
        + (f" ({ignored} other files ignored)" if ignored else ""),
        f"  kept {s['kept']} (converted {s['converted']}, already converted {s['already_converted']})",
        f"  skipped {s['skipped']}"
        + (": " + ", ".join(f"{n} {reason}" for reason, n in s["skipped_by_reason"].items()) if s["skipped"] else ""),
        f"  datalist {s['datalist']} ({s['training']} training, {s['validation']} validation)",
        f"  report {s['report']} ({s['seconds']} s)",
    ]
    print("\n".join(lines))


def prepare_command(*args, **kwargs) -> None:
    """CLI entry: exits 1 when no volume was kept (the report says why each was skipped)."""
    install_error_hook(command=True)
    summary = prepare(*args, **kwargs)
    if not summary["kept"]:
        raise InputError(f"no CT volume kept; see the report {summary['report']}")


if __name__ == "__main__":
    fire.Fire(prepare_command)

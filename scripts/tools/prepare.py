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

Output names come from the patient ID and series UID, or from the file's path below ``input_dir``, reduced
to ``A-Za-z0-9._-``. Inputs whose names reduce alike (``lung_1.nii.gz`` and ``lung (1).nii.gz``, or names
differing only in case, one name on macOS and Windows disks) get distinct outputs: the one whose name
needed no change (else the first by path) keeps it, the others get ``_2``, ``_3``, ... (the same on every
run over the same input), each said in its report row's note and counted in the summary.

Symbolic links to folders are followed; a folder reached again (a second link to it, a link to its own
ancestor) is scanned once and listed in the report as skipped, as are broken links and unreadable folders.
An ``output_dir`` inside ``input_dir`` is not scanned (its outputs are not inputs of the next run);
``output_dir`` equal to ``input_dir`` is refused. A file name that is not valid UTF-8 is converted; the
report shows it with U+FFFD and a note.

An output that cannot be written (a full disk, a read-only folder, a file where ``images/`` should be)
stops the run with ``ERROR: output <path>: cannot write (<reason>)`` and exit status 1, never a skipped
input. SIGTERM or Ctrl-C stops the worker processes with the run (and a killed run's workers end with
it); the volumes written so far are complete, and a rerun reuses them.

Writes ``<output_dir>/<name>.json`` (an MSD-style datalist: ``training`` and ``validation`` lists of
``{"image": "images/..."}``, paths relative to the JSON's folder, the validation share ``val_fraction``
chosen by a hash of each file name so it is stable across reruns) and ``<output_dir>/<name>_report.csv``
(one row per series or file: kept or skipped, reason, size, spacing, output), and prints a summary.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import functools
import hashlib
import io
import json
import os
import re
import signal
import sys
import time
from collections import Counter, defaultdict
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
    is_damaged_dicom,
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
    note: str = ""  # why the output name differs from the one the source gives


def _suffix(path: str) -> str:
    name = path.lower()
    return next((s for s in VOLUME_SUFFIXES + DATA_SUFFIXES if name.endswith(s)), "")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "unknown"


def _readable(text: str) -> str:
    """``text`` as valid UTF-8: the bytes of a file name that is not UTF-8 (which ``os`` gives as lone surrogates)
    shown as U+FFFD, so that the report and datalist can be written and read as text."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def _walk(folder: str, exclude: str = "") -> tuple[list, list, list]:
    """(candidate DICOM files, volume files, (path, reason) of what is not scanned) under ``folder``, sorted.

    Links to folders are followed, each real folder scanned once: a second way to one folder would give its
    series twice, and a link to its own ancestor would never end. ``exclude``: a real path not to scan."""
    candidates, volumes, unscanned = [], [], []
    seen = {os.path.realpath(folder): folder}

    def unreadable(error: OSError) -> None:
        unscanned.append((error.filename, f"unreadable folder: {error.strerror or error}"))

    for root, dirs, files in os.walk(folder, onerror=unreadable, followlinks=True):
        walked = []
        for name in sorted(dirs):
            path = os.path.join(root, name)
            real = os.path.realpath(path)
            if real == exclude:
                continue
            if real in seen:
                what = "link to a folder" if os.path.islink(path) else "folder"
                unscanned.append((path, f"{what} already scanned: {seen[real]}"))
                continue
            seen[real] = path
            walked.append(name)
        dirs[:] = walked
        for name in sorted(files):
            path = os.path.join(root, name)
            if os.path.islink(path) and not os.path.exists(path):
                target = os.path.normpath(os.path.join(root, os.readlink(path)))
                unscanned.append((path, f"broken link: {target} not found"))
                continue
            suffix = _suffix(name)
            if suffix in VOLUME_SUFFIXES:
                volumes.append(path)
            elif not suffix and not name.startswith("."):
                candidates.append(path)
    return candidates, volumes, unscanned


def _worker_start(parent: int) -> None:
    """First call in each worker process: the worker ends with its parent, however the parent ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent too, which stops the workers
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler, inherited through fork
    if sys.platform.startswith("linux"):
        try:  # PR_SET_PDEATHSIG (1): the kernel kills this worker when the parent dies, even by SIGKILL
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the kernel was told
        os._exit(1)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """End the pool now: queued items dropped, running ones stopped (a volume can take a minute to finish)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    pool.shutdown(wait=True)


def _map(function, items: list, num_workers: int, desc: str, chunksize: int = 1) -> list:
    """``function`` over ``items`` in order, in ``num_workers`` processes (none when <= 1), with a progress bar.
    An exception, Ctrl-C or SIGTERM (``prepare_command``) stops the workers before it propagates."""
    bar = tqdm(total=len(items), desc=desc, unit="", file=sys.stderr, disable=not items)
    try:
        out = []
        if num_workers <= 1:
            for item in items:
                out.append(function(item))
                bar.update()
            return out
        pool = ProcessPoolExecutor(max_workers=num_workers, initializer=_worker_start, initargs=(os.getpid(),))
        try:
            for result in pool.map(function, items, chunksize=chunksize):
                out.append(result)
                bar.update()
        except BaseException:
            _stop_workers(pool)
            raise
        pool.shutdown()
        return out
    finally:
        bar.close()


def _itk_reason(error: Exception) -> str:
    """The line of a SimpleITK error that says what is wrong (its first line names only the C++ source file)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = next((line for line in lines if "ERROR:" in line), lines[-1] if lines else type(error).__name__)
    return re.sub(r"^\w+\(0x[0-9a-fA-F]+\):\s*", "", useful.split("ERROR:", 1)[-1].strip())  # the reader's address


@contextlib.contextmanager
def _itk_errors(path: str):
    """SimpleITK's failure to read ``path`` as an InputError naming the file and SimpleITK's reason."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"unreadable: {path}: SimpleITK opens only UTF-8 file names; rename the file") from None
    try:
        yield
    except RuntimeError as e:
        raise InputError(f"unreadable: {path}: {_itk_reason(e)}") from None


def _itk_grid(path: str) -> tuple[tuple, np.ndarray]:
    """(shape, RAS affine) of an ITK-readable file from its header alone."""
    sitk = require("SimpleITK", f"reading {path}")
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    with _itk_errors(path):
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
        with _itk_errors(path):
            image = sitk.ReadImage(path)
        data = sitk.GetArrayFromImage(image).transpose(2, 1, 0)  # ITK arrays are (z, y, x)
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


def _file_key(path: str) -> str:
    try:
        return file_key(path)
    except UnicodeEncodeError:  # a name that is not UTF-8: its bytes identify it as well
        return file_key(os.fsencode(path))


def _save(volume: np.ndarray, affine: np.ndarray, path: str, key: str) -> None:
    """``save_nifti``; a failure to write is the output's (InputError naming it), never the input's."""
    try:
        save_nifti(volume, affine, path, key)
    except OSError as e:
        reason = e.strerror or str(e)
        if isinstance(e, (FileExistsError, NotADirectoryError)):
            reason = "a file is where its folder should be"
        if e.filename and ".partial" not in os.fsdecode(e.filename) and os.fsdecode(e.filename) != path:
            reason = f"{os.fsdecode(e.filename)}: {reason}"
        raise InputError(f"output {path}: cannot write ({reason})") from None


def _convert(task: Task, output_dir: str, min_slices: int) -> tuple[dict, str]:
    """(report row, content hash) of one task; runs in a worker process. An unreadable input is a skipped row;
    an output that cannot be written raises InputError, as every other output would fail alike."""
    out = os.path.join(output_dir, task.output)
    try:
        if task.series is not None:
            geometry = task.series.geometry
            shape, affine, notes = geometry["shape"], geometry["affine"], []
            if geometry["tilt"] > 0.1:
                notes.append(f"gantry tilt {geometry['tilt']:.1f} degrees (slices shifted onto the orthogonal grid)")
            if task.series.duplicate_files:
                notes.append(f"{task.series.duplicate_files} duplicate files ignored")
        else:
            shape, affine = _file_grid(task.source)
            if shape[2] < min_slices:
                return _row(task, "skipped", f"too few slices: {shape[2]} (min_slices={min_slices})", shape), ""
            notes = []
        spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
        key = series_key(task.series) if task.series is not None else _file_key(task.source)
        volume = verified(out, shape, affine, key)
        reused = volume is not None
        if not reused:
            volume = read_volume(task.series) if task.series is not None else _read_file(task.source, shape)
    except InputError as e:
        reason = str(e)
    except Exception as e:  # any reader failure of one volume is that volume's skip reason, not the run's end
        reason = f"unreadable: {one_line(e)}"
    else:
        if reused:
            notes.insert(0, "already converted")
        else:
            _save(volume, affine, out, key)
        if warning := ct_warning(out, volume):
            notes.append(warning.split(": ", 1)[1])
        if task.note:
            notes.append(task.note)
        return _row(task, "kept", "", shape, spacing, "; ".join(notes)), content_hash(volume, affine)
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
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                f.write(text)
    except OSError as e:
        raise InputError(f"output {path}: cannot write ({e.strerror or e})") from None


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
    real_input, real_output = os.path.realpath(input_dir), os.path.realpath(output_dir)
    if real_output == real_input:
        raise InputError(
            f"output_dir {output_dir} is the input_dir {input_dir}: its outputs would be the next run's inputs; "
            f"give a folder of its own (a folder inside input_dir is not scanned)"
        )
    if (real_input + os.sep).startswith(os.path.join(real_output, "images") + os.sep):
        raise InputError(f"input_dir {input_dir} is inside {output_dir}/images, where the outputs are written")
    check_writable(output_dir)
    name = _safe(name or os.path.basename(os.path.normpath(os.path.abspath(input_dir))))
    stale = _remove_partials(os.path.join(output_dir, "images"))
    # an output_dir inside input_dir: its outputs are not inputs (a rerun would take them for new volumes)
    candidates, files, unscanned = _walk(input_dir, exclude=os.path.realpath(output_dir))
    headers = _map(read_header, candidates, num_workers, "reading DICOM headers", chunksize=64)
    found = [h for h in headers if h is not None]
    rows = [_row(Task(path, ""), "skipped", reason) for path, reason in unscanned]
    for path, header in zip(candidates, headers):
        if header is None and is_damaged_dicom(path):  # reported like every other bad file, its series goes on
            rows.append(_row(Task(path, ""), "skipped", "damaged DICOM file: truncated or corrupt header"))
    named = []  # (task, output name without folder and suffix, whether the name needed no change)
    for series in group_series(found):
        task = Task(series.folder, "", series)
        if reason := check_series(series, min_slices, spacing_tolerance):
            rows.append(_row(task, "skipped", reason, note=f"{len(series.slices)} files"))
            continue
        patient, uid = series.first.patient_id, series.uid
        named.append((task, f"{_safe(patient)}_{_safe(uid)}", _safe(patient) == patient and _safe(uid) == uid))
    for path in files:
        stem = os.path.relpath(path, input_dir)[: -len(_suffix(path))].replace(os.sep, "_")
        named.append((Task(path, ""), _safe(stem), _safe(stem) == stem))
    tasks = _name_outputs(named)
    convert = functools.partial(_convert, output_dir=output_dir, min_slices=min_slices)
    results = _map(convert, tasks, num_workers, "converting")
    first_of, renamed = {}, 0
    for task, (row, digest) in zip(tasks, results):
        if digest and digest in first_of:
            row.update(status="skipped", reason=f"duplicate: same voxels and grid as {first_of[digest]}", output="")
            row["note"] = "; ".join(n for n in row["note"].split("; ") if n != task.note)  # no output to name
            os.remove(os.path.join(output_dir, task.output))
        elif digest:
            first_of[digest] = task.output
            renamed += bool(task.note)
        rows.append(row)
    rows.sort(key=lambda r: r["source"])
    for row in rows:
        shown = {key: _readable(value) for key, value in row.items()}
        if shown != row:
            note = "file name is not valid UTF-8 (its undecodable bytes shown as U+FFFD)"
            row.update(shown, note="; ".join(n for n in (shown["note"], note) if n))
    kept = [r["output"] for r in rows if r["status"] == "kept"]
    training, validation = _split(kept, val_fraction)
    datalist = os.path.join(output_dir, f"{name}.json")
    report = os.path.join(output_dir, f"{name}_report.csv")
    lists = {
        "name": name,
        "description": f"CT volumes of {_readable(os.path.abspath(input_dir))} (scripts.tools.prepare)",
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
        "renamed_outputs": renamed,
        "training": len(training),
        "validation": len(validation),
        "datalist": datalist,
        "report": report,
        "stale_partial_files_removed": stale,
        "seconds": round(time.time() - started, 1),
    }
    _print_summary(name, summary, len(candidates) - len(found))
    return summary


def _name_outputs(named: list) -> list:
    """The tasks of ``named`` ((task, name, whether the name needed no change)), each given an output name that
    no other has, ignoring case too (one name on macOS and Windows disks). Of the tasks whose names are alike,
    the one whose name needed no change (else the first by source) keeps it and the others get ``_2``, ``_3``,
    ... and a note; so names stay put across reruns over the same input, and mostly when inputs are added."""
    groups = defaultdict(list)
    for task, base, exact in named:
        groups[base.lower()].append((not exact, task.source, task, base))
    taken = set(groups)  # a suffixed name never takes the name another input gives
    for key in sorted(groups):
        members = sorted(groups[key], key=lambda m: m[:2])
        first = members[0][2]
        first.output = f"images/{members[0][3]}.nii.gz"
        for _, _, task, base in members[1:]:
            n = 2
            while f"{base}_{n}".lower() in taken:
                n += 1
            taken.add(f"{base}_{n}".lower())
            task.output = f"images/{base}_{n}.nii.gz"
            task.note = f"output name {first.output} also derived from {first.source}: written as {task.output}"
    return [task for task, _, _ in named]


def _print_summary(name: str, s: dict, ignored: int) -> None:
    renamed = f"{s['renamed_outputs']} output name" + ("" if s["renamed_outputs"] == 1 else "s")
    lines = [
        f"prepare {name}: {s['series']} DICOM series in {s['dicom_files']} files, {s['volume_files']} volume files"
        + (f" ({ignored} other files ignored)" if ignored else ""),
        f"  kept {s['kept']} (converted {s['converted']}, already converted {s['already_converted']})"
        + (f", {renamed} made unique (see the report)" if s["renamed_outputs"] else ""),
        f"  skipped {s['skipped']}"
        + (": " + ", ".join(f"{n} {reason}" for reason, n in s["skipped_by_reason"].items()) if s["skipped"] else ""),
        f"  datalist {_readable(s['datalist'])} ({s['training']} training, {s['validation']} validation)",
        f"  report {_readable(s['report'])} ({s['seconds']} s)",
    ]
    print("\n".join(lines))


def _terminated(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds as Ctrl-C does: workers stopped, temporary files removed


def prepare_command(*args, **kwargs) -> None:
    """CLI entry: exits 1 when no volume was kept (the report says why each was skipped)."""
    install_error_hook(command=True)
    signal.signal(signal.SIGTERM, _terminated)
    summary = prepare(*args, **kwargs)
    if not summary["kept"]:
        raise InputError(f"no CT volume kept; see the report {summary['report']}")


if __name__ == "__main__":
    fire.Fire(prepare_command)

"""Input checks run before any workflow starts: one clear message naming the file and the problem.

Every image and label of a datalist is opened once with nibabel and fully read (a truncated
``.nii.gz`` only fails when its data are decompressed), so a bad file stops the run before any
training step or output file, instead of deep inside a data-loader worker.
"""

from __future__ import annotations

import glob
import json
import logging
import os

import nibabel as nib
import numpy as np
from monai.data import load_decathlon_datalist

from scripts.dicom.series import cached_nifti
from scripts.errors import ConfigError, InputError
from scripts.inference.memory import available_gb, inference_gb
from scripts.tasks.presets import fitting_presets

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def nifti_files(pattern: str) -> list[str]:
    """NIfTI files (``.nii``, ``.nii.gz``) matching a glob pattern, or in a folder, sorted."""
    if os.path.isdir(pattern):
        pattern = os.path.join(pattern, "*")
    return sorted(p for p in glob.glob(pattern) if p.endswith(NIFTI_SUFFIXES))


def _read(path: str, what: str, channels: int = 1) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Open and fully read one NIfTI volume of ``channels`` images (MSD stores them as a 4-D file); raise
    InputError naming the file on any problem."""
    if not os.path.exists(path):
        if os.path.islink(path):
            raise InputError(f"{what} {path}: broken or looping symbolic link")
        raise InputError(f"{what} {path}: file not found")
    if os.path.isdir(path):
        raise InputError(f"{what} {path}: is a folder, expected a NIfTI file (.nii or .nii.gz)")
    if os.path.getsize(path) == 0:
        raise InputError(f"{what} {path}: file is empty")
    try:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj)
    except Exception as e:  # nibabel, gzip and zlib raise many types for damaged files
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"{what} {path}: unreadable or corrupt ({reason})") from None
    if data.size == 0:
        raise InputError(f"{what} {path}: image has no voxels (shape {data.shape})")
    shape = tuple(data.shape)
    if len(shape) < 3 or min(shape[:3]) < 1:
        raise InputError(f"{what} {path}: {len(shape)}-D image of shape {shape}, expected a 3-D volume")
    found = int(np.prod(shape[3:])) if len(shape) > 3 else 1
    if found != channels:
        expected = "a single 3-D volume" if channels == 1 else f"{channels} channels (x, y, z, {channels})"
        raise InputError(
            f"{what} {path}: {len(shape)}-D image of shape {shape} ({found} volumes or channels), expected {expected}"
        )
    if np.issubdtype(data.dtype, np.floating):
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if bad:
            raise InputError(f"{what} {path}: {bad} non-finite voxels (NaN or infinite)")
    return img, data


class Geometry:
    """Plausibility of a volume's voxel geometry, checked before any resampling.

    Args:
        pixdim: the working spacing (mm) volumes are resampled to; enables the size estimate and the
            coarse-spacing warning.
        min_spacing, max_spacing: plausible voxel spacing in mm (CT: about 0.2 to 10 mm); a value
            outside is almost always a header error (mm written as m, a missing scale).
        max_resampled_gb: refuse volumes whose image alone, resampled to ``pixdim`` in float32, would
            take more memory than this; the estimate is in the message.
        coarse_factor: warn when a spacing is this many times the working one: the result is then
            interpolated from very few slices.
        channels: input channels of the task (MSD brain tumour: 4 MRI sequences in one 4-D file).
        modality: ``"CT"`` warns about images whose intensities do not look like Hounsfield units.
        classes: output channels of the network; given (inference), a volume whose segmentation would need
            more memory than ``max_memory_gb`` is refused before the compute, with the estimate.
        max_memory_gb: the memory inference may use; None: what the system has available at the check.
        network_gb: the network's own memory in this process (``scripts.inference.memory.network_gb`` on
            the CPU, 0 on a GPU), added to the estimate.
    """

    def __init__(
        self,
        pixdim=None,
        min_spacing: float = 0.05,
        max_spacing: float = 20.0,
        max_resampled_gb: float = 4.0,
        coarse_factor: float = 4.0,
        channels: int = 1,
        modality: str = "CT",
        classes: int | None = None,
        max_memory_gb: float | None = None,
        network_gb: float = 0.0,
    ):
        if not 0 < min_spacing < max_spacing:
            raise ValueError(f"need 0 < min_spacing < max_spacing, got {min_spacing}, {max_spacing}")
        self.pixdim = None if pixdim is None else np.asarray(pixdim, dtype=float)
        self.min_spacing, self.max_spacing = min_spacing, max_spacing
        self.max_resampled_gb, self.coarse_factor = max_resampled_gb, coarse_factor
        self.channels, self.modality = int(channels), modality
        self.classes, self.max_memory_gb, self.network_gb = classes, max_memory_gb, network_gb

    def problem(self, affine: np.ndarray, shape) -> str | None:
        """One line on why the geometry cannot be used, or None."""
        if not np.all(np.isfinite(affine)):
            return "affine has non-finite entries (NaN or infinite): the voxel geometry is unknown"
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        if abs(np.linalg.det(affine[:3, :3])) <= 1e-6 * float(np.prod(np.maximum(spacing, 1e-12))) or not spacing.all():
            return "affine is singular (a zero or repeated axis): the voxel geometry is unknown"
        shown = ", ".join(f"{v:.4g}" for v in spacing)
        if spacing.min() < self.min_spacing or spacing.max() > self.max_spacing:
            return (
                f"voxel spacing ({shown}) mm outside the plausible {self.min_spacing:g}-{self.max_spacing:g} mm "
                f"(a header error?); ids min_spacing / max_spacing change the range"
            )
        if self.pixdim is not None:
            resampled = np.ceil(np.asarray(shape[:3]) * spacing / self.pixdim)
            gb = float(np.prod(resampled)) * 4 * self.channels / 2**30
            if gb > self.max_resampled_gb:
                return (
                    f"resampled to {self.pixdim.tolist()} mm the image alone would be {resampled.astype(int).tolist()} "
                    f"voxels, {gb:.1f} GB, above max_resampled_gb={self.max_resampled_gb:g}"
                )
            if self.classes:
                return self._memory_problem(shape, spacing)
        return None

    def _memory_problem(self, shape, spacing) -> str | None:
        need = inference_gb(shape, spacing, self.pixdim, self.channels, self.classes, self.network_gb)
        have = self.max_memory_gb if self.max_memory_gb is not None else available_gb()
        if have is None or need <= have:
            return None
        where = "max_memory_gb" if self.max_memory_gb is not None else "available memory"
        return (
            f"segmenting {tuple(int(v) for v in shape[:3])} voxels with {self.classes} classes needs about "
            f"{need:.1f} GB, more than the {have:.1f} GB {where}; free memory or use a machine with more"
        )

    def warning(self, affine: np.ndarray) -> str | None:
        if self.pixdim is None:
            return None
        spacing = np.linalg.norm(affine[:3, :3], axis=0)  # file axes: compared orientation-free, coarsest first
        if spacing.max() > self.coarse_factor * self.pixdim.max():
            return (
                f"voxel spacing ({', '.join(f'{v:.4g}' for v in spacing)}) mm is more than {self.coarse_factor:g} "
                f"times the coarsest working spacing {self.pixdim.tolist()} mm: the result along that axis is "
                f"interpolated from few slices"
            )
        return None


def ct_warning(path: str, data: np.ndarray) -> str | None:
    """A warning when intensities do not look like CT in Hounsfield units (air near -1000, bone above 300)."""
    low, high = np.percentile(data, [0.5, 99.5])
    if low > -500 or high < 100:
        return (
            f"image {path}: intensities {low:.4g}..{high:.4g} (0.5-99.5th percentile) do not look like CT in "
            f"HU (air about -1000, bone above 300): an MRI or an already-normalised image?"
        )
    return None


def check_case(
    item: dict,
    keys=("image",),
    label_values: int | None = None,
    warnings: list | None = None,
    geometry: Geometry | None = None,
) -> dict:
    """Check one datalist entry: readable 3-D volumes with a usable geometry (``Geometry``, default
    limits unless given); label values in range and on the image grid. Returns ``{key: (nibabel image, data)}``.

    Warnings (intensities that do not look like CT, coarse spacing) are appended to ``warnings`` or logged.
    """
    geometry = geometry or Geometry()
    loaded = {key: _read(item[key], key, geometry.channels if key == "image" else 1) for key in keys if key in item}
    for key, (img, data) in loaded.items():
        if problem := geometry.problem(img.affine, data.shape):
            raise InputError(f"{key} {item[key]}: {problem}")
    if "image" in loaded:
        img, data = loaded["image"]
        if geometry.modality != "CT" and (problem := constant_channels(data)):
            # z-scoring divides by the spread and the foreground crop needs non-zero voxels: both fail on a blank
            # sequence deep in training; a blank CT still crops and scales (its labels say where)
            raise InputError(f"image {item['image']}: {problem}")
        ct = ct_warning(item["image"], data) if geometry.modality == "CT" else None
        for warning in (ct, geometry.warning(img.affine)):
            if warning and not warning.startswith("image "):
                warning = f"image {item['image']}: {warning}"
            if warning and warnings is not None:
                warnings.append(warning)
            elif warning:
                logging.getLogger(__name__).warning(warning)
    missing = [key for key in keys if key not in item]
    if missing:
        raise InputError(f"datalist entry {item}: no {', '.join(missing)} given")
    if "image" in loaded and "label" in loaded:
        (img, data), (lbl, ldata) = loaded["image"], loaded["label"]
        if data.shape[:3] != ldata.shape[:3]:
            raise InputError(
                f"label {item['label']}: shape {ldata.shape[:3]} differs from image {item['image']} "
                f"shape {data.shape[:3]}"
            )
        if not np.allclose(img.affine, lbl.affine, atol=1e-3):
            raise InputError(f"label {item['label']}: affine differs from image {item['image']} (not on the same grid)")
    if "label" in loaded and label_values is not None:
        values = np.unique(loaded["label"][1])
        bad = values[(values < 0) | (values >= label_values) | (values != np.round(values))]
        if bad.size:
            raise InputError(
                f"label {item['label']}: values {bad[:10].tolist()} outside the task's classes 0..{label_values - 1}"
            )
    return loaded


def constant_channels(data: np.ndarray) -> str | None:
    """Why an image (x, y, z[, c]) is unusable because a channel holds one value everywhere, or None."""
    channels = data.reshape(*data.shape[:3], -1)
    flat = [channels[..., c] for c in range(channels.shape[-1])]
    constant = [c for c, values in enumerate(flat) if values.min() == values.max()]
    if not constant:
        return None
    value = float(flat[constant[0]].flat[0])
    if channels.shape[-1] == 1:
        return f"constant image (every voxel {value:g}): an empty or blank volume"
    return f"constant channel(s) {constant} (channel {constant[0]}: every voxel {value:g}): an empty or blank sequence"


def missing(path: str, what: str) -> str:
    """ "<what> <path>: ... not found", with how to make the default data when ``path`` is in ``data/phantoms``."""
    message = f"{what} {path}: {'folder' if what == 'dataset_dir' else 'file'} not found"
    if "data/phantoms" in path.replace(os.sep, "/"):
        message += (
            "; the default data (synthetic CT phantoms) are generated, not shipped: run bash bin/demo.sh once, "
            "or python -m scripts.tools.phantoms --out_dir data/phantoms, or give --dataset_dir / --datalist"
        )
    return message


def load_datalist_json(datalist: str) -> dict:
    """The datalist file's JSON object; one-line errors for a missing file or a syntax error."""
    if not os.path.isfile(datalist):
        raise InputError(missing(datalist, "datalist"))
    try:
        with open(datalist) as f:
            lists = json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f"datalist {datalist}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"datalist {datalist}: unreadable ({e})") from None
    if not isinstance(lists, dict):
        raise InputError(f"datalist {datalist}: expected a JSON object of lists, got {type(lists).__name__}")
    return lists


def _path_problem(value, field: str) -> str | None:
    if isinstance(value, str) and value.strip():
        return None
    if isinstance(value, list):
        return f"'{field}' is a list (several files: multi-channel input), expected one file path"
    shown = "null" if value is None else f"{type(value).__name__} {value!r}"
    return f"'{field}' is {shown}, expected a file path"


def entry_problems(entries, key: str, labels: bool) -> list[str]:
    """One line per malformed entry of the list ``key``: the same rules for every workflow and check_data.

    Entries are objects with an ``image`` file path and, where present (required when ``labels``), a
    ``label`` file path; a ``test`` list may instead hold plain file paths (MSD format), all in one form.
    """
    if not isinstance(entries, list):
        return [f"list '{key}' is {type(entries).__name__}, expected a list of entries"]
    problems = []
    strings = key == "test" and bool(entries) and isinstance(entries[0], str)
    for index, entry in enumerate(entries):
        where = f"{key}[{index}]"
        if strings:
            problem = _path_problem(entry, "image") if not isinstance(entry, dict) else "an object among file paths"
            if problem:
                problems.append(f"{where}: {problem}")
            continue
        if not isinstance(entry, dict):
            problems.append(f"{where}: {type(entry).__name__} {entry!r}, expected an object with an 'image' path")
            continue
        for field in ("image", "label"):
            if field not in entry:
                if field == "image" or labels:
                    problems.append(f"{where}: no '{field}' given")
            elif problem := _path_problem(entry[field], field):
                problems.append(f"{where}: {problem}")
    return problems


def read_datalist(datalist: str, key: str, base_dir: str, is_segmentation: bool = True) -> list:
    """The ``key`` list of an MSD-style datalist with paths joined to ``base_dir``.

    Every malformed entry is reported on its own line (list name and index) before anything is read;
    labels are required in non-``test`` lists when ``is_segmentation``.
    """
    lists = load_datalist_json(datalist)
    if key not in lists:
        raise InputError(f"datalist {datalist}: no list '{key}' (lists there: {sorted(lists)})")
    problems = entry_problems(lists[key], key, labels=is_segmentation and key != "test")
    if problems:
        raise InputError(f"datalist {datalist}: {len(problems)} malformed entries:\n  " + "\n  ".join(problems))
    if not lists[key]:
        return []
    return load_decathlon_datalist(datalist, is_segmentation=is_segmentation, data_list_key=key, base_dir=base_dir)


def task_mismatch(datalist: str, label_names=None, geometry: Geometry | None = None) -> str | None:
    """Why the task the datalist declares (an MSD ``dataset.json``'s ``labels`` and ``modality``) is not the
    config's, or None. Counts are compared, not names: BTCV's own list abbreviates its organ names."""
    lists = load_datalist_json(datalist)
    labels, modalities = lists.get("labels"), lists.get("modality")
    problems = []
    if isinstance(labels, dict) and label_names is not None and len(labels) != len(label_names):
        shown = ", ".join(str(v) for v in list(labels.values())[:4]) + (", ..." if len(labels) > 4 else "")
        problems.append(f"{len(labels)} label values ({shown}) but the config segments {len(label_names)}")
    if isinstance(modalities, dict) and geometry is not None:
        channels = list(modalities.values())
        ct = all(str(c).upper() == "CT" for c in channels)
        if len(channels) != geometry.channels:
            problems.append(
                f"{len(channels)} input channels ({', '.join(map(str, channels))}) but the config takes "
                f"{geometry.channels}"
            )
        elif ct != (geometry.modality == "CT"):
            problems.append(f"modality {', '.join(map(str, channels))} but the config normalises {geometry.modality}")
    if not problems:
        return None
    fits = []
    if isinstance(labels, dict) and isinstance(modalities, dict):
        fits = fitting_presets(len(labels), list(modalities.values()))
    example = fits[0] if fits else "task09_spleen"
    return (
        f"datalist {datalist} declares {'; '.join(problems)}: merge the task's preset after the workflow's config, "
        f"e.g. --config_file \"['configs/train.json','configs/tasks/{example}.json']\" "
        f"(presets that fit: {', '.join(fits) if fits else 'none; see configs/tasks/ and docs/tasks.md'})"
    )


def checked_datalist(
    datalist: str,
    key: str,
    base_dir: str,
    keys=("image", "label"),
    label_names=None,
    geometry: Geometry | None = None,
    split=None,
) -> list:
    """Read an MSD-style datalist (paths relative to ``base_dir``) and check every file in it.

    ``label_names``: the config's label values by name; a datalist that declares another number of labels or
    channels, or another modality, is refused before any file is read (the wrong task preset, or none).
    ``split`` (``scripts.tasks.splits.Split``): the fold / label fraction of the list to use.
    """
    if problem := task_mismatch(datalist, label_names, geometry):
        raise ConfigError(problem)
    items = read_datalist(datalist, split.source_key(key) if split else key, base_dir)
    if split is not None:
        items = split.select(items, key)
    if not items:
        raise InputError(f"datalist {datalist}: list '{key}' is empty")
    label_values = None if label_names is None else len(label_names)
    for item in items:
        if os.path.isdir(item.get("image", "")):  # a DICOM series folder: its NIfTI conversion is read
            item["image"] = cached_nifti(item["image"])
        check_case(item, keys, label_values, geometry=geometry)
    return items


def require_file(path: str, what: str) -> str:
    """Fail with one line when a file the workflow needs (e.g. the model checkpoint) is missing."""
    if not os.path.isfile(path):
        raise InputError(f"{what} {path}: file not found")
    return path

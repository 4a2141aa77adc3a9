"""DICOM CT series: found in any folder structure, checked slice by slice, converted to NIfTI in HU.

Reading is pydicom's: headers for grouping and checks, pixel data decoded by its pylibjpeg plugins
(JPEG, JPEG-LS, JPEG 2000, RLE), so compressed transfer syntaxes convert like uncompressed ones.

Geometry: DICOM positions are patient LPS; the NIfTI affine is RAS (x and y negated). Voxel ``(i, j, k)``
is column ``i``, row ``j`` of the ``k``-th slice in the order of its position along the slice normal; the
third affine column is the slice spacing along the normal. A tilted gantry steps the slices sideways too: each
slice is shifted back in-plane (linear interpolation) onto that orthogonal grid, as dcm2niix does, because a
sheared affine has no NIfTI qform and ITK-based tools would place the slices by a rotated approximation.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from collections import defaultdict
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from scripts.atomic_files import atomic_path
from scripts.dicom.extras import REQUIREMENTS
from scripts.errors import InputError, one_line

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
logger = logging.getLogger(__name__)
LOCALIZER_TYPES = {"LOCALIZER", "SCOUT", "TOPOGRAM", "SCANOGRAM"}
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
HEADER_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "PatientID",
    "Modality",
    "ImageType",
    "SeriesDescription",
    "SeriesNumber",
    "InstanceNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
    "NumberOfFrames",
]


@dataclass
class Slice:
    """The header fields of one DICOM file that grouping and checks need (small, sent between processes)."""

    path: str
    sop_uid: str
    series_uid: str
    sop_class: str
    modality: str
    image_type: tuple
    patient_id: str
    description: str
    series_number: str
    position: tuple | None
    orientation: tuple | None
    pixel_spacing: tuple | None
    rows: int
    columns: int
    frames: int
    uids_missing: bool = False  # an anonymiser blanked its UIDs: grouped by what remains, identified by its path

    @property
    def identity(self) -> str:
        """What tells two files of a series apart: the SOPInstanceUID, or the path when it is missing."""
        return self.sop_uid or self.path

    @property
    def localizer(self) -> bool:
        return bool(LOCALIZER_TYPES & {str(t).upper() for t in self.image_type})


def _floats(value, n: int) -> tuple | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and np.all(np.isfinite(out)) else None


def is_damaged_dicom(path: str) -> bool:
    """A file that says it is DICOM (the ``DICM`` marker after the 128-byte preamble) but whose header does not
    read: truncated by an interrupted download, or bit-flipped."""
    try:
        with open(path, "rb") as f:
            if f.read(132)[128:] != b"DICM":
                return False
        if _read_header(path) is not None:
            return False
        # a readable DICOMDIR or report is not damaged, only not an image; an image cut short is
        meta = pydicom.filereader.read_file_meta_info(path)
        return str(meta.get("MediaStorageSOPClassUID", "")) in (CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE)
    except Exception:
        return True


def _derived_series_uid(path: str, ds) -> str:
    """A stand-in series identity from what an anonymiser leaves: folder, series number and description, slice
    orientation, pixel spacing and image size."""
    parts = [os.path.dirname(path)] + [
        str(ds.get(k, "")) for k in ("SeriesNumber", "SeriesDescription", "ImageOrientationPatient", "PixelSpacing")
    ]
    parts += [str(ds.get("Rows", "")), str(ds.get("Columns", ""))]
    return "derived-" + hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def read_header(path: str) -> Slice | None:
    """The header of ``path`` when it is a DICOM image file (None otherwise: other files, DICOMDIR, a header that
    does not read). Without a SeriesInstanceUID (blanked by an anonymiser) an image still counts, its series
    identity derived from what remains (``uids_missing``)."""
    try:
        return _read_header(path)
    except InvalidDicomError:
        return None  # not DICOM (no DICM preamble)
    except Exception:  # damaged beyond reading its header: pydicom decodes lazily and raises many types
        return None


def _read_header(path: str) -> Slice | None:
    with warnings.catch_warnings():  # a damaged value warns before it fails; the caller reports the file
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS)
        for keyword in HEADER_TAGS:  # decode now, inside the caller's guard
            ds.get(keyword)
    series_uid = str(ds.get("SeriesInstanceUID", "") or "")
    sop_uid = str(ds.get("SOPInstanceUID", "") or "")
    if not series_uid:
        if "ImagePositionPatient" not in ds or "Rows" not in ds:
            return None  # not an image of a volume (a DICOMDIR, a report)
        series_uid = _derived_series_uid(path, ds)
    image_type = ds.get("ImageType", ())
    return Slice(
        path=path,
        sop_uid=sop_uid,
        uids_missing=series_uid.startswith("derived-") or not sop_uid,
        series_uid=series_uid,
        sop_class=str(ds.get("SOPClassUID", "") or ""),
        modality=str(ds.get("Modality", "") or ""),
        image_type=(str(image_type),) if isinstance(image_type, str) else tuple(str(t) for t in image_type),
        patient_id=str(ds.get("PatientID", "") or ""),
        description=str(ds.get("SeriesDescription", "") or ""),
        series_number=str(ds.get("SeriesNumber", "") or ""),
        position=_floats(ds.get("ImagePositionPatient"), 3),
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),
        pixel_spacing=_floats(ds.get("PixelSpacing"), 2),
        rows=int(ds.get("Rows", 0) or 0),
        columns=int(ds.get("Columns", 0) or 0),
        frames=int(ds.get("NumberOfFrames", 1) or 1),
    )


@dataclass
class Series:
    """The files of one series (one folder's copy of it); ``reason`` says why it is not converted."""

    uid: str
    slices: list
    folder: str
    reason: str | None = None
    duplicate_files: int = 0
    geometry: dict = field(default_factory=dict)

    @property
    def first(self) -> Slice:
        return self.slices[0]

    def describe(self) -> str:
        s = self.first
        return " ".join(p for p in (f"#{s.series_number}" if s.series_number else "", s.description) if p)


def group_series(slices: list) -> list:
    """Series from file headers, sorted by folder: one per SeriesInstanceUID (localizer images of a series
    apart). A series found whole in two folders (a copy) is kept once, the copy marked as a duplicate; a
    series split over folders is merged, files with the same SOPInstanceUID counted once."""
    by_key = defaultdict(list)
    for s in slices:
        by_key[(s.series_uid, s.localizer)].append(s)
    blanked = [s for s in slices if s.uids_missing]
    if blanked:
        logger.warning(
            f"{len(blanked)} DICOM files without Series / SOP Instance UIDs (anonymised?), e.g. {blanked[0].path}: "
            "grouped by folder, series number and description, orientation, pixel spacing and size"
        )
    out = []
    for (uid, _), members in by_key.items():
        by_folder = defaultdict(list)
        for s in sorted(members, key=lambda s: s.path):
            by_folder[os.path.dirname(s.path)].append(s)
        merged, copies, seen_sets = {}, [], []
        for folder, files in sorted(by_folder.items()):
            sops = {s.identity for s in files}
            original = next((f for f, other in seen_sets if other == sops), None)
            if original is not None:
                copies.append(Series(uid, files, folder, reason=f"duplicate: same series and files as {original}"))
                continue
            seen_sets.append((folder, sops))
            for s in files:
                merged.setdefault(s.identity, s)
        files = sorted(merged.values(), key=lambda s: s.path)
        folder = os.path.commonpath([os.path.dirname(s.path) for s in files])
        copies_in = sum(len(c.slices) for c in copies)
        out.append(Series(uid, files, folder, duplicate_files=len(members) - len(files) - copies_in))
        out += copies
    return sorted(out, key=lambda s: (s.folder, s.first.series_number, s.uid, s.reason or ""))


def _shown(values) -> str:
    return ", ".join(sorted({str(v) for v in values}))


def check_series(series: Series, min_slices: int = 16, spacing_tolerance: float = 0.05) -> str | None:
    """Why ``series`` is not a CT volume that converts exactly (None when it is); sets ``series.geometry``.

    ``spacing_tolerance``: the largest relative deviation of a gap between neighbouring slices from the
    median gap; a gap near a multiple of the median means missing slices, any other is non-uniform."""
    if series.reason:
        return series.reason
    slices = series.slices
    modalities = {s.modality for s in slices}
    if modalities != {"CT"}:
        return f"not CT: modality {_shown(modalities) or 'missing'}"
    if any(s.localizer for s in slices):
        types = _shown("\\".join(s.image_type) for s in slices)
        return f"localizer/scout: ImageType {types}, not a volume"
    classes = {s.sop_class for s in slices}
    if ENHANCED_CT_IMAGE_STORAGE in classes or any(s.frames > 1 for s in slices):
        return "multi-frame images (Enhanced CT): not supported, export the series as single-frame CT images"
    if classes != {CT_IMAGE_STORAGE}:
        names = _shown(pydicom.uid.UID(c).name for c in classes)
        return f"not a CT image: {names} (a dose report, secondary capture or other non-volume object)"
    if any(s.position is None or s.orientation is None or s.pixel_spacing is None for s in slices):
        return "geometry unknown: image position, orientation or pixel spacing missing in some files"
    if len(slices) < min_slices:
        return f"too few slices: {len(slices)} (min_slices={min_slices})"
    if len(slices) < 2:  # the slice step, and so the volume's third axis, is unknown
        return "one slice: a single image, not a volume (no slice spacing)"
    if len({(s.rows, s.columns) for s in slices}) > 1:
        return f"mixed image sizes: {_shown(f'{s.columns}x{s.rows}' for s in slices)}"
    orientations = np.array([s.orientation for s in slices])
    if np.abs(orientations - orientations[0]).max() > 1e-3:
        return f"mixed orientation: {len({tuple(np.round(o, 3)) for o in orientations})} different slice orientations"
    spacings = np.array([s.pixel_spacing for s in slices])
    if np.abs(spacings - spacings[0]).max() > 1e-3 * spacings[0].max():
        return f"mixed pixel spacing: {_shown(f'{a:g}x{b:g}' for a, b in spacings)} mm"
    row, col = np.array(orientations[0][:3]), np.array(orientations[0][3:])
    normal = np.cross(row, col)
    if not 0.99 < np.linalg.norm(normal) < 1.01:
        return f"geometry unknown: image orientation {orientations[0].tolist()} is not two orthogonal unit vectors"
    order = sorted(range(len(slices)), key=lambda i: float(np.dot(slices[i].position, normal)))
    ordered = [slices[i] for i in order]
    positions = np.array([s.position for s in ordered])
    gaps = np.diff(positions @ normal)
    median = float(np.median(gaps))
    if (gaps < 0.01).any() or median <= 0:
        n = int((gaps < 0.01).sum())
        return f"slices at the same position: {n} (several phases or acquisitions in one series?)"
    ratio = gaps / median
    off = np.abs(ratio - 1) > spacing_tolerance
    if off.any():
        multiples = np.round(ratio[off])
        if (multiples >= 2).all() and (np.abs(ratio[off] - multiples) <= spacing_tolerance * multiples).all():
            missing = int((multiples - 1).sum())
            return f"missing slices: {missing} missing in {int(off.sum())} gaps of the {median:.4g} mm slice spacing"
        return (
            f"slice spacing not uniform: gaps from {gaps.min():.4g} to {gaps.max():.4g} mm around {median:.4g} mm "
            f"(spacing_tolerance={spacing_tolerance:g})"
        )
    step = (positions[-1] - positions[0]) / (len(ordered) - 1)
    tilt = float(np.degrees(np.arccos(min(1.0, abs(np.dot(step, normal)) / np.linalg.norm(step)))))
    # a tilted gantry steps the slices sideways too: the volume is written on the orthogonal grid along the
    # normal, each slice shifted back in-plane (read_volume), since a sheared affine has no NIfTI qform and
    # ITK-based tools (SimpleITK, Slicer) would place the last slices by a rotated approximation
    along = float(np.dot(step, normal))
    sideways = step - along * normal
    lps = np.eye(4)
    lps[:3, 0] = row * spacings[0][1]  # along a row: the column index grows; PixelSpacing is (row, column) spacing
    lps[:3, 1] = col * spacings[0][0]
    lps[:3, 2] = along * normal
    lps[:3, 3] = positions[0]
    series.slices = ordered
    series.geometry = {
        "affine": LPS_TO_RAS @ lps,
        "shape": (ordered[0].columns, ordered[0].rows, len(ordered)),
        "spacing": (spacings[0][1], spacings[0][0], along),
        "tilt": tilt,
        # voxels per slice by which slice k lies shifted along the column and row index of the orthogonal grid
        "shift_per_slice": (float(sideways @ row) / spacings[0][1], float(sideways @ col) / spacings[0][0]),
    }
    return None


def read_volume(series: Series) -> np.ndarray:
    """The checked series' voxels in HU as int16, shape (columns, rows, slices); InputError naming the file
    whose pixel data cannot be decoded or whose HU values do not fit int16."""
    shape = series.geometry["shape"]
    out = np.empty(shape, np.int16)
    for k, s in enumerate(series.slices):
        ds = None
        try:
            ds = pydicom.dcmread(s.path)
            pixels = ds.pixel_array
        except Exception as e:  # decoders raise many types (missing codec, truncated stream)
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            # the codecs for compressed pixel data come with requirements-dicom.txt
            hint = f" (compressed: pip install -r {REQUIREMENTS})" if getattr(syntax, "is_compressed", False) else ""
            raise InputError(f"unreadable pixel data: {s.path}: {one_line(e)}{hint}") from None
        if pixels.shape != (shape[1], shape[0]):
            raise InputError(f"unreadable pixel data: {s.path}: decoded shape {pixels.shape}, header {shape[1::-1]}")
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        hu = np.rint(pixels.astype(np.float64) * slope + intercept)
        if hu.min() < -32768 or hu.max() > 32767:
            raise InputError(f"HU out of int16 range: {s.path}: {hu.min():g}..{hu.max():g}")
        out[:, :, k] = hu.T
    di, dj = series.geometry.get("shift_per_slice", (0.0, 0.0))
    if abs(di) + abs(dj) > 1e-3:  # gantry tilt: slice k moved back onto the orthogonal grid
        from scipy import ndimage

        air = float(out.min())
        for k in range(shape[2]):
            moved = ndimage.shift(out[:, :, k].astype(np.float32), (k * di, k * dj), order=1, cval=air)
            out[:, :, k] = np.rint(moved).astype(np.int16)
    return out


def series_key(series: Series) -> str:
    """Identity of a series' data: its instance UIDs and file sizes, or, when a slice has no SOPInstanceUID (an
    anonymiser blanked it), the bytes of its files. Two patients' series on one grid never share a key."""
    digest = hashlib.sha1(series.uid.encode())
    for s in series.slices:
        if s.sop_uid:
            digest.update(f"{s.sop_uid}:{os.path.getsize(s.path)}".encode())
        else:
            with open(s.path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


def file_key(path: str) -> str:
    """Identity of a single volume file's data: its real path, size and modification time."""
    stat = os.stat(path)
    return hashlib.sha1(f"{os.path.realpath(path)}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()


KEY_PREFIX = "source "  # NIfTI descrip (80 bytes): "source <sha1>" of the data it was converted from


def nifti_image(volume: np.ndarray, affine: np.ndarray, key: str = "") -> nib.Nifti1Image:
    """int16 NIfTI with the affine as both sform and qform (scanner coordinates), units mm, and ``key`` (the
    source's identity) in its description, which decides whether a later run may reuse it."""
    img = nib.Nifti1Image(volume, affine)
    img.header.set_xyzt_units("mm")
    if key:
        img.header["descrip"] = (KEY_PREFIX + key).encode()
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    return img


def save_nifti(volume: np.ndarray, affine: np.ndarray, path: str, key: str = "") -> None:
    with atomic_path(path) as tmp:
        nib.save(nifti_image(volume, affine, key), tmp)


def content_hash(volume: np.ndarray, affine: np.ndarray) -> str:
    """Hash of the voxels and the grid: equal for two copies of one scan, whatever their UIDs or names."""
    digest = hashlib.sha1(np.ascontiguousarray(volume).tobytes())
    digest.update(np.round(affine, 3).tobytes())
    return digest.hexdigest()


def verified(path: str, shape, affine: np.ndarray, key: str) -> np.ndarray | None:
    """The voxels of an earlier output when it was converted from the same data (``key``: ``series_key`` or
    ``file_key``), reads fully and has the expected grid, else None. The grid alone is not enough: another
    patient's scan on the same grid must never be taken for this one."""
    if not os.path.isfile(path):
        return None
    try:
        img = nib.load(path)
        if img.header["descrip"].item().decode(errors="replace") != KEY_PREFIX + key:
            return None
        data = np.asarray(img.dataobj)
    except Exception:  # truncated or damaged: converted again
        return None
    if data.dtype != np.int16 or data.shape != tuple(shape) or not np.allclose(img.affine, affine, atol=1e-3):
        return None
    return data


def dicom_files(folder: str) -> list:
    """Headers of every DICOM file under ``folder`` (any depth, any names), sorted by path."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if (header := read_header(os.path.join(root, name))) is not None:
                found.append(header)
    return found


def holds_dicom(folder: str) -> bool:
    """Whether any file under ``folder`` is a DICOM image file (stops at the first)."""
    for root, _, files in os.walk(folder):
        if any(read_header(os.path.join(root, name)) is not None for name in files):
            return True
    return False


def _damaged_note(folder: str) -> str:
    """``"; damaged DICOM files: <first> (and N more)"`` for the files under ``folder`` whose header does not read."""
    damaged = [
        os.path.join(root, name)
        for root, _, files in os.walk(folder)
        for name in sorted(files)
        if is_damaged_dicom(os.path.join(root, name))
    ]
    if not damaged:
        return ""
    return f"; damaged DICOM files (truncated or corrupt, skipped): {damaged[0]}" + (
        f" and {len(damaged) - 1} more" if len(damaged) > 1 else ""
    )


def series_to_nifti(folder: str, path: str, min_slices: int = 1, spacing_tolerance: float = 0.05) -> Series:
    """Convert the one CT volume series in ``folder`` (other series, e.g. a localizer, are ignored) to
    NIfTI at ``path`` (atomically; an earlier verified output is kept). InputError naming the folder
    when it holds no such series, or several."""
    series = group_series(dicom_files(folder))
    if not series:
        raise InputError(f"DICOM folder {folder}: no DICOM image files{_damaged_note(folder)}")
    reasons = [check_series(s, min_slices, spacing_tolerance) for s in series]
    volumes = [s for s, reason in zip(series, reasons) if reason is None]
    if not volumes:
        shown = "; ".join(f"series {s.describe() or s.uid}: {reason}" for s, reason in zip(series, reasons))
        raise InputError(f"DICOM folder {folder}: no CT volume series ({shown}){_damaged_note(folder)}")
    if len(volumes) > 1:
        shown = ", ".join(s.describe() or s.uid for s in volumes)
        raise InputError(
            f"DICOM folder {folder}: {len(volumes)} CT volume series ({shown}); give each series its own folder"
        )
    chosen = volumes[0]
    key = series_key(chosen)
    if verified(path, chosen.geometry["shape"], chosen.geometry["affine"], key) is None:
        save_nifti(read_volume(chosen), chosen.geometry["affine"], path, key)
    return chosen


def cached_nifti(folder: str, cache_dir: str = "") -> str:
    """The NIfTI conversion of the DICOM series folder ``folder`` (``series_to_nifti``), for workflows that
    read a datalist whose image is a folder: kept in ``cache_dir`` (default ``swin_unetr_dicom`` in the
    system's temporary folder) under a key of the folder's path and its files' sizes and times, so an
    unchanged series is converted once and a changed one again."""
    cache_dir = cache_dir or os.path.join(tempfile.gettempdir(), "swin_unetr_dicom")
    key = hashlib.sha1(os.path.realpath(folder).encode())
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            stat = os.stat(os.path.join(root, name))
            key.update(f"{root}/{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    path = os.path.join(cache_dir, key.hexdigest()[:16], f"{os.path.basename(os.path.normpath(folder))}.nii.gz")
    series_to_nifti(folder, path)
    return path

"""A label map on a DICOM series' grid as a DICOM Segmentation (SEG) object that references the series.

PACS and viewers (OHIF, 3D Slicer, commercial workstations) overlay a SEG on its source images; written
with highdicom, one binary segment per class found in the map, named by the bundle's class names.
"""

from __future__ import annotations

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from scripts.atomic_files import atomic_path
from scripts.dicom.series import Series
from scripts.errors import InputError
from scripts.tasks.labels import metadata_class_names

PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "AccessionNumber",
    "StudyID",
)


# distinct display colours (RGB) by label value, as viewers show segments; the order of matplotlib's tab20
PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75), (227, 119, 194),
    (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150),
]  # fmt: skip
# segmented property types that are abnormal structures, not anatomy (their category differs)
ABNORMAL_TYPES = ("Neoplasm", "Tumor", "Mass", "Lesion")


def segment_codes(name: str, types: dict) -> tuple:
    """(category, type) codes of the class ``name``: its SNOMED CT keyword in ``types`` (the task preset's
    ``segment_types``), else the generic anatomical structure / organ."""
    keyword = types.get(name)
    if keyword is None:
        return codes.SCT.AnatomicalStructure, codes.SCT.Organ
    try:
        code = getattr(codes.SCT, keyword)
    except AttributeError:
        raise InputError(
            f"segment type {keyword!r} of {name!r}: not a SNOMED CT keyword of pydicom's codes.SCT"
        ) from None
    category = (
        codes.SCT.MorphologicallyAbnormalStructure if keyword in ABNORMAL_TYPES else codes.SCT.AnatomicalStructure
    )
    return category, code


def write_dicom_seg(
    labels_path: str, series: Series, path: str, names: dict | None = None, types: dict | None = None
) -> int:
    """Write the label map ``labels_path`` (a NIfTI on the grid of the converted ``series``) as a DICOM SEG at
    ``path`` (atomically); returns the number of segments. Label 0 is background. ``names``: label value ->
    class name (default: the bundle metadata's); ``types``: class name -> SNOMED CT keyword; each segment's
    display colour is fixed by its label value."""
    img = nib.load(labels_path)
    labels = np.asarray(img.dataobj)
    shape, affine = series.geometry["shape"], series.geometry["affine"]
    if labels.shape != tuple(shape) or not np.allclose(img.affine, affine, atol=1e-3):
        raise InputError(f"segmentation {labels_path}: not on the grid of the DICOM series in {series.folder}")
    frames = np.ascontiguousarray(labels.transpose(2, 1, 0)).astype(np.uint8)  # (slice, row, column) per source
    values = [int(v) for v in np.unique(frames) if v > 0]
    if not values:
        raise InputError(f"segmentation {labels_path}: no labelled voxel, no DICOM SEG written")
    names = metadata_class_names() if names is None else names
    algorithm = hd.AlgorithmIdentificationSequence(
        name="Swin UNETR", version="1", family=codes.cid7162.ArtificialIntelligence
    )
    # SEG segment numbers run 1..N; a map holding labels 1, 6 and 8 gets segments 1, 2, 3 named after them
    relabelled = np.zeros_like(frames)
    descriptions = []
    for number, value in enumerate(values, start=1):
        relabelled[frames == value] = number
        name = names.get(value, f"class {value}")
        category, kind = segment_codes(name, types or {})
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name,
                segmented_property_category=category,
                segmented_property_type=kind,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                display_color=hd.color.CIELabColor.from_rgb(*PALETTE[(value - 1) % len(PALETTE)]),
            )
        )
    sources = [pydicom.dcmread(s.path, stop_before_pixels=True) for s in series.slices]
    for source in sources:  # type-2 attributes the SEG copies; exports and anonymisers often drop them
        for keyword in PATIENT_STUDY_KEYWORDS:
            if keyword not in source:
                setattr(source, keyword, "")
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=relabelled,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(sources[0].get("SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="MONAI",
        manufacturer_model_name="Swin UNETR bundle",
        software_versions="1",
        device_serial_number="none",
        series_description="Swin UNETR segmentation",
    )
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return len(values)

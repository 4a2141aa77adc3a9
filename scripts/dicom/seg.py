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


def write_dicom_seg(labels_path: str, series: Series, path: str, names: dict | None = None) -> int:
    """Write the label map ``labels_path`` (a NIfTI on the grid of the converted ``series``) as a DICOM SEG at
    ``path`` (atomically); returns the number of segments. Label 0 is background."""
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
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=names.get(value, f"class {value}"),
                segmented_property_category=codes.SCT.AnatomicalStructure,
                segmented_property_type=codes.SCT.Organ,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
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

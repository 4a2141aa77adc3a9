"""Small DICOM CT series written with pydicom, with a known HU volume and a known LPS geometry."""

from __future__ import annotations

import os

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def hu_volume(shape=(10, 8, 6), seed=0) -> np.ndarray:
    """(columns, rows, slices) HU values from air to bone, different in every voxel position."""
    rng = np.random.default_rng(seed)
    return rng.integers(-1024, 2000, size=shape).astype(np.int16)


def lps_affine(origin, orientation, pixel_spacing, step) -> np.ndarray:
    """The LPS voxel-to-patient matrix of a series, written out from the DICOM definitions."""
    row, col = np.array(orientation[:3]), np.array(orientation[3:])
    out = np.eye(4)
    out[:3, 0] = row * pixel_spacing[1]
    out[:3, 1] = col * pixel_spacing[0]
    out[:3, 2] = step
    out[:3, 3] = origin
    return out


def write_series(
    folder,
    volume: np.ndarray,
    origin=(-100.0, -120.0, 30.0),
    orientation=AXIAL,
    pixel_spacing=(0.9, 0.7),
    offsets=None,
    slope: float = 1.0,
    intercept: float = -1024.0,
    modality: str = "CT",
    image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
    series_uid: str | None = None,
    study_uid: str | None = None,
    sop_uids=None,
    transfer_syntax=ExplicitVRLittleEndian,
    series_number: int = 2,
    names: str = "IM{index:05d}",
    file_order=None,
) -> dict:
    """Write ``volume`` (columns, rows, slices) as one file per slice; returns what was written.

    ``offsets``: each slice's distance (mm) from ``origin`` along the slice normal (default 2.5 mm apart);
    ``file_order``: the file index of each slice (default: reversed, so that names do not give the order).
    """
    os.makedirs(folder, exist_ok=True)
    n = volume.shape[2]
    offsets = np.arange(n) * 2.5 if offsets is None else np.asarray(offsets, float)
    normal = np.cross(orientation[:3], orientation[3:])
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    sop_uids = sop_uids or [generate_uid() for _ in range(n)]
    frame_of_reference = generate_uid()
    file_order = list(range(n))[::-1] if file_order is None else file_order
    paths = []
    for k in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage if modality == "CT" else MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uids[k]
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = sop_uids[k]
        ds.PatientID, ds.PatientName = "P001", "Test^Patient"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = frame_of_reference
        ds.Modality, ds.ImageType = modality, list(image_type)
        ds.SeriesNumber, ds.InstanceNumber = series_number, k + 1
        ds.SeriesDescription = f"test series {series_number}"
        ds.ImagePositionPatient = [float(v) for v in np.asarray(origin) + offsets[k] * normal]
        ds.ImageOrientationPatient = list(orientation)
        ds.PixelSpacing = list(pixel_spacing)
        ds.SliceThickness = 2.5
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        stored = np.rint((volume[:, :, k].T.astype(float) - intercept) / slope).astype(np.uint16)
        ds.PixelData = stored.tobytes()
        if transfer_syntax != ExplicitVRLittleEndian:
            ds.compress(transfer_syntax, stored)
        path = os.path.join(folder, names.format(index=file_order[k]))
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    step = (offsets[1] - offsets[0]) * normal if n > 1 else normal
    return {
        "paths": paths,
        "series_uid": series_uid,
        "study_uid": study_uid,
        "sop_uids": sop_uids,
        "lps": lps_affine(origin, orientation, pixel_spacing, step),
    }

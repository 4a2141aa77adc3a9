"""DICOM in and out: CT series to NIfTI (``series``), segmentations to DICOM SEG (``seg``)."""

from scripts import submodule_loader

__getattr__ = submodule_loader(__name__)

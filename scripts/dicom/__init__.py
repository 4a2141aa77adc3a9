"""DICOM in and out: CT series to NIfTI (``series``), segmentations to DICOM SEG (``seg``)."""

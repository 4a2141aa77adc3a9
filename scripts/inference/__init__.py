"""Inference's own parts: a batch of input files (NIfTI, DICOM) and the memory estimate."""

from scripts import submodule_loader

__getattr__ = submodule_loader(__name__)

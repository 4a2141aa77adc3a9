"""Packages of ``requirements-dicom.txt``, imported when a feature needs them, with a one-line error naming the file.

They stay out of ``requirements.txt`` because highdicom needs pydicom 3 and MONAI Label 0.8.5 needs pydicom < 3.
"""

from __future__ import annotations

import importlib

from scripts.errors import ConfigError

REQUIREMENTS = "requirements-dicom.txt"


def require(module: str, purpose: str):
    """The module ``module``; a ``ConfigError`` saying what needs it and how to install it when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(
            f"{purpose} needs {module} ({e}): pip install -r {REQUIREMENTS} (not into a MONAI Label 0.8.5 "
            f"environment: it upgrades pydicom to 3)"
        ) from None

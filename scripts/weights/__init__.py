"""Pre-trained weight files: formats in circulation, loading, conversion, legacy patch merging."""

from scripts import submodule_loader

__getattr__ = submodule_loader(__name__)

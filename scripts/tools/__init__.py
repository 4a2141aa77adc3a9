"""Command-line tools, each run as ``python -m scripts.tools.<name>``."""

from scripts import submodule_loader

__getattr__ = submodule_loader(__name__)

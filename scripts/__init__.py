"""Python helpers for the Swin UNETR bundle's configs: what MONAI does not provide itself.

A config imports only this package (``"$import scripts"``) and names what it uses by its full path,
``scripts.training.checkpoints.resume_path``: every package here imports a module the first time it is
named (``submodule_loader``), so the full path works without an import line per module, and the command-line
tools do not load the training stack they do not use.
"""

from __future__ import annotations

import importlib


def submodule_loader(package: str):
    """A module-level ``__getattr__`` for ``package``: ``package.name`` imports ``package.name`` on first use."""

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"{package}.{name}":
                raise  # the module exists but one of its own imports is missing: say that
            raise AttributeError(f"module '{package}' has no attribute '{name}'") from None

    return __getattr__


__getattr__ = submodule_loader(__name__)

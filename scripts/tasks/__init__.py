"""Task presets (configs/tasks/), their label tables, and dataset splits (folds, label fractions)."""

from scripts import submodule_loader

__getattr__ = submodule_loader(__name__)

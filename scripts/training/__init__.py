"""Training concerns shared by fine-tuning and pre-training: checkpoints, guards, progress, run lock."""

from scripts import submodule_loader

__getattr__ = submodule_loader(__name__)

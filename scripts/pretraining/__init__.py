"""Self-supervised pre-training: image lists, proxy tasks, views, the loss, the engine steps, monitors."""

from scripts import submodule_loader

__getattr__ = submodule_loader(__name__)

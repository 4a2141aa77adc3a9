"""The Swin networks as the workflows run them: attention kernel, compilation, the pre-training heads."""

from scripts import submodule_loader

__getattr__ = submodule_loader(__name__)

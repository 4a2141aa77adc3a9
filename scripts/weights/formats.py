"""Read Swin weight files of every known layout and rename their tensors to ``SwinUNETR`` names.

Formats (``fmt``), recognised from the keys when ``"auto"``:

- ``"bundle"``: this bundle's files: ``models/ssl_encoder.pt`` (flat ``swinViT.*``), fine-tuned
  ``models/model.pt`` and full pre-training / fine-tuning checkpoints; also the model zoo's flat
  ``model.pt``, which uses the same ``SwinUNETR`` names.
- ``"research_btcv"``: the research fine-tuning checkpoints (``{"epoch", "best_acc", "state_dict"}``
  with ``SwinUNETR`` names).
- ``"research"``: the paper's encoder ``model_swinvit.pt`` (``{"state_dict": ...}``, keys
  ``module.patch_embed.*``, ``module.layers1.0.*``, MLPs named ``fc1`` / ``fc2``, extra final
  ``norm``).
- ``"monai_ssl"``: MONAI's ``ssl_pretrained_weights.pth`` (``encoder.*`` keys).

Nested ``model`` / ``state_dict`` entries and DDP ``module.`` prefixes are unwrapped in all formats.
"""

from __future__ import annotations

import pickle

import torch
from monai.networks.nets.swin_unetr import filter_swinunetr

from scripts.errors import InputError
from scripts.options import choice

ENCODER_PREFIX = "swinViT."
FORMATS = ("auto", "bundle", "research_btcv", "research", "monai_ssl")
LEGACY_FORMATS = ("research_btcv", "research", "monai_ssl")  # trained before MONAI 1.5 changed the 3-D patch merging


RECORD_KEY = "swin_ssl_bundle.record"  # a key of state_dict._metadata that names no module


class WeightsError(InputError):
    """A weight file that cannot be used; the message names the file (printed as one line by the workflows)."""


class PickledWeightsError(WeightsError):
    """A weight file that holds pickled Python objects besides tensors: never loaded, it could run code."""


def read_checkpoint(path: str, mmap: bool = False) -> dict:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers only, never code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise WeightsError(f"{path}: weight file not found") from None
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise WeightsError(f"{path}: unreadable weight file (UnpicklingError: {str(e).splitlines()[0]})") from None
        blocked = next(
            (
                line.split("WeightsUnpickler error:")[1].strip()
                for line in str(e).splitlines()
                if "WeightsUnpickler error:" in line
            ),
            "",
        )
        raise PickledWeightsError(
            f"{path}: refused to load: the file holds pickled Python objects besides tensors, which could run "
            f"code when loaded{f' ({blocked})' if blocked else ''}. Only tensors and plain containers are "
            f"accepted; re-save the weights as a state_dict from a trusted environment."
        ) from None
    except Exception as e:  # truncated or not a torch file: zipfile, EOF and runtime errors
        raise WeightsError(
            f"{path}: unreadable weight file ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a state_dict (dict of tensors), got {type(state).__name__}")
    return state


def record_of(state) -> dict | None:
    """The record inside a loaded checkpoint (flat state_dict, or one nested under ``model`` / ``state_dict`` /
    ``network`` / ``encoder``), or None for files written elsewhere."""
    for _ in range(4):
        if not isinstance(state, dict):
            return None
        found = (getattr(state, "_metadata", None) or {}).get(RECORD_KEY)
        if isinstance(found, dict):
            return found
        state = next((state[k] for k in ("model", "state_dict", "network", "encoder") if k in state), None)
    return None


def flat_tensors(state: dict) -> dict:
    """The flat tensor dict inside a checkpoint: follows ``state_dict`` / ``model`` nesting, drops ``module.``."""
    while not any(isinstance(v, torch.Tensor) for v in state.values()):
        inner = next((state[k] for k in ("state_dict", "model", "network") if isinstance(state.get(k), dict)), None)
        if inner is None:
            raise ValueError(f"no tensors found (top-level keys: {sorted(state)[:10]})")
        state = inner
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def detect_format(tensors: dict) -> str:
    """Which layout ``tensors`` (already unwrapped) use; raises when none fits."""
    keys = list(tensors)
    if any(k.startswith(ENCODER_PREFIX) for k in keys):
        return "bundle"
    if any(k.startswith("encoder.") for k in keys):
        return "monai_ssl"
    if any(k.startswith(("patch_embed.", "layers1.")) for k in keys):
        return "research"
    raise ValueError(
        f"unknown weight layout (first keys: {keys[:5]}); expected swinViT.*, encoder.* or "
        f"patch_embed.* / layers1.* keys"
    )


def to_swinunetr_names(tensors: dict, fmt: str) -> dict:
    """Rename ``tensors`` of format ``fmt`` to ``SwinUNETR`` parameter names; unmappable keys are dropped."""
    if fmt in ("bundle", "research_btcv"):
        return dict(tensors)
    if fmt == "monai_ssl":
        mapped = (filter_swinunetr(k, v) for k, v in tensors.items())
        return dict(m for m in mapped if m is not None)
    if fmt == "research":
        renamed = {}
        for key, value in tensors.items():
            if key.startswith("norm."):  # the research encoder's final norm has no SwinUNETR counterpart
                continue
            renamed[
                ENCODER_PREFIX + key.replace(".mlp.fc1.", ".mlp.linear1.").replace(".mlp.fc2.", ".mlp.linear2.")
            ] = value
        return renamed
    choice("weight format", fmt, FORMATS)
    raise ValueError(f"unknown weight format {fmt!r}")


def read_weights(path: str, fmt: str = "auto") -> tuple[dict, str, dict | None]:
    """The tensors of the weight file at ``path``, unwrapped, their format, and the file's record
    (``scripts.weights.record``; None for files written elsewhere)."""
    choice("weight format", fmt, FORMATS)
    try:
        state = read_checkpoint(path)
        tensors = flat_tensors(state)
        if fmt == "auto":
            fmt = "research_btcv" if "best_acc" in state else detect_format(tensors)
        return tensors, fmt, record_of(state)
    except WeightsError:
        raise
    except ValueError as e:
        raise WeightsError(f"{path}: {e}") from None


def read_tensors(path: str, fmt: str = "auto") -> tuple[dict, str]:
    """The tensors of the weight file at ``path``, unwrapped, and their format."""
    return read_weights(path, fmt)[:2]


def file_format(path: str, fmt: str = "auto") -> str:
    """The format of the weight file at ``path`` (``fmt`` itself unless ``"auto"``)."""
    return read_tensors(path, fmt)[1]

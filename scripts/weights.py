"""Load pre-trained Swin weights of every known layout, and refuse to load them silently wrong.

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

import logging
import os
import pickle

import torch
from monai.networks.nets.swin_unetr import filter_swinunetr

from scripts.distributed import unwrap as unwrap_module
from scripts.inputs import InputError

logger = logging.getLogger(__name__)

ENCODER_PREFIX = "swinViT."
FORMATS = ("auto", "bundle", "research_btcv", "research", "monai_ssl")
LEGACY_FORMATS = ("research_btcv", "research", "monai_ssl")  # trained before MONAI 1.5 changed the 3-D patch merging


class WeightsError(InputError):
    """A weight file that cannot be used; the message names the file (printed as one line by the workflows)."""


def read_checkpoint(path: str) -> dict:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers only, never code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"{path}: weight file not found") from None
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise WeightsError(f"{path}: unreadable weight file (UnpicklingError: {str(e).splitlines()[0]})") from None
        blocked = next((line.split("WeightsUnpickler error:")[1].strip() for line in str(e).splitlines()
                        if "WeightsUnpickler error:" in line), "")
        raise WeightsError(
            f"{path}: refused to load: the file holds pickled Python objects besides tensors, which could run "
            f"code when loaded{f' ({blocked})' if blocked else ''}. Only tensors and plain containers are "
            f"accepted; re-save the weights as a state_dict from a trusted environment."
        ) from None
    except Exception as e:  # truncated or not a torch file: zipfile, EOF and runtime errors
        raise WeightsError(f"{path}: unreadable weight file ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a state_dict (dict of tensors), got {type(state).__name__}")
    return state


def unwrap(state: dict) -> dict:
    """The flat tensor dict inside a checkpoint: follows ``state_dict`` / ``model`` nesting, drops ``module.``."""
    while not any(isinstance(v, torch.Tensor) for v in state.values()):
        inner = next((state[k] for k in ("state_dict", "model", "network") if isinstance(state.get(k), dict)), None)
        if inner is None:
            raise ValueError(f"no tensors found (top-level keys: {sorted(state)[:10]})")
        state = inner
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
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
    raise ValueError(f"unknown weight layout (first keys: {keys[:5]}); expected swinViT.*, encoder.* or "
                     f"patch_embed.* / layers1.* keys")


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
            renamed[ENCODER_PREFIX + key.replace(".mlp.fc1.", ".mlp.linear1.").replace(".mlp.fc2.", ".mlp.linear2.")] = value
        return renamed
    raise ValueError(f"unknown weight format {fmt!r}; choose one of {FORMATS}")


def read_tensors(path: str, fmt: str = "auto") -> tuple[dict, str]:
    """The tensors of the weight file at ``path``, unwrapped, and their format."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown weight format {fmt!r}; choose one of {FORMATS}")
    try:
        state = read_checkpoint(path)
        tensors = unwrap(state)
        if fmt == "auto":
            fmt = "research_btcv" if "best_acc" in state else detect_format(tensors)
        return tensors, fmt
    except WeightsError:
        raise
    except ValueError as e:
        raise WeightsError(f"{path}: {e}") from None


def file_format(path: str, fmt: str = "auto") -> str:
    """The format of the weight file at ``path`` (``fmt`` itself unless ``"auto"``)."""
    return read_tensors(path, fmt)[1]


def adapt_in_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Patch-embedding kernel (out, c, k, k, k) for ``in_channels`` inputs.

    Rule: a 1-channel kernel is repeated over the new channels and divided by their number, so an
    input whose channels are all equal gives the original response (CT-pretrained weights for a
    multi-channel MRI task); a multi-channel kernel for a 1-channel input is summed over channels.
    """
    c = weight.shape[1]
    if c == in_channels:
        return weight
    if c == 1:
        return weight.repeat(1, in_channels, *([1] * (weight.ndim - 2))) / in_channels
    if in_channels == 1:
        return weight.sum(1, keepdim=True)
    raise ValueError(f"cannot adapt a {c}-channel patch embedding to {in_channels} input channels")


def load_pretrained(network: torch.nn.Module, path: str, fmt: str = "auto", part: str = "encoder",
                    min_fraction: float = 1.0) -> int:
    """Load the weights at ``path`` into ``network`` (a ``SwinUNETR`` or ``SSLHead``); returns the count loaded.

    Args:
        fmt: one of ``FORMATS``; ``"auto"`` recognises it from the keys.
        part: ``"encoder"`` (the ``swinViT.*`` tensors) or ``"all"`` (every tensor of the network,
            e.g. to continue from a fine-tuned Swin UNETR).
        min_fraction: fail unless at least this fraction of the target tensors is loaded (default:
            all of them), listing the ones missing or of another shape, rather than training on
            random weights without notice.

    Logs ``loaded N of M encoder|network tensors from <path> (<format>)`` and the names of skipped tensors.
    """
    if part not in ("encoder", "all"):
        raise ValueError(f"part must be 'encoder' or 'all', got {part!r}")
    network = unwrap_module(network)
    tensors, fmt = read_tensors(path, fmt)
    source = to_swinunetr_names(tensors, fmt)
    target = {k: v for k, v in network.state_dict().items() if part == "all" or k.startswith(ENCODER_PREFIX)}
    what = "encoder" if part == "encoder" else "network"
    embed = ENCODER_PREFIX + "patch_embed.proj.weight"
    if embed in source and embed in target and source[embed].shape[1] != target[embed].shape[1]:
        logger.info(f"{path}: adapting the patch embedding from {source[embed].shape[1]} to "
                    f"{target[embed].shape[1]} input channels")
        source[embed] = adapt_in_channels(source[embed], target[embed].shape[1])
    missing = sorted(k for k in target if k not in source)
    mismatched = sorted(k for k in target if k in source and source[k].shape != target[k].shape)
    loadable = {k: source[k] for k in target if k in source and k not in mismatched}
    unused = sorted(k for k in source if k not in target)
    summary = f"loaded {len(loadable)} of {len(target)} {what} tensors from {path} ({fmt})"
    details = "; ".join(f"{what}: {names[:10]}{' ...' if len(names) > 10 else ''}" for what, names in
                        (("missing", missing), ("shape mismatch", mismatched)) if names)
    if len(loadable) < min_fraction * len(target):
        raise WeightsError(f"{path}: only {len(loadable)} of {len(target)} {what} tensors match ({fmt} format), "
                         f"below the required {min_fraction:.0%}; {details}")
    network.load_state_dict(loadable, strict=False)
    logger.info(summary + (f"; skipped {details}" if details else ""))
    if unused:
        logger.info(f"{path}: {len(unused)} tensors not used by the network, e.g. {unused[:5]}")
    return len(loadable)


def load_encoder(network: torch.nn.Module, path: str, fmt: str = "auto", min_fraction: float = 1.0) -> int:
    """``load_pretrained`` of the encoder only (``swinViT.*``), all of it by default."""
    return load_pretrained(network, path, fmt=fmt, part="encoder", min_fraction=min_fraction)


def patch_merging(path: str = "", fmt: str = "auto", choice: str = "auto"):
    """The ``downsample`` argument of ``SwinUNETR`` / ``SSLHead`` for weights at ``path``.

    ``choice``: ``"merging"`` (MONAI's current order), ``"legacy"`` (pre-1.5 order, see
    ``scripts.legacy_merging``) or ``"auto"``: legacy for the formats released before MONAI 1.5
    (``research``, ``research_btcv``, ``monai_ssl``), current otherwise and when there is no file.
    A flat state_dict cannot tell when it was trained: set ``"legacy"`` for the model zoo's 2022
    ``model.pt`` and for bundle files fine-tuned with legacy merging.
    """
    from scripts.legacy_merging import LegacyPatchMerging

    if choice not in ("auto", "merging", "legacy"):
        raise ValueError(f"patch_merging must be 'auto', 'merging' or 'legacy', got {choice!r}")
    if choice == "auto":
        # no file (yet): the workflow reports it where it loads weights; the network can still be built
        choice = "legacy" if path and os.path.isfile(path) and file_format(path, fmt) in LEGACY_FORMATS else "merging"
    if choice == "legacy":
        logger.info(f"using MONAI's pre-1.5 3-D patch merging order{f' for {path}' if path else ''}")
        return LegacyPatchMerging
    return "merging"

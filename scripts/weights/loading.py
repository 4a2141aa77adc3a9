"""Load pre-trained Swin weights of any layout (``scripts.weights.formats``) into a network, and refuse to
load them silently wrong: every target tensor must match unless told otherwise, and the patch-merging order
the weights were trained with is restored.
"""

from __future__ import annotations

import hashlib
import logging
import os

import torch
import yaml

from scripts.distributed import unwrap_model
from scripts.options import choice
from scripts.weights.formats import (
    ENCODER_PREFIX,
    LEGACY_FORMATS,
    WeightsError,
    read_weights,
    to_swinunetr_names,
)
from scripts.weights.record import check_against

logger = logging.getLogger(__name__)


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


def load_pretrained(
    network: torch.nn.Module,
    path: str,
    fmt: str = "auto",
    part: str = "encoder",
    min_fraction: float = 1.0,
    expect: dict | None = None,
) -> int:
    """Load the weights at ``path`` into ``network`` (a ``SwinUNETR`` or ``SSLHead``); returns the count loaded.

    Args:
        fmt: one of ``FORMATS``; ``"auto"`` recognises it from the keys.
        part: ``"encoder"`` (the ``swinViT.*`` tensors) or ``"all"`` (every tensor of the network,
            e.g. to continue from a fine-tuned Swin UNETR).
        min_fraction: fail unless at least this fraction of the target tensors is loaded (default:
            all of them), listing the ones missing or of another shape, rather than training on
            random weights without notice.
        expect: the run's data settings (``spacing``, ``orientation``, ``intensity``, ``modality``), compared
            with what the file records (``scripts.weights.record.check_against``): a network that does not
            fit stops in one line, data settings that differ warn.

    Logs ``loaded N of M encoder|network tensors from <path> (<format>)`` and the names of skipped tensors.
    """
    choice("pretrained_part", part, ("encoder", "all"))
    network = unwrap_model(network)
    tensors, fmt, record = read_weights(path, fmt)
    check_against(path, record, network, part, expect)
    source = to_swinunetr_names(tensors, fmt)
    target = {k: v for k, v in network.state_dict().items() if part == "all" or k.startswith(ENCODER_PREFIX)}
    what = "encoder" if part == "encoder" else "network"
    embed = ENCODER_PREFIX + "patch_embed.proj.weight"
    if embed in source and embed in target and source[embed].shape[1] != target[embed].shape[1]:
        logger.info(
            f"{path}: adapting the patch embedding from {source[embed].shape[1]} to "
            f"{target[embed].shape[1]} input channels"
        )
        source[embed] = adapt_in_channels(source[embed], target[embed].shape[1])
    missing = sorted(k for k in target if k not in source)
    mismatched = sorted(k for k in target if k in source and source[k].shape != target[k].shape)
    loadable = {k: source[k] for k in target if k in source and k not in mismatched}
    unused = sorted(k for k in source if k not in target)
    summary = f"loaded {len(loadable)} of {len(target)} {what} tensors from {path} ({fmt})"
    details = "; ".join(
        f"{what}: {names[:10]}{' ...' if len(names) > 10 else ''}"
        for what, names in (("missing", missing), ("shape mismatch", mismatched))
        if names
    )
    if len(loadable) < min_fraction * len(target):
        raise WeightsError(
            f"{path}: only {len(loadable)} of {len(target)} {what} tensors match ({fmt} format), "
            f"below the required {min_fraction:.0%}{_window_hint(source, target)}; {details}"
        )
    network.load_state_dict(loadable, strict=False)
    logger.info(summary + (f"; skipped {details}" if details else ""))
    if unused:
        logger.info(f"{path}: {len(unused)} tensors not used by the network, e.g. {unused[:5]}")
    return len(loadable)


def _window_hint(source: dict, target: dict) -> str:
    """Name the Swin window of the weights when it differs from the network's: the relative-position
    tables hold (2w - 1)^3 rows for window w, the only tensors a different window changes."""
    table = next((k for k in target if k.endswith("relative_position_bias_table") and k in source), None)
    if table is None or source[table].shape == target[table].shape:
        return ""

    def window(rows: int) -> int:
        return (round(rows ** (1 / 3)) + 1) // 2

    theirs, ours = window(source[table].shape[0]), window(target[table].shape[0])
    return f" (the weights use Swin window {theirs}, the network {ours}: set --window_size {theirs})"


def load_encoder(network: torch.nn.Module, path: str, fmt: str = "auto", min_fraction: float = 1.0) -> int:
    """``load_pretrained`` of the encoder only (``swinViT.*``), all of it by default."""
    return load_pretrained(network, path, fmt=fmt, part="encoder", min_fraction=min_fraction)


LARGE_FILES = "large_files.yml"


def listed_legacy_file(path: str) -> str | None:
    """The ``large_files.yml`` entry (its ``path``) that the weight file at ``path`` is, byte for byte, when the
    bundle lists that entry under ``legacy_patch_merging``; None otherwise.

    The list is next to ``models/`` (the bundle root); a file is that entry when it sits at the entry's path and
    has its ``hash_val``. A file trained further (another hash) is not recognised, as it should not be: how it
    was trained decides its merging order.
    """
    path = os.path.abspath(path)
    root = os.path.dirname(os.path.dirname(path))
    listing = os.path.join(root, LARGE_FILES)
    if not os.path.isfile(listing) or not os.path.isfile(path):
        return None
    with open(listing) as f:
        listed = yaml.safe_load(f) or {}
    legacy = set(listed.get("legacy_patch_merging") or [])
    for entry in listed.get("large_files") or []:
        name = entry.get("path", "")
        if name not in legacy or os.path.abspath(os.path.join(root, name)) != path or not entry.get("hash_val"):
            continue
        digest = hashlib.new(entry.get("hash_type") or "md5")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
        if digest.hexdigest() == str(entry["hash_val"]).lower():
            return name
    return None


def trained_merging_order(path: str, fmt: str = "auto") -> tuple[str, str]:
    """The patch-merging order the weights at ``path`` were trained with, and why: ``("legacy" | "merging",
    reason)``. In order of precedence: the order the file records (every file this bundle writes:
    ``scripts.weights.record``); legacy for the formats released before MONAI 1.5 (``research``,
    ``research_btcv``, ``monai_ssl``) and for a file ``large_files.yml`` lists under ``legacy_patch_merging``
    (recognised by its hash: the model zoo's BTCV ``models/model.pt``); current otherwise and when there is no
    file (the workflow reports a missing file where it loads weights; the network can still be built)."""
    if not path or not os.path.isfile(path):
        return "merging", "no weight file"
    _, found, record = read_weights(path, fmt)
    recorded = ((record or {}).get("network") or {}).get("patch_merging")
    if recorded in ("merging", "legacy"):
        return recorded, "recorded in the file"
    if found in LEGACY_FORMATS:
        return "legacy", f"the {found} layout was released before MONAI 1.5"
    if listed := listed_legacy_file(path):
        return "legacy", f"the {listed} listed in {LARGE_FILES}"
    return "merging", "nothing says otherwise: MONAI's current order"


def patch_merging(path: str = "", fmt: str = "auto", order: str = "auto"):
    """The ``downsample`` argument of ``SwinUNETR`` / ``SSLHead`` for weights at ``path``.

    ``order``: ``"merging"`` (MONAI's current order), ``"legacy"`` (pre-1.5 order, see
    ``scripts.weights.legacy_merging``) or ``"auto"``: the order the weights were trained with
    (``trained_merging_order``).
    """
    from scripts.weights.legacy_merging import LegacyPatchMerging

    order = choice("patch_merging", order, ("auto", "merging", "legacy"))
    reason = ""
    if order == "auto":
        order, why = trained_merging_order(path, fmt)
        reason = f" ({why})"
    if order == "legacy":
        logger.info(f"using MONAI's pre-1.5 3-D patch merging order{f' for {path}' if path else ''}{reason}")
        return LegacyPatchMerging
    return "merging"

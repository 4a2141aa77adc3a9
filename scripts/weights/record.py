"""What a weight file says about how it was made: network sizes, patch-merging order, data settings, provenance.

The record rides in the state_dict's ``_metadata`` table, which PyTorch already saves with every state_dict
(per-module versions) and which ``load_state_dict`` reads only by module name. So a file with a record is
still a plain state_dict: it loads with ``strict=True`` in MONAI Label and the model-zoo tools, and with
``torch.load(weights_only=True)``.

Record fields (plain values only):

- ``kind``: ``"model"`` (a whole network) or ``"encoder"`` (``swinViT.*`` only);
- ``bundle``: name and version of the bundle that wrote it;
- ``network``: ``feature_size``, ``window_size``, ``depths``, ``num_heads``, ``in_channels``, ``out_channels``
  and ``patch_merging`` (``"merging"``: MONAI's current order, ``"legacy"``: the pre-1.5 order), read from the
  network itself;
- ``data``: ``task``, ``modality``, ``channels``, ``class_names``, ``intensity``, ``spacing``, ``orientation``;
- ``source``: the weights it started from (path, sha256, their own record's kind / task / merging), or None;
- ``run``: the ``output_dir`` of the run that wrote it (its run family) and the time;
- ``progress``: epoch, iteration and the validation metrics when it was saved.

This module describes and checks records; ``scripts.weights.writing`` attaches them to the files a run writes,
``scripts.weights.formats.record_of`` reads them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import torch

from scripts.atomic_files import BUNDLE_ROOT
from scripts.distributed import unwrap_model
from scripts.weights.formats import RECORD_KEY, WeightsError

logger = logging.getLogger(__name__)

RECORD_VERSION = 1


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def with_record(tensors: dict, record: dict) -> dict:
    """``tensors`` as a state_dict that carries ``record`` (for files written outside a network's state_dict)."""
    from collections import OrderedDict

    out = OrderedDict(tensors)
    out._metadata = OrderedDict({RECORD_KEY: record})
    return out


def _encoder(module: torch.nn.Module):
    module = unwrap_model(module)
    swin = getattr(module, "swinViT", None)
    return getattr(swin, "swinViT", swin)  # SSLHead holds a SwinUNETR whose encoder is swinViT.swinViT


def merging_order(module: torch.nn.Module) -> str:
    """``"legacy"`` when the network's patch merging is MONAI's pre-1.5 order, else ``"merging"``."""
    from scripts.weights.legacy_merging import LegacyPatchMerging

    legacy = any(isinstance(m, LegacyPatchMerging) for m in unwrap_model(module).modules())
    return "legacy" if legacy else "merging"


def network_settings(module: torch.nn.Module) -> dict:
    """The sizes that decide whether weights fit a network, read from the network itself."""
    encoder = _encoder(module)
    if encoder is None:
        return {"patch_merging": merging_order(module)}
    layers = [getattr(encoder, f"layers{i}")[0] for i in range(1, encoder.num_layers + 1)]
    out = getattr(getattr(unwrap_model(module), "out", None), "conv", None)
    out = getattr(out, "conv", out)
    return {
        "feature_size": int(encoder.embed_dim),
        "window_size": int(encoder.window_size[0]),
        "depths": [len(layer.blocks) for layer in layers],
        "num_heads": [int(layer.blocks[0].attn.num_heads) for layer in layers],
        "in_channels": int(encoder.patch_embed.proj.weight.shape[1]),
        "out_channels": int(out.weight.shape[0]) if out is not None else None,
        "patch_merging": merging_order(module),
    }


def inferred_network(tensors: dict) -> dict:
    """What the tensors of a file (``SwinUNETR`` names) tell about its network, for files without a record."""
    prefix = "swinViT."
    embed = tensors.get(prefix + "patch_embed.proj.weight")
    out = tensors.get("out.conv.conv.weight")
    depths, heads, window = [], [], None
    for i in range(1, 5):
        blocks = {k.split(".")[4] for k in tensors if k.startswith(f"{prefix}layers{i}.0.blocks.")}
        if not blocks:
            break
        depths.append(len(blocks))
        table = tensors.get(f"{prefix}layers{i}.0.blocks.0.attn.relative_position_bias_table")
        if table is not None:
            heads.append(int(table.shape[1]))
            window = window or (round(table.shape[0] ** (1 / 3)) + 1) // 2  # (2w - 1)^3 rows
    return {
        "feature_size": int(embed.shape[0]) if embed is not None else None,
        "window_size": window,
        "depths": depths or None,
        "num_heads": heads or None,
        "in_channels": int(embed.shape[1]) if embed is not None else None,
        "out_channels": int(out.shape[0]) if out is not None else None,
    }


def intensity_settings(transform) -> dict:
    """How images were scaled, from the config's ``intensity`` transform (CT window or z-score)."""
    scaler = getattr(transform, "scaler", None)
    if scaler is not None:  # ScaleIntensityRanged
        return {
            "transform": type(transform).__name__,
            **{k: getattr(scaler, k, None) for k in ("a_min", "a_max", "b_min", "b_max", "clip")},
        }
    normalizer = getattr(transform, "normalizer", None)
    if normalizer is not None:  # NormalizeIntensityd
        return {
            "transform": type(transform).__name__,
            **{k: getattr(normalizer, k, None) for k in ("nonzero", "channel_wise")},
        }
    return {"transform": type(transform).__name__}


def plain_values(value):
    """JSON-like copy: tuples to lists, numbers to Python numbers, anything else to its string."""
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def bundle_identity(bundle_root: str = BUNDLE_ROOT) -> dict:
    try:
        with open(os.path.join(bundle_root, "configs", "metadata.json")) as f:
            meta = json.load(f)
        return {"name": meta.get("name"), "version": meta.get("version")}
    except (OSError, ValueError):
        return {"name": None, "version": None}


BREAKING = {
    "feature_size": "feature_size",
    "window_size": "window_size",
    "depths": "network_def#depths",
    "num_heads": "network_def#num_heads",
    "in_channels": "in_channels",
    "out_channels": "out_channels",
    "patch_merging": "patch_merging",
}
# data settings that only degrade the result when they differ, and the id that sets each
DEGRADING = {"spacing": "pixdim", "orientation": "orientation", "intensity": "intensity", "modality": "modality"}


def check_against(path: str, record: dict | None, network, part: str = "all", expect: dict | None = None) -> None:
    """Stop in one line when the weights' recorded network differs from ``network`` in a way that breaks it; warn
    when the data settings in ``expect`` differ from the recorded ones (the model still runs, but worse).

    ``part="encoder"`` checks what an encoder hand-over needs: the input channels are adapted and the
    intensity scaling and modality may differ by design (the paper pre-trains on HU [-1000, 1000] and
    fine-tunes on [-175, 250]), so only sizes, merging order, spacing and orientation are compared.
    """
    if not record:
        return
    theirs, ours = record.get("network") or {}, network_settings(network)
    skip = {"in_channels", "out_channels"} if part == "encoder" else set()
    wrong = [
        f"{name} {theirs[name]} there, {ours[name]} here (--{BREAKING[name]} {json.dumps(theirs[name])})"
        for name in BREAKING
        if name not in skip and theirs.get(name) is not None and ours.get(name) is not None
        if plain_values(theirs[name]) != plain_values(ours[name])
    ]
    if wrong:
        raise WeightsError(f"{path}: recorded network differs from this one: {'; '.join(wrong)}")
    data, expect = record.get("data") or {}, dict(expect or {})
    if "intensity" in expect and not isinstance(expect["intensity"], dict):
        expect["intensity"] = intensity_settings(expect["intensity"])
    names = ("spacing", "orientation") if part == "encoder" else tuple(DEGRADING)
    for name in names:
        if name in data and name in expect and plain_values(data[name]) != plain_values(expect[name]):
            logger.warning(
                f"{path}: trained with {name} {json.dumps(data[name])}, this run uses "
                f"{json.dumps(plain_values(expect[name]))} (--{DEGRADING[name]}): the results may be worse"
            )

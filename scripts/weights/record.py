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
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os

import torch

from scripts.distributed import unwrap_model

logger = logging.getLogger(__name__)

RECORD_KEY = "swin_ssl_bundle.record"  # a key of state_dict._metadata that names no module
RECORD_VERSION = 1


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


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


def _plain(value):
    """JSON-like copy: tuples to lists, numbers to Python numbers, anything else to its string."""
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def source_of(path: str) -> dict | None:
    """The provenance entry of the weights a run starts from (path, sha256, what their record says)."""
    if not path or not os.path.isfile(path):
        return None
    from scripts.weights.formats import WeightsError, read_weights
    from scripts.weights.loading import patch_merging

    try:
        _, fmt, theirs = read_weights(path)
        order = "merging" if patch_merging(path) == "merging" else "legacy"
    except WeightsError:
        fmt, theirs, order = None, None, None
    theirs = theirs or {}
    entry = {
        "path": os.path.abspath(path),
        "sha256": sha256(path),
        "format": fmt,
        "kind": theirs.get("kind"),
        "bundle": theirs.get("bundle"),
        "run": theirs.get("run"),
        "task": (theirs.get("data") or {}).get("task"),
        "patch_merging": order,
    }
    return {k: v for k, v in entry.items() if v is not None}


BUNDLE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def bundle_identity(bundle_root: str = BUNDLE_ROOT) -> dict:
    try:
        with open(os.path.join(bundle_root, "configs", "metadata.json")) as f:
            meta = json.load(f)
        return {"name": meta.get("name"), "version": meta.get("version")}
    except (OSError, ValueError):
        return {"name": None, "version": None}


class WeightsRecord:
    """Makes every state_dict of ``network`` carry its record; an ignite handler that adds the progress.

    Args:
        network: the module whose state_dict is saved (a ``SwinUNETR``, an ``SSLHead``, or a ``ModuleDict``
            holding ``swinViT``).
        data: the data settings (``task``, ``modality``, ``channels``, ``class_names``, ``intensity`` (the
            transform or its settings), ``spacing``, ``orientation``).
        output_dir: the run's output folder: files recording the same one belong to this run family.
        bundle_root: where ``configs/metadata.json`` gives the bundle's name and version.
        source: the file the run starts from (``--pretrained_encoder``), or "".
        kind: ``"model"`` or ``"encoder"``.
        targets: the weight files the run writes; attached to the trainer, it refuses to start when one exists
            and belongs to another run family, unless ``overwrite`` (``refuse_overwrite``).
    """

    def __init__(
        self,
        network,
        data: dict,
        output_dir: str,
        bundle_root: str = ".",
        source: str = "",
        kind: str = "model",
        targets=(),
        overwrite=False,
    ):
        from scripts.options import flag

        self.network = unwrap_model(network)
        self.targets, self.overwrite = list(targets), flag("overwrite", overwrite)
        data = {k: v for k, v in data.items() if not k.startswith("_")}  # not the config's _desc_
        if "intensity" in data and not isinstance(data["intensity"], dict):
            data["intensity"] = intensity_settings(data["intensity"])
        self.record = {
            "version": RECORD_VERSION,
            "kind": kind,
            "bundle": bundle_identity(bundle_root),
            "data": _plain(data),
            "source": source_of(source),
            "run": {"output_dir": os.path.abspath(output_dir)},
            "progress": {},
        }
        self.engines = []
        self.network.register_state_dict_post_hook(lambda *args: self._add_record(*args))  # torch tags the hook

    def current(self) -> dict:
        """The record as it would be saved now."""
        record = dict(self.record, network=network_settings(self.network))
        record["run"] = dict(record["run"], saved=datetime.datetime.now().isoformat(timespec="seconds"))
        progress = {}
        for engine in self.engines:
            state = engine.state
            if "epoch" not in progress and _is_trainer(engine):
                progress.update(epoch=state.epoch, iteration=state.iteration)
            metrics = {k: float(v) for k, v in (state.metrics or {}).items() if isinstance(v, (int, float))}
            if metrics:
                progress["metrics"] = metrics
        record["progress"] = progress
        return record

    def _add_record(self, module, state_dict, prefix, local_metadata) -> None:
        if not prefix:  # only the state_dict of the whole network (a submodule's own state_dict is not a file)
            state_dict._metadata[RECORD_KEY] = self.current()

    def attach(self, engine) -> None:
        """Ignite handler protocol: the trainer gives epoch and iteration, the evaluator the metrics.

        On the trainer, before anything runs: a ``CheckpointLoader`` attached before this handler (MONAI Label
        continues from ``models/model.pt`` that way) is a starting point too: the network takes the merging
        order its file records, and the run may replace that file.
        """
        self.engines.append(engine)
        if not _is_trainer(engine):
            return
        starts = [self.record["source"]["path"]] if self.record["source"] else []
        for path in checkpoint_loader_paths(engine):
            starts.append(path)
            follow_merging_order(self.network, path)
            self.record["source"] = self.record["source"] or source_of(path)
        refuse_overwrite(self.targets, self.record["run"]["output_dir"], starts, self.overwrite)


def converted_record(src: str, tensors: dict, kind: str = "encoder") -> dict:
    """The record of a file converted from ``src`` (``scripts.tools.convert_weights``): the network as inferred
    from ``tensors`` (``SwinUNETR`` names) with the merging order ``src`` was trained with, ``src`` as source."""
    from scripts.weights.loading import patch_merging

    order = "merging" if patch_merging(src) == "merging" else "legacy"
    return {
        "version": RECORD_VERSION,
        "kind": kind,
        "bundle": bundle_identity(),
        "network": {**inferred_network(tensors), "out_channels": None, "patch_merging": order},
        "data": {},
        "source": source_of(src),
        "run": {"converted": datetime.datetime.now().isoformat(timespec="seconds")},
        "progress": {},
    }


class RecordHandler:
    """A ``WeightsRecord`` as an entry of a config's handler list, where MONAI's workflow checks and MONAI Label
    read every entry as a dict with a ``_target_`` (a bare ``"@weights_record"`` breaks them)."""

    def __init__(self, record: WeightsRecord):
        self.record = record

    def attach(self, engine) -> None:
        self.record.attach(engine)


def _is_trainer(engine) -> bool:
    from monai.engines import Trainer

    return isinstance(engine, Trainer)  # its optimizer attribute is set only after the handlers are attached


def checkpoint_loader_paths(engine) -> list:
    """The files that ``CheckpointLoader`` handlers attached to ``engine`` so far will load when it starts."""
    from ignite.engine import Events
    from monai.handlers import CheckpointLoader

    handlers = [entry[0] for entry in engine._event_handlers.get(Events.STARTED, [])]
    loaders = [getattr(h, "__self__", h) for h in handlers]
    return [loader.load_path for loader in loaders if isinstance(loader, CheckpointLoader) and loader.load_path]


def set_merging_order(network, order: str) -> None:
    """Switch every 3-D patch merging of ``network`` to ``order``; the two classes hold the same parameters."""
    from monai.networks.nets.swin_unetr import PatchMerging, PatchMergingV2

    from scripts.weights.legacy_merging import LegacyPatchMerging

    cls = LegacyPatchMerging if order == "legacy" else PatchMerging
    for module in unwrap_model(network).modules():
        if isinstance(module, PatchMergingV2):
            module.__class__ = cls


def follow_merging_order(network, path: str) -> None:
    """Give ``network`` the merging order of the weights at ``path`` (their record, format or listing)."""
    from scripts.weights.loading import patch_merging

    if not os.path.isfile(path):
        return
    order = "merging" if patch_merging(path) == "merging" else "legacy"
    if order != merging_order(network):
        logger.info(f"{path}: trained with the {order} patch-merging order; the network follows it")
        set_merging_order(network, order)


def refuse_overwrite(targets, output_dir: str, starts=(), overwrite: bool = False) -> None:
    """Stop in one line when a weight file in ``targets`` exists and this run may not replace it.

    A run may replace a file that its own run family wrote (the file records the same ``output_dir``: a rerun
    or a resumed run) and a file it starts from (fine-tuning a model further, as MONAI Label does); anything
    else (a downloaded model-zoo model, another task's or another run's model) only with ``overwrite``.
    """
    from scripts.errors import ConfigError
    from scripts.weights.formats import WeightsError, read_checkpoint

    started = {os.path.realpath(p) for p in starts if p}
    for target in targets:
        if overwrite or not os.path.isfile(target) or os.path.realpath(target) in started:
            continue
        try:
            record = record_of(read_checkpoint(target, mmap=True)) or {}
        except WeightsError:
            record = {}
        owner = (record.get("run") or {}).get("output_dir")
        if owner == os.path.abspath(output_dir):
            continue
        task = (record.get("data") or {}).get("task")
        what = (
            f"was written by the run in {owner}{f' ({task})' if task else ''}"
            if owner
            else "was not written by this bundle's training (a downloaded or copied model?)"
        )
        raise ConfigError(
            f"{target} exists and {what}: give --overwrite true to replace it, or --ckpt_dir <folder> to write "
            f"this run's weights elsewhere"
        )


# network settings that must match, and the id that sets each
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
    from scripts.weights.formats import WeightsError

    if not record:
        return
    theirs, ours = record.get("network") or {}, network_settings(network)
    skip = {"in_channels", "out_channels"} if part == "encoder" else set()
    wrong = [
        f"{name} {theirs[name]} there, {ours[name]} here (--{BREAKING[name]} {json.dumps(theirs[name])})"
        for name in BREAKING
        if name not in skip and theirs.get(name) is not None and ours.get(name) is not None
        if _plain(theirs[name]) != _plain(ours[name])
    ]
    if wrong:
        raise WeightsError(f"{path}: recorded network differs from this one: {'; '.join(wrong)}")
    data, expect = record.get("data") or {}, dict(expect or {})
    if "intensity" in expect and not isinstance(expect["intensity"], dict):
        expect["intensity"] = intensity_settings(expect["intensity"])
    names = ("spacing", "orientation") if part == "encoder" else tuple(DEGRADING)
    for name in names:
        if name in data and name in expect and _plain(data[name]) != _plain(expect[name]):
            logger.warning(
                f"{path}: trained with {name} {json.dumps(data[name])}, this run uses "
                f"{json.dumps(_plain(expect[name]))} (--{DEGRADING[name]}): the results may be worse"
            )

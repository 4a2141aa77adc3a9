"""Weight files a run writes: the record attached to every state_dict of the network it saves
(``scripts.weights.record``), the progress added as it trains, and which existing files it may replace.
"""

from __future__ import annotations

import datetime
import logging
import os

from scripts.distributed import unwrap_model
from scripts.weights.formats import WeightsError, read_checkpoint, read_weights, record_of
from scripts.weights.loading import trained_merging_order
from scripts.weights.record import (
    RECORD_KEY,
    RECORD_VERSION,
    bundle_identity,
    inferred_network,
    intensity_settings,
    merging_order,
    network_settings,
    plain_values,
    sha256,
)

logger = logging.getLogger(__name__)


def source_of(path: str) -> dict | None:
    """The provenance entry of the weights a run starts from (path, sha256, what their record says)."""
    if not path or not os.path.isfile(path):
        return None
    try:
        _, fmt, theirs = read_weights(path)
        order = trained_merging_order(path, fmt)[0]
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
            "data": plain_values(data),
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
    order = trained_merging_order(src)[0]
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
    if not os.path.isfile(path):
        return
    order = trained_merging_order(path)[0]
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

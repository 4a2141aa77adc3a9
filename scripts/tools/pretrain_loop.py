"""The pre-training loop end to end against its step alone: how often does the device wait for data?

The bundle's own trainer (``configs/pretrain.json``: reading and caching the volumes, random crops in the data
loader, views and proxy tasks in the step on the device, the handlers) runs ``warmup + iterations`` iterations.
Each timed iteration is split into waiting for the loader's batch, the step (``iteration_update``, CUDA
synchronised at both ends) and the rest (handlers). Then the same step runs ``iterations`` times on the last batch,
without the loader: the network-only rate; and the loader alone yields ``iterations`` batches, without steps (the
rate the data side can supply, whatever the device). Reported per loader:

- ``busy_fraction``: the steps' share of the loop's wall time (1.0: the device never waits);
- ``throughput_ratio``: the loop's iterations per second over the network-only rate;
- ``loader_only_s``: seconds per batch from the loader alone (restarting it at the end of each pass, as the
  trainer does).

Loaders: ``process`` is the config's PyTorch ``DataLoader`` (worker processes); ``thread`` MONAI's
``ThreadDataLoader`` with worker threads (no process start-up or pickling; one prefetched batch).
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
from ignite.engine import Events

from scripts.options import choice

logger = logging.getLogger(__name__)

_ROOT = Path(__file__).resolve().parents[2]
LOADERS = ("process", "thread")


def loader_overrides(loader: str) -> dict:
    """Config overrides selecting ``loader`` (see the module docstring)."""
    choice("loader", loader, LOADERS)
    if loader == "thread":
        return {"train#dataloader#_target_": "ThreadDataLoader", "train#dataloader#use_thread_workers": True}
    return {}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    overrides: dict | None = None,
    iterations: int = 10,
    warmup: int = 2,
    loader: str = "process",
    configs=("pretrain.json",),
) -> dict:
    """Run the configs' pre-training (with ``overrides``; output in a temporary folder) and time it; returns the
    figures described in the module docstring, in seconds per iteration."""
    from monai.bundle import ConfigParser

    if iterations < 1 or warmup < 0:
        raise ValueError(f"iterations must be at least 1 and warmup at least 0, got {iterations} and {warmup}")
    total = warmup + iterations
    parser = ConfigParser()
    parser.read_config([str(_ROOT / "configs" / c) for c in configs])
    with tempfile.TemporaryDirectory(prefix="pretrain_loop_") as out:
        # one epoch, no checkpoint, validation or image snapshot inside the timed iterations; nothing written
        # beside the bundle's own weights
        parser.update({"bundle_root": str(_ROOT), "output_dir": out, "ckpt_dir": out, "use_tensorboard": False})
        parser.update({"max_iterations": total, "ckpt_interval": total, "val_interval": total + 1})
        parser.update({"image_interval": total + 1, **loader_overrides(loader), **(overrides or {})})
        start = time.perf_counter()
        parser.get_parsed_content("initialize")
        try:
            trainer = parser.get_parsed_content("train#trainer")
            setup = time.perf_counter() - start
            figures = _timed_run(trainer, warmup, iterations)
        finally:
            parser.get_parsed_content("finalize")
    workers = getattr(trainer.data_loader, "num_workers", 0)
    figures.update(loader=loader, num_workers=workers, setup_s=setup, device=str(trainer.state.device))
    return figures


def _timed_run(trainer, warmup: int, iterations: int) -> dict:
    device = trainer.state.device
    marks: dict = {"fetch": [], "got": [], "steps": [], "done": []}
    held: dict = {}
    step = trainer._process_function  # ignite calls this attribute: wrapping it times exactly the step

    def timed_step(engine, batch):
        _sync(device)
        start = time.perf_counter()
        output = step(engine, batch)
        _sync(device)
        marks["steps"].append(time.perf_counter() - start)
        return output

    def hold(engine):
        marks["got"].append(time.perf_counter())
        held["batch"] = engine.state.batch

    trainer._process_function = timed_step
    trainer.add_event_handler(Events.GET_BATCH_STARTED, lambda e: marks["fetch"].append(time.perf_counter()))
    trainer.add_event_handler(Events.GET_BATCH_COMPLETED, hold)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: marks["done"].append(time.perf_counter()))
    trainer.run()
    done = len(marks["done"])
    if done != warmup + iterations:
        raise RuntimeError(f"the pre-training loop ran {done} iterations, expected {warmup + iterations}")
    timed = slice(warmup, None)
    wall = marks["done"][-1] - marks["fetch"][warmup]
    waits = [g - f for f, g in zip(marks["fetch"][timed], marks["got"][timed])]
    steps = marks["steps"][timed]
    alone = []
    for _ in range(iterations):  # the same step on one batch held on the host: no loader
        _sync(device)
        start = time.perf_counter()
        step(trainer, held["batch"])
        _sync(device)
        alone.append(time.perf_counter() - start)
    loader_s = _loader_alone(trainer.data_loader, iterations, warmup)
    loop_s = wall / iterations
    network_s = statistics.fmean(alone)
    logger.info(f"pre-training loop: {loop_s:.3f} s per iteration, step alone {network_s:.3f} s")
    return {
        "iterations": iterations,
        "warmup": warmup,
        "loop_s": loop_s,
        "step_s": statistics.fmean(steps),
        "data_wait_s": statistics.fmean(waits),
        "other_s": loop_s - statistics.fmean(steps) - statistics.fmean(waits),
        "busy_fraction": sum(steps) / wall,
        "network_only_s": network_s,
        "throughput_ratio": network_s / loop_s,
        "loader_only_s": loader_s,
    }


def _loader_alone(data_loader, iterations: int, warmup: int) -> float:
    def batches():
        while True:
            yield from data_loader

    stream = batches()
    for _ in range(warmup):
        next(stream)
    start = time.perf_counter()
    for _ in range(iterations):
        next(stream)
    return (time.perf_counter() - start) / iterations

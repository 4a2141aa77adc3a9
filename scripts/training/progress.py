"""How far a training run is and when it will end: logged for runs that take hours to days."""

from __future__ import annotations

import logging
import time

from ignite.engine import Engine, Events

from scripts.distributed import rank

logger = logging.getLogger(__name__)


def warn_if_paper_size_on_cpu(device, feature_size: int, roi_size, cpu_overlay: str) -> bool:
    # cpu_overlay: the overlay's name in configs/, e.g. "small"
    """Warn once when a workflow starts on a CPU at the paper's network size (feature_size 48 or more), where each
    96^3 step takes tens of seconds (docs/measurements.md), and name the overlay that makes it CPU-sized.
    Returns whether it warned."""
    import torch

    if torch.device(device).type != "cpu" or feature_size < 48:
        return False
    crop = "x".join(str(s) for s in roi_size)
    logger.warning(
        f"feature_size {feature_size} with {crop} crops on the CPU: the paper's size, tens of seconds a step here; "
        f"for a CPU-sized run merge configs/{cpu_overlay}.json after the workflow's config (docs/README.md, Commands)"
    )
    return True


def duration(seconds: float) -> str:
    """``1d 02:03:04`` / ``02:03:04``."""
    seconds = int(round(max(0.0, seconds)))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{days}d " if days else "") + f"{hours:02d}:{minutes:02d}:{secs:02d}"


class EtaLogger:
    """Logs ``iteration i/N (p%), elapsed ..., ETA ...`` every ``interval`` iterations (``None``: at every epoch end).

    The rate is that of this process since its first iteration, so a resumed run does not count the iterations
    it inherited. ``total_iterations`` (default: ``max_epochs * epoch_length``) is for runs stopped at an
    iteration count within an epoch.
    """

    def __init__(self, interval: int | None = None, total_iterations: int | None = None, clock=time.monotonic):
        self.interval = interval
        self.total_iterations = total_iterations
        self.clock = clock
        self._start = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        event = Events.EPOCH_COMPLETED if self.interval is None else Events.ITERATION_COMPLETED(every=self.interval)
        engine.add_event_handler(event, self)

    def started(self, engine: Engine) -> None:
        self._start = (self.clock(), engine.state.iteration)

    def total(self, engine: Engine) -> int:
        if self.total_iterations:
            return int(self.total_iterations)
        return int(engine.state.max_epochs * engine.state.epoch_length)

    def message(self, engine: Engine) -> str:
        start_time, start_iteration = self._start
        done, total = engine.state.iteration, self.total(engine)
        elapsed = self.clock() - start_time
        ran = done - start_iteration
        eta = elapsed / ran * (total - done) if ran > 0 else float("nan")
        return (
            f"iteration {done}/{total} ({100.0 * done / max(total, 1):.1f}%), epoch {engine.state.epoch}, "
            f"elapsed {duration(elapsed)}, ETA {duration(eta) if eta == eta else 'unknown'}"
        )

    def __call__(self, engine: Engine) -> None:
        if rank() == 0 and self._start is not None:
            logger.info(self.message(engine))

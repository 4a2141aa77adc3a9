"""Guards for long runs: stop on a non-finite loss, and write checkpoints atomically.

A run that turns NaN must stop with a non-zero exit and leave the last good checkpoint as it was;
a run killed at any moment (even while writing a checkpoint) must leave only complete files.
"""

from __future__ import annotations

import math

from ignite.engine import Engine, Events
from monai.handlers import CheckpointSaver

from scripts.inputs import ReportedError


class NonFiniteLossError(ReportedError, RuntimeError):
    """The training loss became NaN or infinite."""


class StopOnNonFiniteLoss:
    """Raise ``NonFiniteLossError`` naming the iteration as soon as ``output["loss"]`` is not finite.

    Unlike ignite's ``TerminateOnNan`` (which ends the run normally, exit code 0, after which a final
    checkpoint would store the NaN weights), the run fails and nothing more is saved.
    """

    def __init__(self, loss_key: str = "loss"):
        self.loss_key = loss_key

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        if isinstance(output, (list, tuple)):  # MONAI trainers decollate: every item carries the batch loss
            output = output[0]
        loss = float(output[self.loss_key])
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite loss ({loss}) at iteration {engine.state.iteration} (epoch {engine.state.epoch}): "
                f"training stopped without saving; the last checkpoint holds the last finite weights. "
                f"Lower the learning rate or check the data of this iteration."
            )


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` with atomic writes (temporary file in the same folder, then rename),
    and no final checkpoint after a non-finite loss.

    MONAI turns ignite's atomic writes off only to keep files group-readable, which ignite 0.5 now
    restores itself; a kill during a write then leaves the previous checkpoint and a stray temporary
    file, never a truncated ``checkpoint*.pt``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler._atomic = True

    def exception_raised(self, engine: Engine, e: Exception) -> None:
        if isinstance(e, NonFiniteLossError):
            raise e  # the weights are not finite: keep the last checkpoint as it is
        super().exception_raised(engine, e)

"""Guard for long runs: a run whose loss turns NaN or infinite stops with a non-zero exit, and the last good
checkpoint stays as it was (``scripts.training.checkpoints.AtomicCheckpointSaver`` saves nothing more).
"""

from __future__ import annotations

import math

from ignite.engine import Engine, Events

from scripts.errors import ReportedError


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

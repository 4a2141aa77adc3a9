"""Epochs as blocks of a run: every block starts from its own seed, and iteration-counted runs stop on time.

Pre-training counts iterations, not passes over the data: its trainer's epochs are blocks of
``ckpt_interval`` iterations, at whose ends checkpoints are written and from whose starts a resumed run
continues exactly.
"""

from __future__ import annotations

from ignite.engine import Engine, Events

from scripts.distributed import rank


class ReseedEachEpoch:
    """At every epoch start: reseed all random generators from ``seed + epoch`` and restart the data
    iterator, so the epoch's crops, augmentations and proxy-task draws depend only on the epoch.

    With checkpoints at epoch ends, a resumed run then continues exactly as an uninterrupted one
    would (same data order, crops and masks), which is what makes resumed runs reproducible. Under
    ``torch.distributed`` each rank gets its own seed, so ranks do not draw the same crops and masks.
    """

    def __init__(self, seed: int, dataset=None):
        self.seed, self.dataset = seed, dataset

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine) -> None:
        from monai.data.utils import set_rnd
        from monai.utils import set_determinism

        seed = self.seed + engine.state.epoch + 1_000_003 * rank()
        set_determinism(seed=seed)
        if self.dataset is not None:  # transforms run in this process when num_workers == 0
            set_rnd(self.dataset, seed)
        engine.set_data(engine.data_loader)


class StopAtIteration:
    """End the run normally (final checkpoint included) once ``iteration`` iterations are done, even inside
    an epoch: with epochs of ``epoch_length`` iterations, a run of ``max_iterations`` needs
    ``ceil(max_iterations / epoch_length)`` epochs and stops partway through the last one."""

    def __init__(self, iteration: int):
        if iteration < 1:
            raise ValueError(f"StopAtIteration: iteration must be at least 1, got {iteration}")
        self.iteration = iteration

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(once=self.iteration), self)

    def __call__(self, engine: Engine) -> None:
        engine.terminate()

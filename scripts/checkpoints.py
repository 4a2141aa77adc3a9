"""Full-state checkpoints for resumable training: what to save, and which file to resume from."""

from __future__ import annotations

import glob
import logging
import os

from scripts.distributed import rank

logger = logging.getLogger(__name__)


class BestModelTracker:
    """Checkpointable view of a ``CheckpointSaver``'s best-metric record.

    Saving it with the training state lets a resumed run keep the best score seen so far, instead of
    overwriting ``models/model.pt`` at its first validation whatever the score.
    """

    def __init__(self, saver):
        self.saver = saver

    def state_dict(self) -> dict:
        # MONAI exposes only the loading side publicly; the saving side lives in ignite's Checkpoint.
        return self.saver._key_metric_checkpoint.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.saver.load_state_dict(state)


def full_state(network, optimizer, lr_scheduler, trainer, best_model_saver=None) -> dict:
    """Objects saved in a full-state checkpoint: model, optimizer, scheduler, trainer, AMP scaler."""
    state = {"model": network, "optimizer": optimizer, "lr_scheduler": lr_scheduler, "trainer": trainer}
    if getattr(trainer, "scaler", None) is not None:
        state["scaler"] = trainer.scaler
    if best_model_saver is not None:
        state["best_model"] = BestModelTracker(best_model_saver)
    return state


def latest(checkpoint_dir: str) -> str | None:
    """Path of the most recently written ``checkpoint*.pt`` in ``checkpoint_dir``, or None with a warning."""
    files = glob.glob(os.path.join(checkpoint_dir, "checkpoint*.pt"))
    if not files:
        logger.warning(f"resume requested but no checkpoint*.pt in {checkpoint_dir}: starting from scratch")
        return None
    path = max(files, key=os.path.getmtime)
    logger.info(f"resuming from {path}")
    return path


class ReseedEachEpoch:
    """At every epoch start: reseed all random generators from ``seed + epoch`` and restart the data
    iterator, so the epoch's crops, augmentations and proxy-task draws depend only on the epoch.

    With checkpoints at epoch ends, a resumed run then continues exactly as an uninterrupted one
    would (same data order, crops and masks), which is what makes resumed runs reproducible. Under
    ``torch.distributed`` each rank gets its own seed, so ranks do not draw the same crops and masks.
    """

    def __init__(self, seed: int, dataset=None):
        self.seed, self.dataset = seed, dataset

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine) -> None:
        from monai.data.utils import set_rnd
        from monai.utils import set_determinism

        seed = self.seed + engine.state.epoch + 1_000_003 * rank()
        set_determinism(seed=seed)
        if self.dataset is not None:  # transforms run in this process when num_workers == 0
            set_rnd(self.dataset, seed)
        engine.set_data(engine.data_loader)

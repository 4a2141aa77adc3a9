"""Full-state checkpoints for resumable training: what to save, and which file to resume from."""

from __future__ import annotations

import glob
import logging
import os

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

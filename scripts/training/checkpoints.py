"""Full-state checkpoints for resumable training: what to save, how to write it (atomically), and which file
to resume from. A run killed at any moment, even while writing a checkpoint, leaves only complete files."""

from __future__ import annotations

import glob
import logging
import os

from ignite.engine import Engine
from monai.handlers import CheckpointSaver

from scripts.atomic_files import file_mode
from scripts.training.guards import NonFiniteLossError

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


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` with atomic writes (temporary file in the same folder, then rename),
    and no final checkpoint after a non-finite loss.

    MONAI turns ignite's atomic writes off only to keep files group-readable; here the written file
    gets the mode of the umask (0644 under the usual 022). A kill during a write then leaves the
    previous checkpoint and a stray temporary file, never a truncated ``checkpoint*.pt``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler._atomic = True
                checkpoint.save_handler._save_func = _with_umask_mode(checkpoint.save_handler._save_func)

    def exception_raised(self, engine: Engine, e: Exception) -> None:
        if isinstance(e, NonFiniteLossError):
            raise e  # the weights are not finite: keep the last checkpoint as it is
        super().exception_raised(engine, e)


def _with_umask_mode(save_func):
    """ignite's atomic save, then the umask's file mode (ignite gives 0644 whatever the umask)."""

    def save(checkpoint, path, func):
        save_func(checkpoint, path, func)
        os.chmod(path, file_mode())

    return save

"""Full-state checkpoints for resumable training: what to save, how to write it (atomically), and which file
to resume from. A run killed at any moment, even while writing a checkpoint, leaves only complete files."""

from __future__ import annotations

import glob
import logging
import os

import torch
from ignite.engine import Engine
from monai.handlers import CheckpointSaver

from scripts.atomic_files import file_mode
from scripts.distributed import unwrap_model
from scripts.errors import ReportedError
from scripts.options import choice
from scripts.training.guards import NonFiniteLossError
from scripts.weights.formats import PickledWeightsError, WeightsError, read_checkpoint

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


class ResumeError(ReportedError, RuntimeError):
    """A run cannot continue from its checkpoints; the message says what to do."""


RESUME_CHOICES = (False, True, "auto")


def _progress(path: str, state: dict) -> int | None:
    trainer = state.get("trainer")
    iteration = trainer.get("iteration") if isinstance(trainer, dict) else None
    if not isinstance(iteration, int):
        logger.warning(f"{path}: no trainer progress inside (not a full-state checkpoint of this bundle), skipped")
        return None
    return iteration


def _check_network(path: str, state: dict, network) -> None:
    """Stop in one line when the checkpoint's model does not fit ``network`` (another feature_size, classes...)."""
    model = state.get("model")
    if network is None or not isinstance(model, dict):
        return
    saved = {k.removeprefix("module."): v for k, v in model.items() if isinstance(v, torch.Tensor)}
    wanted = unwrap_model(network).state_dict()
    missing = [k for k in wanted if k not in saved]
    other = [k for k in wanted if k in saved and saved[k].shape != wanted[k].shape]
    if other or missing:
        example = (
            f"{other[0]} is {tuple(saved[other[0]].shape)} there, {tuple(wanted[other[0]].shape)} here"
            if other
            else f"{missing[0]} is missing there"
        )
        raise ResumeError(
            f"{path}: written by another network ({len(other)} tensors of another shape, {len(missing)} missing; "
            f"e.g. {example}): resume with that run's settings (feature_size, out_channels, ...) or use another "
            f"output_dir"
        )


def resume_path(state_dir: str, resume=False, network=None) -> str | None:
    """The full-state checkpoint to continue from, or None to start from scratch.

    ``resume``: ``false`` starts from scratch; ``true`` continues from the ``checkpoint*.pt`` with the most
    progress (the trainer iteration recorded inside, not the file time, which a copy or ``touch``
    changes) and stops with one line when there is none; ``"auto"`` does the same but starts from scratch
    when there is nothing to resume (requeued jobs). Unreadable files (a truncated write) are reported
    and passed over; a file holding pickled objects, or a model that does not fit ``network``, stops
    the run with one line.
    """
    if isinstance(resume, str):  # the command line gives strings: --resume true
        resume = {"true": True, "false": False, "auto": "auto"}.get(resume.strip().lower(), resume)
    choice("resume", resume, RESUME_CHOICES)
    if resume is False:
        return None
    found = []
    for path in sorted(glob.glob(os.path.join(state_dir, "checkpoint*.pt"))):
        try:
            state = read_checkpoint(path, mmap=True)
        except PickledWeightsError as e:
            raise ResumeError(f"{e} Move it out of {state_dir} to resume from the others.") from None
        except WeightsError as e:  # truncated or damaged: the one before it is complete
            logger.warning(f"{e}; resuming from another checkpoint")
            continue
        progress = _progress(path, state)
        if progress is not None:
            found.append((progress, path, state))
    if not found:
        if resume == "auto":
            logger.info(f"no checkpoint to resume in {state_dir}: starting from scratch")
            return None
        raise ResumeError(
            f"--resume true but no complete checkpoint*.pt in {state_dir}: start without --resume, "
            f"or with --resume auto (continues when there is a checkpoint, starts from scratch otherwise)"
        )
    progress, path, state = max(found, key=lambda item: item[0])
    _check_network(path, state, network)
    logger.info(f"resuming from {path} (iteration {progress})")
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

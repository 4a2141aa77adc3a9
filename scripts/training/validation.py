"""Validation during fine-tuning that always leaves a model: with no validation data (MONAI Label with one or
two labelled images splits off none) the final weights become the model instead of validation crashing.
"""

from __future__ import annotations

import logging

import torch
from ignite.engine import Engine, Events

from scripts.atomic_files import atomic_path
from scripts.distributed import rank, unwrap_model

logger = logging.getLogger(__name__)


class ValidationOrFinalModel:
    """Runs ``validator`` every ``interval`` epochs and after the last epoch, when it has data; otherwise, at the end
    of training, writes the network's weights to ``model_path`` as a flat state_dict (what the best-model saver
    writes after a validation), with a warning that nothing was validated.

    The last epoch counts because MONAI Label sets only ``train#trainer#max_epochs`` (50 by default, below the
    default ``val_interval`` 100): a run of any length then validates, and its best model is written.
    """

    def __init__(self, validator, interval: int, network: torch.nn.Module, model_path: str):
        self.validator = validator
        self.interval = max(1, int(interval))
        self.network = network
        self.model_path = model_path
        self.has_data = True

    def attach(self, engine: Engine) -> None:
        self.has_data = len(self.validator.data_loader) > 0
        if not self.has_data:
            logger.warning(
                f"no validation data: nothing is validated, and the weights at the end of training are written "
                f"to {self.model_path}"
            )
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def epoch_completed(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        if self.has_data and (epoch % self.interval == 0 or epoch == engine.state.max_epochs):
            self.validator.run(epoch)

    def completed(self, engine: Engine) -> None:
        if self.has_data or rank() != 0:
            return
        with atomic_path(self.model_path) as tmp:
            torch.save(unwrap_model(self.network).state_dict(), tmp)
        logger.info(f"final weights (epoch {engine.state.epoch}) written to {self.model_path}")

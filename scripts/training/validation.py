"""Validation during fine-tuning that always leaves a model: with no validation data (MONAI Label with one or
two labelled images splits off none) the final weights become the model instead of validation crashing.
"""

from __future__ import annotations

import logging
import os

import torch
from ignite.engine import Engine, Events
from monai.handlers import ValidationHandler

from scripts.atomic_files import atomic_path
from scripts.distributed import rank, unwrap_model

logger = logging.getLogger(__name__)


class ValidationOrFinalModel:
    """MONAI's ``ValidationHandler`` every ``interval`` epochs when the validator has data; otherwise, at the end
    of training, the network's weights written to ``model_path`` as a flat state_dict (what the best-model
    saver writes after a validation), with a warning that nothing was validated.

    ``interval`` is capped at the trainer's ``max_epochs`` so that a run shorter than ``val_interval`` (MONAI
    Label sets only ``train#trainer#max_epochs``) still validates once, at its end, and writes its model.
    """

    def __init__(self, validator, interval: int, network: torch.nn.Module, model_path: str, epoch_level=True):
        self.validator = validator
        self.interval = interval
        self.network = network
        self.model_path = model_path
        self.epoch_level = epoch_level

    def attach(self, engine: Engine) -> None:
        if len(self.validator.data_loader) > 0:
            interval = min(self.interval, engine.state.max_epochs) if self.epoch_level else self.interval
            ValidationHandler(validator=self.validator, interval=max(1, interval), epoch_level=self.epoch_level).attach(
                engine
            )
            return
        logger.warning(
            f"no validation data: nothing is validated, and the weights at the end of training are written to "
            f"{self.model_path}"
        )
        engine.add_event_handler(Events.COMPLETED, self.save_final)

    def save_final(self, engine: Engine) -> None:
        if rank() != 0:
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.model_path)), exist_ok=True)
        with atomic_path(self.model_path) as tmp:
            torch.save(unwrap_model(self.network).state_dict(), tmp)
        logger.info(f"final weights (epoch {engine.state.epoch}) written to {self.model_path}")

"""Fine-tuning options for a pre-trained encoder: its own learning-rate factor, and freezing it for the
first iterations while the randomly initialised decoder warms up."""

from __future__ import annotations

import logging

from torch import nn

from scripts.distributed import unwrap_model
from scripts.weights.formats import ENCODER_PREFIX

logger = logging.getLogger(__name__)


def parameter_groups(network: nn.Module, learning_rate: float, encoder_lr_factor: float = 1.0) -> list[dict]:
    """Optimizer groups: encoder (``swinViT.*``) at ``learning_rate * encoder_lr_factor``, the rest at
    ``learning_rate``. Schedulers scale both groups by the same factor at every step."""
    network = unwrap_model(network)
    encoder = [p for name, p in network.named_parameters() if name.startswith(ENCODER_PREFIX)]
    rest = [p for name, p in network.named_parameters() if not name.startswith(ENCODER_PREFIX)]
    return [{"params": encoder, "lr": learning_rate * encoder_lr_factor}, {"params": rest, "lr": learning_rate}]


class FreezeEncoder:
    """Keep the encoder fixed for the first ``iterations`` training iterations, then train it.

    Frozen parameters get no gradient, so the optimizer (AdamW included) leaves them and their
    weight decay alone. Decided from the trainer's iteration count, so resumed runs agree.
    """

    def __init__(self, network: nn.Module, iterations: int):
        self.parameters = [p for name, p in unwrap_model(network).named_parameters() if name.startswith(ENCODER_PREFIX)]
        if not self.parameters:
            raise ValueError("FreezeEncoder: the network has no swinViT.* parameters")
        self.iterations = iterations
        self.frozen = None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_STARTED, self)

    def __call__(self, engine) -> None:
        frozen = engine.state.iteration <= self.iterations
        if frozen != self.frozen:
            for p in self.parameters:
                p.requires_grad_(not frozen)
                if frozen:
                    p.grad = None
            logger.info(
                f"iteration {engine.state.iteration}: encoder {'frozen' if frozen else 'training'}"
                f"{f' until iteration {self.iterations}' if frozen else ''}"
            )
            self.frozen = frozen

"""Pre-training loss: a1 * CE(rotation) + a2 * NT-Xent(two views) + a3 * L1(reconstruction)."""

from __future__ import annotations

import torch
from monai.losses import ContrastiveLoss
from torch import nn


class SSLLoss(nn.Module):
    """Weighted sum of the three proxy-task losses; ``forward`` returns each term and the total.

    Args:
        rotation_weight, contrastive_weight, reconstruction_weight: a1, a2, a3 (paper: 1, 1, 1).
        temperature: NT-Xent temperature (paper: 0.5).
    """

    def __init__(self, rotation_weight: float = 1.0, contrastive_weight: float = 1.0,
                 reconstruction_weight: float = 1.0, temperature: float = 0.5):
        super().__init__()
        self.weights = (rotation_weight, contrastive_weight, reconstruction_weight)
        self.rotation = nn.CrossEntropyLoss()
        self.contrastive = ContrastiveLoss(temperature=temperature)
        self.reconstruction = nn.L1Loss()

    def forward(self, rotation_logits: torch.Tensor, rotation_target: torch.Tensor, projection1: torch.Tensor,
                projection2: torch.Tensor, reconstruction: torch.Tensor, target: torch.Tensor) -> dict:
        """Shapes: logits (2B, 4), targets (2B,), projections (B, P) each, reconstruction and target
        (2B, C, H, W, D) with the two views concatenated along the batch."""
        terms = {
            "rotation": self.rotation(rotation_logits, rotation_target),
            "contrastive": self.contrastive(projection1, projection2),
            "reconstruction": self.reconstruction(reconstruction, target),
        }
        terms["total"] = sum(w * t for w, t in zip(self.weights, terms.values()))
        return terms

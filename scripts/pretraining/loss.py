"""Pre-training loss: a1 * CE(rotation) + a2 * NT-Xent(two views) + a3 * L1(reconstruction)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scripts.distributed import all_gather_with_grad, rank, world_size


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5, gather: bool = False) -> torch.Tensor:
    """NT-Xent (SimCLR) of two views ``z1``, ``z2`` (B, P) of B crops: mean over the 2B anchors of the
    cross-entropy of finding the anchor's other view among all other views (cosine similarity / tau).
    In one process it equals MONAI's ``ContrastiveLoss``.

    With ``gather`` under ``torch.distributed``, the candidates are the views of every rank's crops
    (gathered with gradient) while the anchors stay this rank's: the mean of the ranks' losses, which
    is what ``DistributedDataParallel`` optimises, is then the NT-Xent of the global batch in value
    and gradient, with W x B - 1 negatives per anchor instead of B - 1 (all ranks need the same B).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    n, offset, candidates1, candidates2 = z1.shape[0], 0, z1, z2
    if gather and world_size() > 1:
        candidates1, candidates2 = all_gather_with_grad(z1), all_gather_with_grad(z2)
        offset = rank() * n
    total = candidates1.shape[0]
    logits = torch.cat([z1, z2]) @ torch.cat([candidates1, candidates2]).T / temperature  # (2B, 2 W B)
    local = torch.arange(n, device=z1.device) + offset
    own = torch.cat([local, local + total])
    positive = torch.cat([local + total, local])
    logits = logits.masked_fill(F.one_hot(own, 2 * total).bool(), float("-inf"))  # an anchor is not its own candidate
    return F.cross_entropy(logits, positive)


class SSLLoss(nn.Module):
    """Weighted sum of the three proxy-task losses; ``forward`` returns each term and the total.

    Args:
        rotation_weight, contrastive_weight, reconstruction_weight: a1, a2, a3 (reference code: 1, 1, 1).
        temperature: NT-Xent temperature (reference code: 0.5).
        gather_negatives: under ``torch.distributed``, contrast against the crops of all ranks (see
            ``nt_xent``); the reference code used only the crops on the same GPU.
    """

    def __init__(
        self,
        rotation_weight: float = 1.0,
        contrastive_weight: float = 1.0,
        reconstruction_weight: float = 1.0,
        temperature: float = 0.5,
        gather_negatives: bool = False,
    ):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.weights = (rotation_weight, contrastive_weight, reconstruction_weight)
        self.temperature, self.gather_negatives = temperature, gather_negatives
        self.rotation = nn.CrossEntropyLoss()
        self.reconstruction = nn.L1Loss()

    def forward(
        self,
        rotation_logits: torch.Tensor,
        rotation_target: torch.Tensor,
        projection1: torch.Tensor,
        projection2: torch.Tensor,
        reconstruction: torch.Tensor,
        target: torch.Tensor,
    ) -> dict:
        """Shapes: logits (2B, 4), targets (2B,), projections (B, P) each, reconstruction and target
        (2B, C, H, W, D) with the two views concatenated along the batch."""
        terms = {
            "rotation": self.rotation(rotation_logits, rotation_target),
            "contrastive": nt_xent(projection1, projection2, self.temperature, self.gather_negatives),
            "reconstruction": self.reconstruction(reconstruction, target),
        }
        terms["total"] = sum(w * t for w, t in zip(self.weights, terms.values()))
        return terms

"""Pre-training loss: a1 * CE(rotation) + a2 * NT-Xent(two views) + a3 * L1(reconstruction), each term only
when its task is selected, plus a4 * masked L1 of SimMIM's masked image modelling when ``mim`` is."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scripts.distributed import all_gather_with_grad, rank, world_size
from scripts.pretraining.mim import masked_l1
from scripts.pretraining.tasks import PAPER_TASKS, TERMS, check_tasks


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
    """Weighted sum of the selected proxy-task losses; ``forward`` returns each term and the total.

    Args:
        rotation_weight, contrastive_weight, reconstruction_weight: a1, a2, a3 (reference code: 1, 1, 1).
        temperature: NT-Xent temperature (reference code: 0.5).
        gather_negatives: under ``torch.distributed``, contrast against the crops of all ranks (see
            ``nt_xent``); the reference code used only the crops on the same GPU.
        mim_weight: a4, the weight of the masked-image-modelling term.
        tasks: the selected proxy tasks (``scripts.pretraining.tasks``); terms of the others are not computed.
    """

    def __init__(
        self,
        rotation_weight: float = 1.0,
        contrastive_weight: float = 1.0,
        reconstruction_weight: float = 1.0,
        temperature: float = 0.5,
        gather_negatives: bool = False,
        mim_weight: float = 1.0,
        tasks=PAPER_TASKS,
    ):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.tasks = check_tasks(tasks)
        weights = {"rotation": rotation_weight, "contrastive": contrastive_weight}
        weights.update(reconstruction=reconstruction_weight, mim=mim_weight)
        self.weights = {TERMS[t]: float(weights[TERMS[t]]) for t in self.tasks}
        self.temperature, self.gather_negatives = temperature, gather_negatives
        self.rotation = nn.CrossEntropyLoss()
        self.reconstruction = nn.L1Loss()

    def forward(self, outputs: dict, targets: dict) -> dict:
        """``outputs`` of ``SSLHead`` (float), ``targets``: ``rotation`` k (2B,) and ``reconstruction`` (2B, C, H, W,
        D) for the two views concatenated along the batch (view 1 of all crops, then view 2); ``mim`` crops
        (M, C, H, W, D) and ``mim_mask`` (M, 1, H, W, D) for MIM."""
        terms = {}
        if "rotation" in self.tasks:
            terms["rotation"] = self.rotation(outputs["rotation"], targets["rotation"])
        if "contrastive" in self.tasks:
            p1, p2 = outputs["projection"].chunk(2)
            terms["contrastive"] = nt_xent(p1, p2, self.temperature, self.gather_negatives)
        if "inpainting" in self.tasks:
            terms["reconstruction"] = self.reconstruction(outputs["reconstruction"], targets["reconstruction"])
        if "mim" in self.tasks:
            terms["mim"] = masked_l1(outputs["mim"], targets["mim"], targets["mim_mask"])
        terms["total"] = sum(self.weights[name] * term for name, term in terms.items())
        return terms

"""How far a proxy-task score is from chance, and whether embeddings collapsed: the statistics of the pre-training
probe (``scripts.pretraining.probe``).

- Rotation: with all four rotations of every crop scored, classes are balanced by construction, so a head that
  always answers one class scores exactly 0.25; the accuracy comes with its 95% Wilson interval and the
  one-sided exact binomial p-value against 0.25, and a parity score (odd against even quarter turns) that a
  head reading only the voxel anisotropy (1.5 / 2.0 mm) would pass without any anatomy.
- Collapse: per-dimension standard deviation of L2-normalised embeddings (about 1/sqrt(d) when they spread over
  the sphere, 0 when every crop maps to one direction) and their effective rank (exp of the entropy of the
  normalised singular values; Roy and Vetterli 2007).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ROTATION_CHANCE = 0.25
# per-dimension spread below this fraction of the healthy 1/sqrt(d): the embeddings use few directions
COLLAPSE_FRACTION = 0.25


def contrastive_collapse_loss(crops: int) -> float:
    """NT-Xent when every projection points one way: each of the 2N anchors finds its other view among 2N - 1
    equally similar candidates, so the loss is ln(2N - 1) (N crops, two views each) whatever the temperature."""
    if crops < 1:
        raise ValueError(f"need at least one crop, got {crops}")
    return math.log(2 * crops - 1)


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% (by default) Wilson score interval of a proportion ``successes / n``; (0, 1) for ``n == 0``."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def binomial_p_value(successes: int, n: int, p0: float = ROTATION_CHANCE) -> float:
    """One-sided exact binomial p-value: the probability of ``successes`` or more out of ``n`` at chance ``p0``."""
    return float(sum(math.comb(n, k) * p0**k * (1 - p0) ** (n - k) for k in range(successes, n + 1)))


def rotation_report(predicted: torch.Tensor, target: torch.Tensor) -> dict:
    """Rotation scores of predicted against true quarter turns k (both (N,), values 0..3): ``accuracy``, ``n``,
    ``interval`` (95% Wilson), ``p_value`` (against 0.25), ``parity_accuracy`` and the 4x4 ``confusion``
    matrix (rows: true k, columns: predicted k)."""
    predicted, target = predicted.long().flatten().cpu(), target.long().flatten().cpu()
    n, correct = int(target.numel()), int((predicted == target).sum())
    confusion = torch.zeros(4, 4, dtype=torch.long)
    confusion.index_put_((target, predicted), torch.ones_like(target), accumulate=True)
    low, high = wilson_interval(correct, n)
    return {
        "accuracy": correct / n if n else 0.0,
        "n": n,
        "interval": [low, high],
        "p_value": binomial_p_value(correct, n),
        "parity_accuracy": float(((predicted % 2) == (target % 2)).float().mean()) if n else 0.0,
        "confusion": confusion.tolist(),
    }


def collapse_report(embeddings: torch.Tensor) -> dict:
    """Collapse measures of embeddings (N, d): ``std`` (mean per-dimension standard deviation after L2
    normalisation), ``healthy_std`` (1/sqrt(d), the value of directions spread over the sphere),
    ``effective_rank`` (1 for a collapse to one direction, up to min(N, d)) and ``collapsed`` (``std`` below
    ``COLLAPSE_FRACTION`` of ``healthy_std``)."""
    z = F.normalize(embeddings.float().flatten(1), dim=1)
    d = z.shape[1]
    std = float(z.std(0).mean()) if z.shape[0] > 1 else 0.0
    singular = torch.linalg.svdvals(z)  # not centred: a collapse to one direction is rank 1
    weights = singular / singular.sum() if float(singular.sum()) > 1e-12 else torch.ones(1)
    entropy = float(-(weights[weights > 0] * weights[weights > 0].log()).sum())
    healthy = 1 / math.sqrt(d)
    return {
        "std": std,
        "healthy_std": healthy,
        "effective_rank": math.exp(entropy),
        "collapsed": std < COLLAPSE_FRACTION * healthy,
    }

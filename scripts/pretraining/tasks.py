"""Which proxy tasks a pre-training run learns (``proxy_tasks``), and what each selection logs and keeps.

The paper's three tasks (Tang et al., CVPR 2022) are ``inpainting`` (masked volume inpainting: the
reconstruction decoder, loss term ``reconstruction``), ``rotation`` and ``contrastive``; they share the two
rotated, box-masked views of each crop. ``mim`` is SimMIM-style masked image modelling
(``scripts.pretraining.mim``) on its own forward pass of the unrotated crops. Heads and views that a
selection does not use are neither built nor computed.
"""

from __future__ import annotations

from scripts.errors import ConfigError
from scripts.options import choice

PAPER_TASKS = ("inpainting", "rotation", "contrastive")
PROXY_TASKS = (*PAPER_TASKS, "mim")
# loss term and per-crop validation score of each task; the score that selects the kept encoder comes first
TERMS = {"inpainting": "reconstruction", "rotation": "rotation", "contrastive": "contrastive", "mim": "mim"}
SCORES = {
    "inpainting": ("reconstruction_l1", True),
    "mim": ("mim_l1", True),
    "contrastive": ("contrastive_top1", False),
    "rotation": ("rotation_accuracy", False),
}


def check_tasks(tasks) -> tuple[str, ...]:
    """``tasks`` as a tuple in the canonical order; a ``ConfigError`` for an empty, unknown or repeated name."""
    if isinstance(tasks, str):
        tasks = [tasks]
    tasks = list(tasks or [])
    if not tasks:
        raise ConfigError(f"proxy_tasks is empty: choose one or more of {', '.join(PROXY_TASKS)}")
    for name in tasks:
        choice("proxy_tasks", name, PROXY_TASKS)
    if len(set(tasks)) != len(tasks):
        raise ConfigError(f"proxy_tasks {tasks}: a task is named twice")
    return tuple(t for t in PROXY_TASKS if t in tasks)


def uses_views(tasks) -> bool:
    """Whether any of the paper's tasks is selected (they need the two rotated, masked views)."""
    return any(t in PAPER_TASKS for t in check_tasks(tasks))


def scores(tasks) -> list[str]:
    """The per-crop validation scores of the selected tasks (``SSLEvalStep`` output keys)."""
    return [SCORES[t][0] for t in check_tasks(tasks)]


def key_metric(tasks) -> str:
    """The validation score that selects the kept encoder by default: the reconstruction L1 of inpainting when
    selected (a dense, smooth score on every voxel), else MIM's L1, else contrastive top-1, else rotation."""
    selected = check_tasks(tasks)
    return "val_" + next(SCORES[t][0] for t in SCORES if t in selected)


def lower_is_better(metric: str) -> bool:
    """True for the L1 scores, False for the accuracies."""
    return metric.endswith("_l1")


def check_batch(tasks, batch_size: int, num_samples: int, volumes: int | None = None, ranks: int = 1, gather=False):
    """Refuse a step that cannot hold what the tasks compare.

    Contrastive coding contrasts the crops of one step (``batch_size`` volumes x ``num_samples`` crops on each of
    ``ranks`` processes; the other ranks' crops count only with ``gather`` negatives): one crop leaves it no
    negative and a loss of exactly 0. Batches of fewer volumes are dropped (they would change the number of
    negatives, and the loss, from step to step), so ``volumes`` usable volumes (all ranks together, shared out
    evenly) fewer than ``batch_size`` per process leave no step at all.
    """
    crops = int(batch_size) * int(num_samples) * (max(int(ranks), 1) if gather else 1)
    if "contrastive" in check_tasks(tasks) and crops < 2:
        raise ConfigError(
            f"batch_size {batch_size} x num_samples {num_samples} = 1 crop per step: contrastive coding needs two "
            "or more (one leaves no negative and a loss of 0); raise --batch_size or --num_samples"
        )
    if volumes is not None and -(-int(volumes) // max(int(ranks), 1)) < int(batch_size):
        raise ConfigError(
            f"{volumes} usable pre-training volumes{f' over {ranks} processes' if ranks > 1 else ''}, fewer than "
            f"batch_size {batch_size} per process: no full batch (smaller ones are dropped); lower --batch_size "
            "(and raise --num_samples to keep two or more crops per step)"
        )

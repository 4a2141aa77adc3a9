"""One pre-training / validation iteration, used as ``iteration_update`` of MONAI's SupervisedTrainer
and SupervisedEvaluator (which keep providing the engine, handlers, AMP scaler and state)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from ignite.metrics import Average

from scripts.options import choice
from scripts.pretraining.mim import block_mask
from scripts.pretraining.proxy_tasks import REFERENCE_ROTATION_AXES
from scripts.pretraining.tasks import PAPER_TASKS, check_tasks, uses_views
from scripts.pretraining.views import make_views


def _amp_kwargs(engine) -> dict:
    """The engine's ``amp_kwargs`` (e.g. ``{"dtype": torch.bfloat16}``), as MONAI's own iterations use them."""
    return dict(getattr(engine, "amp_kwargs", None) or {})


class ViewedStep:
    """What both iterations share: what the selected tasks see (the two views of each crop, MIM's masked
    crops), and where the crops are.

    Args:
        max_fraction, min_side, max_side, swap_source: masking (see ``scripts.pretraining.proxy_tasks.mask``).
        rotation_axes: the two spatial axes of the rotation plane (see ``scripts.pretraining.proxy_tasks.rotate``).
        image_key: batch key of the crops.
        tasks: the selected proxy tasks (``scripts.pretraining.tasks``).
        mim_mask_ratio, mim_block_size: MIM's block masking (``scripts.pretraining.mim.block_mask``).
        view_rotation: whether the two views of a crop turn independently or alike (``make_views``).
    """

    def __init__(
        self,
        max_fraction: float = 0.3,
        min_side: float = 0.05,
        max_side: float = 0.25,
        rotation_axes=REFERENCE_ROTATION_AXES,
        swap_source: str = "unmasked",
        image_key: str = "image",
        tasks=PAPER_TASKS,
        mim_mask_ratio: float = 0.6,
        mim_block_size: int = 32,
        view_rotation: str = "independent",
    ):
        self.view_args = (max_fraction, min_side, max_side, tuple(rotation_axes), swap_source, view_rotation)
        self.image_key = image_key
        self.tasks = check_tasks(tasks)
        self.mim_mask_ratio, self.mim_block_size = float(mim_mask_ratio), int(mim_block_size)

    def crops(self, engine, batch: dict) -> torch.Tensor:
        return batch[self.image_key].to(engine.state.device, non_blocking=True)

    def inputs(self, x: torch.Tensor) -> tuple[dict, dict]:
        """Network inputs (``SSLHead`` keywords) and loss targets for the crops ``x`` (B, C, H, W, D); the views
        are drawn first, so runs of the paper's tasks draw the same random numbers with or without MIM."""
        inputs, targets = {}, {}
        if uses_views(self.tasks):
            inputs["x"], targets["rotation"], targets["reconstruction"] = make_views(x, *self.view_args)
        if "mim" in self.tasks:
            mask = block_mask(x.shape[0], x.shape[2:], self.mim_block_size, self.mim_mask_ratio, x.device)
            inputs.update(mim_x=x, mim_mask=mask)
            targets.update(mim=x, mim_mask=mask)
        return inputs, targets


class SSLTrainStep(ViewedStep):
    """Pre-training iteration: views, forward, loss terms, backward with optional AMP and clipping.

    Args:
        max_grad_norm: clip the global gradient norm to this value (None or 0: no clipping, as the
            reference code by default). Under AMP the gradients are unscaled first, so the threshold
            means the same with and without.
        view_options: how views are made (``ViewedStep``).

    The engine output holds ``loss`` (total, detached), ``terms`` (each loss term and the learning
    rate as floats, for logging), and, when inpainting or MIM is selected, the first crop's ``image``
    (unmasked target), ``masked`` (network input; MIM's masked blocks shown as 0) and ``pred``
    (reconstruction), each (1, C, H, W, D).
    """

    def __init__(self, max_grad_norm: float | None = 1.0, **view_options):
        super().__init__(**view_options)
        self.max_grad_norm = max_grad_norm

    def __call__(self, engine, batch: dict) -> dict:
        x = self.crops(engine, batch)
        inputs, targets = self.inputs(x)
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, enabled=bool(engine.amp), **_amp_kwargs(engine)):
            outputs = {name: value.float() for name, value in engine.network(**inputs).items()}
            terms = engine.loss_function(outputs, targets)
        loss = terms["total"]
        scaler = engine.scaler if engine.amp else None
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if scaler is not None:
            scaler.unscale_(engine.optimizer)
        if self.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(engine.network.parameters(), self.max_grad_norm)
        if scaler is not None:
            scaler.step(engine.optimizer)
            scaler.update()
        else:
            engine.optimizer.step()
        log = {name: float(value.detach()) for name, value in terms.items()}
        log["lr"] = engine.optimizer.param_groups[0]["lr"]
        output = {"loss": loss.detach(), "terms": log}
        if "reconstruction" in outputs:
            output.update(
                image=targets["reconstruction"][:1], masked=inputs["x"][:1], pred=outputs["reconstruction"][:1]
            )
        elif "mim" in outputs:
            output.update(image=x[:1], masked=x[:1] * (1 - targets["mim_mask"][:1]), pred=outputs["mim"][:1])
        return {k: v.detach() if torch.is_tensor(v) else v for k, v in output.items()}


class SSLEvalStep(ViewedStep):
    """Validation iteration with deterministic views: per-crop proxy-task scores.

    Views are drawn from a generator seeded with ``seed`` and the iteration number, inside a forked
    random state, so validation neither varies between runs nor disturbs the training's random
    sequence. Output, for the selected tasks (per view, 2B values each): ``reconstruction_l1``,
    ``rotation_accuracy`` (0/1) and ``contrastive_top1`` (0/1: the nearest projection of the other view,
    by cosine similarity among the batch, is the same crop's); per crop (B values): ``mim_l1`` (L1 on
    the masked voxels). ``view_options`` as for ``ViewedStep``.
    """

    def __init__(self, seed: int = 0, **view_options):
        super().__init__(**view_options)
        self.seed = seed

    def __call__(self, engine, batch: dict) -> dict:
        x = self.crops(engine, batch)
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(self.seed + engine.state.iteration)
            inputs, targets = self.inputs(x)
            engine.network.eval()
            with torch.autocast(x.device.type, enabled=bool(engine.amp), **_amp_kwargs(engine)):
                outputs = {name: value.float() for name, value in engine.network(**inputs).items()}
        scores = {}
        if "reconstruction" in outputs:
            scores["reconstruction_l1"] = (
                (outputs["reconstruction"] - targets["reconstruction"]).abs().flatten(1).mean(1)
            )
        if "rotation" in outputs:
            scores["rotation_accuracy"] = (outputs["rotation"].argmax(1) == targets["rotation"]).float()
        if "projection" in outputs:
            p1, p2 = F.normalize(outputs["projection"], dim=1).chunk(2)
            similarity = p1 @ p2.T  # (B, B): row i = view-1 crop i against all view-2 crops
            same = torch.arange(x.shape[0], device=x.device)
            scores["contrastive_top1"] = torch.cat([similarity.argmax(1) == same, similarity.argmax(0) == same]).float()
        if "mim" in outputs:
            masked = targets["mim_mask"].expand_as(x)
            error = (outputs["mim"] - x).abs() * masked
            scores["mim_l1"] = error.flatten(1).sum(1) / masked.flatten(1).sum(1).clamp_min(1)
        return scores


class CropAverage(Average):
    """Mean of a per-crop validation score over all crops seen (batches of any size), as a float.

    ``key`` names the score in the ``SSLEvalStep`` output; under DDP the sums are reduced over ranks.
    """

    def __init__(self, key: str, device: str | torch.device = "cpu"):
        super().__init__(output_transform=lambda output: output[key][:, None], device=device)

    def compute(self) -> float:
        return float(super().compute()[0])


def crop_averages(keys: list[str]) -> dict:
    """``{"val_<key>": CropAverage(key)}`` for each score ``key`` of the ``SSLEvalStep`` output."""
    return {f"val_{key}": CropAverage(key) for key in keys}


def key_metric_first(metrics: dict, key: str) -> dict:
    """``metrics`` reordered with ``key`` first: MONAI's evaluators take the first entry of
    ``key_val_metric`` as the one that selects the best model."""
    choice("val_key_metric", key, sorted(metrics))
    return {key: metrics[key], **{name: m for name, m in metrics.items() if name != key}}

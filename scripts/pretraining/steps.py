"""One pre-training / validation iteration, used as ``iteration_update`` of MONAI's SupervisedTrainer
and SupervisedEvaluator (which keep providing the engine, handlers, AMP scaler and state)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from ignite.metrics import Average

from scripts.options import choice
from scripts.pretraining.proxy_tasks import REFERENCE_ROTATION_AXES
from scripts.pretraining.views import make_views


def _amp_kwargs(engine) -> dict:
    """The engine's ``amp_kwargs`` (e.g. ``{"dtype": torch.bfloat16}``), as MONAI's own iterations use them."""
    return dict(getattr(engine, "amp_kwargs", None) or {})


class _ViewedStep:
    """What both iterations share: how the two views of each crop are made, and where the crops are.

    Args:
        max_fraction, min_side, max_side, swap_source: masking (see ``scripts.pretraining.proxy_tasks.mask``).
        rotation_axes: the two spatial axes of the rotation plane (see ``scripts.pretraining.proxy_tasks.rotate``).
        image_key: batch key of the crops.
    """

    def __init__(
        self,
        max_fraction: float = 0.3,
        min_side: float = 0.05,
        max_side: float = 0.25,
        rotation_axes=REFERENCE_ROTATION_AXES,
        swap_source: str = "unmasked",
        image_key: str = "image",
    ):
        self.view_args = (max_fraction, min_side, max_side, tuple(rotation_axes), swap_source)
        self.image_key = image_key

    def crops(self, engine, batch: dict) -> torch.Tensor:
        return batch[self.image_key].to(engine.state.device, non_blocking=True)


class SSLTrainStep(_ViewedStep):
    """Pre-training iteration: views, forward, loss terms, backward with optional AMP and clipping.

    Args:
        max_grad_norm: clip the global gradient norm to this value (None or 0: no clipping, as the
            reference code by default). Under AMP the gradients are unscaled first, so the threshold
            means the same with and without.
        view_options: how views are made (``_ViewedStep``).

    The engine output holds ``loss`` (total, detached), ``terms`` (each loss term and the learning
    rate as floats, for logging), and the first view of the first crop as ``image`` (unmasked
    target), ``masked`` (network input) and ``pred`` (reconstruction), each (1, C, H, W, D).
    """

    def __init__(self, max_grad_norm: float | None = 1.0, **view_options):
        super().__init__(**view_options)
        self.max_grad_norm = max_grad_norm

    def __call__(self, engine, batch: dict) -> dict:
        x = self.crops(engine, batch)
        inputs, rot_target, recon_target = make_views(x, *self.view_args)
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, enabled=bool(engine.amp), **_amp_kwargs(engine)):
            rot_logits, projection, reconstruction = engine.network(inputs)
            p1, p2 = projection.float().chunk(2)
            terms = engine.loss_function(rot_logits.float(), rot_target, p1, p2, reconstruction.float(), recon_target)
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
        return {
            "loss": loss.detach(),
            "terms": log,
            "image": recon_target[:1].detach(),
            "masked": inputs[:1].detach(),
            "pred": reconstruction[:1].detach().float(),
        }


class SSLEvalStep(_ViewedStep):
    """Validation iteration with deterministic views: per-crop proxy-task scores.

    Views are drawn from a generator seeded with ``seed`` and the iteration number, inside a forked
    random state, so validation neither varies between runs nor disturbs the training's random
    sequence. Output (per view, 2B values each): ``reconstruction_l1``, ``rotation_accuracy`` (0/1)
    and ``contrastive_top1`` (0/1: the nearest projection of the other view, by cosine similarity
    among the batch, is the same crop's). ``view_options`` as for ``_ViewedStep``.
    """

    def __init__(self, seed: int = 0, **view_options):
        super().__init__(**view_options)
        self.seed = seed

    def __call__(self, engine, batch: dict) -> dict:
        x = self.crops(engine, batch)
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(self.seed + engine.state.iteration)
            inputs, rot_target, recon_target = make_views(x, *self.view_args)
            engine.network.eval()
            with torch.autocast(x.device.type, enabled=bool(engine.amp), **_amp_kwargs(engine)):
                rot_logits, projection, reconstruction = engine.network(inputs)
        p1, p2 = F.normalize(projection.float(), dim=1).chunk(2)
        similarity = p1 @ p2.T  # (B, B): row i = view-1 crop i against all view-2 crops
        same = torch.arange(x.shape[0], device=x.device)
        top1 = torch.cat([similarity.argmax(1) == same, similarity.argmax(0) == same]).float()
        l1 = (reconstruction.float() - recon_target).abs().flatten(1).mean(1)
        return {
            "reconstruction_l1": l1,
            "rotation_accuracy": (rot_logits.argmax(1) == rot_target).float(),
            "contrastive_top1": top1,
        }


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

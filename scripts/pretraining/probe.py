"""A pre-training validation that can tell learning from chance (``scripts.pretraining.chance`` for the statistics).

At the end of every validation, on the validation volumes: ``crops_per_volume`` seeded random crops per volume
(the same crops at every validation), each scored by the rotation head in all four quarter turns (classes
balanced by construction: >= 160 views for 5 volumes x 8 crops), the two masked views of each crop for
inpainting (L1 on the masked voxels against the L1 of leaving the masked input as it is) and contrastive coding
(top-1 of the other view among all the probe's crops, beside its chance level 1 / crops; NT-Xent over those crops,
beside its value ln(2N - 1) for collapsed projections), and the collapse of the projections (with the share of
their length that is the head's last bias) and of the tokens the contrastive head reads; with ``mim`` selected,
MIM's L1 on its masked voxels against the L1 of filling them with the mean of each crop's visible voxels. Only the
selected tasks are measured. Written to the evaluator's metrics (``val_probe_*``: logged by StatsHandler /
TensorBoard like the others), to ``<output_dir>/probe.csv`` (one row per validation) and
``<output_dir>/probe/epoch_<n>.json`` (with the rotation confusion matrix).
"""

from __future__ import annotations

import csv
import json
import os

import torch
from ignite.engine import Events
from monai.transforms import RandSpatialCropSamples, SpatialPad

from scripts.atomic_files import atomic_path
from scripts.distributed import unwrap_model
from scripts.pretraining.chance import collapse_report, contrastive_collapse_loss, rotation_report
from scripts.pretraining.loss import nt_xent
from scripts.pretraining.proxy_tasks import REFERENCE_ROTATION_AXES, check_rotation_plane
from scripts.pretraining.steps import ViewedStep
from scripts.pretraining.tasks import PAPER_TASKS, check_tasks


class ProxyProbe:
    """Ignite handler for the pre-training evaluator (see the module docstring).

    Args:
        network: the ``SSLHead`` (DDP-wrapped or not).
        volumes: a dataset of whole validation volumes after the deterministic transforms (dicts with ``image``).
        roi_size: crop size; smaller volumes are padded.
        crops_per_volume: seeded random crops per volume.
        output_dir: where ``probe.csv`` and ``probe/`` go.
        seed: the crops and views are drawn from this seed (and the volume's index), the same at every validation.
        rotation_axes, view_options: as for pre-training (``make_views``).
        tasks, mim_mask_ratio, mim_block_size: the selected proxy tasks and MIM's masking, as in pre-training.
        temperature: of the NT-Xent the probe reports over all its crops, beside its collapse value ln(2N - 1).
    """

    def __init__(
        self,
        network,
        volumes,
        roi_size,
        crops_per_volume: int = 8,
        output_dir: str = ".",
        seed: int = 0,
        rotation_axes=REFERENCE_ROTATION_AXES,
        tasks=PAPER_TASKS,
        mim_mask_ratio: float = 0.6,
        mim_block_size: int = 32,
        temperature: float = 0.5,
        **view_options,
    ):
        self.network, self.volumes, self.roi_size = network, volumes, [int(s) for s in roi_size]
        self.crops_per_volume, self.output_dir, self.seed = int(crops_per_volume), output_dir, seed
        self.rotation_axes, self.tasks = tuple(rotation_axes), check_tasks(tasks)
        self.temperature = temperature
        # the training step's own view and mask making, so the probe measures the tasks as they are trained
        self.step = ViewedStep(
            rotation_axes=self.rotation_axes,
            tasks=self.tasks,
            mim_mask_ratio=mim_mask_ratio,
            mim_block_size=mim_block_size,
            **view_options,
        )
        check_rotation_plane(self.roi_size, self.rotation_axes)

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def crops(self, index: int, image: torch.Tensor) -> torch.Tensor:
        """The probe's crops of volume ``index``: (crops_per_volume, C, *roi_size), the same at every call."""
        sampler = RandSpatialCropSamples(self.roi_size, num_samples=self.crops_per_volume, random_size=False)
        sampler.set_random_state(self.seed + index)
        return torch.stack([torch.as_tensor(c) for c in sampler(SpatialPad(self.roi_size)(image))])

    @torch.no_grad()
    def measure(self, device) -> dict:
        """Run the probe; returns the report of the selected tasks (see the module docstring)."""
        network = unwrap_model(self.network)
        was_training = network.training
        network.eval()
        dims = tuple(a + 2 for a in self.rotation_axes)  # spatial axis -> batch dim
        predicted, targets, first, second, tokens = [], [], [], [], []
        l1 = {"inpainting": [], "inpainting_input": [], "mim": [], "mim_mean": []}
        try:
            for index in range(len(self.volumes)):
                x = self.crops(index, self.volumes[index]["image"]).float().to(device)
                if "rotation" in self.tasks:
                    for k in range(4):
                        predicted.append(network(x=x.rot90(k, dims=dims))["rotation"].argmax(1).cpu())
                        targets.append(torch.full((x.shape[0],), k))
                devices = [x.device] if x.device.type == "cuda" else []
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(self.seed + index)
                    inputs, wanted = self.step.inputs(x)
                hook = None
                head = getattr(network, "contrastive_head", None)
                if head is not None:  # the token the contrastive head reads, to tell where a collapse is
                    hook = head.register_forward_hook(lambda module, args, output: tokens.append(args[0].float().cpu()))
                try:
                    out = network(**inputs)
                finally:
                    if hook is not None:
                        hook.remove()
                if "reconstruction" in out:
                    masked = inputs["x"] != wanted["reconstruction"]  # the voxels the masking changed
                    if masked.any():
                        l1["inpainting"].append(
                            float((out["reconstruction"].float() - wanted["reconstruction"]).abs()[masked].mean())
                        )
                        l1["inpainting_input"].append(
                            float((inputs["x"] - wanted["reconstruction"]).abs()[masked].mean())
                        )
                if "mim" in out:
                    hidden = wanted["mim_mask"].expand_as(x).bool()
                    visible_mean = (x * ~hidden).flatten(1).sum(1) / (~hidden).flatten(1).sum(1).clamp_min(1)
                    l1["mim"].append(float((out["mim"].float() - x).abs()[hidden].mean()))
                    l1["mim_mean"].append(
                        float((visible_mean[:, None, None, None, None] - x).expand_as(x).abs()[hidden].mean())
                    )
                if "projection" in out:
                    p1, p2 = out["projection"].float().cpu().chunk(2)
                    first.append(p1)
                    second.append(p2)
        finally:
            network.train(was_training)

        def mean(values):
            return sum(values) / len(values) if values else float("nan")

        report = {}
        if "rotation" in self.tasks:
            report["rotation"] = rotation_report(torch.cat(predicted), torch.cat(targets))
        if "contrastive" in self.tasks:
            p1, p2 = torch.cat(first), torch.cat(second)
            similarity = torch.nn.functional.normalize(p1, dim=1) @ torch.nn.functional.normalize(p2, dim=1).T
            same = torch.arange(p1.shape[0])
            top1 = torch.cat([similarity.argmax(1) == same, similarity.argmax(0) == same]).float().mean()
            report["contrastive"] = {
                "top1": float(top1),
                "chance": 1 / p1.shape[0],
                "crops": int(p1.shape[0]),
                "loss": float(nt_xent(p1, p2, self.temperature)),
                "collapse_loss": contrastive_collapse_loss(p1.shape[0]),
            }
            report["collapse"] = collapse_report(torch.cat([p1, p2]))
            head = getattr(network, "contrastive_head", None)
            if head is not None:
                bias = (head if isinstance(head, torch.nn.Linear) else head[-1]).bias.float().cpu()
                # the share of each projection's length that is the head's last bias: near 1, every crop maps to it
                report["collapse"]["bias_share"] = float((bias.norm() / torch.cat([p1, p2]).norm(dim=1)).mean())
                report["token_collapse"] = collapse_report(torch.cat(tokens))
        if "inpainting" in self.tasks:
            report["inpainting"] = {
                "l1_masked": mean(l1["inpainting"]),
                "l1_masked_input": mean(l1["inpainting_input"]),
            }
        if "mim" in self.tasks:
            report["mim"] = {"l1_masked": mean(l1["mim"]), "l1_visible_mean": mean(l1["mim_mean"])}
        return report

    def __call__(self, engine) -> None:
        report = self.measure(engine.state.device if hasattr(engine.state, "device") else "cpu")
        metrics = {}
        if "rotation" in report:
            rotation = report["rotation"]
            metrics.update(
                val_probe_rotation_accuracy=rotation["accuracy"],
                val_probe_rotation_low=rotation["interval"][0],
                val_probe_rotation_high=rotation["interval"][1],
                val_probe_rotation_p=rotation["p_value"],
                val_probe_rotation_parity=rotation["parity_accuracy"],
            )
        if "contrastive" in report:
            collapse = report["collapse"]
            metrics.update(
                val_probe_contrastive_top1=report["contrastive"]["top1"],
                val_probe_contrastive_chance=report["contrastive"]["chance"],
                val_probe_contrastive_loss=report["contrastive"]["loss"],
                val_probe_contrastive_collapse_loss=report["contrastive"]["collapse_loss"],
                val_probe_collapsed=float(collapse["collapsed"]),
                val_probe_embedding_std=collapse["std"],
                val_probe_embedding_healthy_std=collapse["healthy_std"],
                val_probe_effective_rank=collapse["effective_rank"],
            )
            if "token_collapse" in report:
                metrics.update(
                    val_probe_projection_bias_share=collapse["bias_share"],
                    val_probe_token_std=report["token_collapse"]["std"],
                    val_probe_token_effective_rank=report["token_collapse"]["effective_rank"],
                )
        if "inpainting" in report:
            metrics.update(
                val_probe_inpainting_l1=report["inpainting"]["l1_masked"],
                val_probe_inpainting_l1_input=report["inpainting"]["l1_masked_input"],
            )
        if "mim" in report:
            metrics.update(
                val_probe_mim_l1=report["mim"]["l1_masked"],
                val_probe_mim_l1_visible_mean=report["mim"]["l1_visible_mean"],
            )
        engine.state.metrics.update(metrics)
        epoch = int(engine.state.epoch)
        self._write(epoch, report, metrics)

    def _write(self, epoch: int, report: dict, metrics: dict) -> None:
        os.makedirs(os.path.join(self.output_dir, "probe"), exist_ok=True)
        with atomic_path(os.path.join(self.output_dir, "probe", f"epoch_{epoch}.json")) as tmp, open(tmp, "w") as f:
            views = report["rotation"]["n"] if "rotation" in report else None
            json.dump({"epoch": epoch, "views": views, **report}, f, indent=2)
        table = os.path.join(self.output_dir, "probe.csv")
        new = not os.path.exists(table)
        with open(table, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["epoch", *metrics])
            if new:
                writer.writeheader()
            writer.writerow({"epoch": epoch, **{k: f"{v:.6g}" for k, v in metrics.items()}})

"""Evaluation metrics MONAI's handlers do not cover: HD95 in millimetres and per-organ CSV reports."""

from __future__ import annotations

import csv
import os

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.metrics import HausdorffDistanceMetric
from monai.utils import string_list_all_gather

from scripts.atomic_files import atomic_path
from scripts.distributed import rank


class HausdorffDistanceMM(HausdorffDistanceMetric):
    """Hausdorff distance in mm: voxel spacing is read from the label's affine (a MetaTensor).

    MONAI's metric measures in voxels unless it is given ``spacing``, which its ignite handler cannot
    pass; on anisotropic grids voxel distances are not comparable between cases.
    """

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:
        if "spacing" not in kwargs and isinstance(y, MetaTensor):
            affine = y.affine
            affines = affine if affine.ndim == 3 else affine[None].expand(y.shape[0], -1, -1)
            spatial = y.ndim - 2
            kwargs["spacing"] = [affine_to_spacing(a, r=spatial).tolist() for a in affines]
        return super()._compute_tensor(y_pred, y, **kwargs)


class OrganMetricsWriter:
    """Write per-case, per-organ metric tables (CSV) when an evaluator completes.

    For every metric name in ``metrics`` (computed by a metric handler with ``save_details=True``),
    writes ``<output_dir>/<metric>_per_case.csv``: one row per case (file name), one column per
    organ (``class_names`` without background) plus the case's mean, and a last ``mean`` row with
    each organ's mean over cases (organs absent from a case are left empty and skipped in means).
    """

    def __init__(self, output_dir: str, metrics, class_names, include_background: bool = False):
        self.output_dir = output_dir
        self.metrics = list(metrics)
        self.class_names = list(class_names)[0 if include_background else 1 :]
        self._files: list[str] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self._files.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def _collect(self, engine: Engine) -> None:
        for item in engine.state.batch:
            meta = item["image"].meta if isinstance(item, dict) else {}
            self._files.append(os.path.basename(str(meta.get("filename_or_obj", len(self._files)))))

    def write(self, engine: Engine) -> dict:
        """Write the tables; returns ``{metric: per-organ means}``. Only rank 0 writes under torchrun."""
        files = string_list_all_gather(self._files)
        rank0 = rank() == 0
        means = {}
        for name in self.metrics:
            values = engine.state.metric_details[name]
            values = values.cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
            values = values.reshape(len(files), -1)
            organ_means = np.array([_nanmean(col) for col in values.T])
            means[name] = dict(zip(self.class_names, organ_means))
            if rank0:
                os.makedirs(self.output_dir, exist_ok=True)
                path = os.path.join(self.output_dir, f"{name}_per_case.csv")
                with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
                    writer = csv.writer(f)
                    writer.writerow(["case", *self.class_names, "mean"])
                    for case, row in zip(files, values):
                        writer.writerow([case, *map(_fmt, row), _fmt(_nanmean(row))])
                    writer.writerow(["mean", *map(_fmt, organ_means), _fmt(_nanmean(organ_means))])
        return means


def _nanmean(values) -> float:
    """Mean of the finite values: NaN (organ absent) and inf (organ missed, HD undefined) are skipped."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _fmt(value: float) -> str:
    if np.isnan(value):
        return ""
    return "inf" if np.isinf(value) else f"{value:.4f}"

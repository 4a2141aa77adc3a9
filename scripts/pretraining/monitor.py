"""Watching pre-training: a CSV of the loss terms and PNG snapshots of the inpainting task.

Both read the output of ``scripts.pretraining.steps.SSLTrainStep`` and write on rank 0 only.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from ignite.engine import Engine, Events

from scripts.atomic_files import append_csv_row
from scripts.distributed import rank

logger = logging.getLogger(__name__)


class LossHistory:
    """Append ``iteration, <each loss term>, lr`` to a CSV every ``interval`` iterations.

    Rows are flushed as written, so a crash loses nothing already logged; after a resume the
    iterations since the last checkpoint appear twice, the later rows being the ones that count.
    """

    def __init__(self, filename: str, interval: int = 1):
        self.filename, self.interval = filename, interval

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)

    def __call__(self, engine: Engine) -> None:
        if rank() != 0:
            return
        terms = engine.state.output["terms"]
        row = [engine.state.iteration, *(f"{v:.6g}" for v in terms.values())]
        append_csv_row(self.filename, ["iteration", *terms], row)


class ReconstructionSnapshots:
    """Every ``interval`` iterations, a PNG (and a TensorBoard image) of the middle slice of the first
    crop of the batch: the rotated crop, its masked view (the network input) and the reconstruction of
    inpainting, or with MIM alone the crop, its masked blocks (0) and MIM's prediction. Selections with
    neither task have nothing to show (said once in the log).

    Files go to ``<out_dir>/iteration_XXXXXXX.png``; TensorBoard images go to ``log_dir`` when given.
    """

    def __init__(self, out_dir: str, interval: int = 1000, log_dir: str | None = None):
        self.out_dir, self.interval, self.log_dir = out_dir, interval, log_dir
        self._writer, self._said = None, False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)

    @staticmethod
    def panels(output: dict) -> list:
        """Middle axial slices (H, W) of target, masked input and reconstruction, in [0, 1]."""
        images = [output[k][0, 0].float().clamp(0, 1).cpu() for k in ("image", "masked", "pred")]
        depth = images[0].shape[-1] // 2
        return [img[..., depth].T.flip(0).numpy() for img in images]  # RAS (x, y) -> rows y up, columns x

    def __call__(self, engine: Engine) -> None:
        if rank() != 0:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        it, output = engine.state.iteration, engine.state.output
        if "pred" not in output:
            if not self._said:
                logger.info("no reconstruction snapshots: neither inpainting nor mim is among the proxy tasks")
                self._said = True
            return
        panels = self.panels(output)
        terms = output["terms"]
        mim = "reconstruction" not in terms
        titles = (
            ("crop", "masked blocks (MIM)", "MIM prediction")
            if mim
            else ("crop (rotated)", "masked input", "reconstruction")
        )
        fig, axes = plt.subplots(1, 3, figsize=(9, 3.3))
        for ax, img, title in zip(axes, panels, titles):
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            ax.set_title(title, fontsize=10)
            ax.axis("off")
        l1 = terms["mim" if mim else "reconstruction"]
        fig.suptitle(f"iteration {it}: L1 {l1:.3f}, total loss {terms['total']:.3f}", fontsize=10)
        fig.tight_layout(rect=(0, 0, 1, 0.9))
        os.makedirs(self.out_dir, exist_ok=True)
        path = os.path.join(self.out_dir, f"iteration_{it:07d}.png")
        fig.savefig(path, dpi=80)
        plt.close(fig)
        if self.log_dir:
            writer = self._summary_writer()
            if writer is not None:
                writer.add_image("reconstruction", torch.from_numpy(np.concatenate(panels, 1))[None], it)
                writer.flush()

    def _summary_writer(self):
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard missing: PNGs only (scripts.tensorboard says so once)
                return None
            self._writer = SummaryWriter(log_dir=self.log_dir)
        return self._writer

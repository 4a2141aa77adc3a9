"""End-to-end demo on generated CT phantoms: generate, pre-train, fine-tune, evaluate, infer, report.

Runs the bundle's own configs with ``configs/small_pretrain.json`` and ``configs/small.json``
(CPU-sized Swin UNETR), exactly as a user would from the command line. Pre-training uses the
phantoms and, when present, the unlabelled real CT in ``../shared/data/real_ct``; fine-tuning starts
from the pre-trained encoder, and the same fine-tuning from random weights (same epochs, seed and data) is
evaluated beside it on the same held-out phantoms. Prints the pre-training losses and the per-organ Dice
table and writes under ``out_dir``: ``report.md``, ``slices.png`` (image / ground truth / prediction of the held-out
phantom), ``pretrain.png`` (inpainting at the last pre-training iteration) and the outputs of each
step (``pretrain/``, ``train/``, ``eval/``, ``inference/``; ``scratch/`` for the comparison).

    python -m scripts.tools.demo --out_dir runs/demo
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import fire
import nibabel as nib
import numpy as np

from scripts.tasks.labels import BTCV_LABELS
from scripts.tools.phantoms import write_phantoms

ROOT = str(Path(__file__).resolve().parents[2])  # scripts/tools/demo.py -> the bundle root
ORGANS = [BTCV_LABELS[i] for i in range(1, 14)]


def bundle_command(configs: list[str], **overrides) -> list[str]:
    """``python -m monai.bundle run`` of ``configs/<name>`` files with ``--id value`` overrides, as a user types it."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str([f"configs/{c}" for c in configs])]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    return cmd


def _bundle_run(step: str, configs: list[str], **overrides) -> float:
    """Run one bundle workflow in a subprocess, streaming its log; returns the wall time in seconds."""
    cmd = bundle_command(configs, **overrides)
    print(f"\n=== {step}\n$ {' '.join(cmd)}", flush=True)
    start = time.time()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(cmd, cwd=ROOT, env=env)
    if result.returncode != 0:
        raise SystemExit(f"demo: step '{step}' failed with exit code {result.returncode}")
    return time.time() - start


def _read_means(path: str) -> dict[str, float]:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    mean_row = next(r for r in rows if r["case"] == "mean")
    return {k: float(v) if v else float("nan") for k, v in mean_row.items() if k != "case"}


def loss_summary(path: str, window: int = 3) -> tuple[dict, dict]:
    """Mean loss terms over the first and the last ``window`` logged pre-training iterations."""
    with open(path) as f:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]

    def mean(rs):
        return {k: sum(r[k] for r in rs) / len(rs) for k in ("rotation", "contrastive", "reconstruction", "total")}

    return mean(rows[:window]), mean(rows[-window:])


def _slices_png(image_path: str, label_path: str, pred_path: str, out_path: str) -> None:
    """Axial slices through the kidneys, pancreas and liver plus a coronal slice: CT, truth, prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    def ras(path):
        img = nib.as_closest_canonical(nib.load(path))
        return np.asarray(img.dataobj), img.header.get_zooms()[:3]

    ct, zooms = ras(image_path)
    truth, _ = ras(label_path)
    pred, _ = ras(pred_path)
    colors = matplotlib.colormaps["tab20"](np.linspace(0, 1, 20))[:13]
    cmap = ListedColormap(np.vstack([[0, 0, 0, 0], colors]))

    def z_of(lbl):
        return int(np.median(np.nonzero(truth == lbl)[2])) if (truth == lbl).any() else truth.shape[2] // 2

    views = [
        ("axial, kidneys", "z", z_of(2)),
        ("axial, pancreas", "z", z_of(11)),
        ("axial, liver", "z", z_of(6)),
        (
            "coronal, aorta",
            "y",
            int(np.median(np.nonzero(truth == 8)[1])) if (truth == 8).any() else truth.shape[1] // 2,
        ),
    ]
    fig, axes = plt.subplots(len(views), 3, figsize=(12, 4 * len(views)))
    for row, (title, axis, index) in enumerate(views):
        # radiological convention: the patient's right on the left of the picture
        def take(v, axis=axis, index=index):
            return v[::-1, :, index].T if axis == "z" else v[::-1, index, :].T

        aspect = zooms[1] / zooms[0] if axis == "z" else zooms[2] / zooms[0]
        ct_window = np.clip(take(ct), -175, 250)
        for col, (name, overlay) in enumerate((("CT", None), ("ground truth", truth), ("prediction", pred))):
            ax = axes[row, col]
            ax.imshow(ct_window, cmap="gray", origin="lower", aspect=aspect)
            if overlay is not None:
                ax.imshow(
                    take(overlay),
                    cmap=cmap,
                    vmin=0,
                    vmax=13,
                    alpha=0.55,
                    origin="lower",
                    aspect=aspect,
                    interpolation="nearest",
                )
            ax.set_title(f"{name} ({title})")
            ax.axis("off")
    handles = [Patch(color=colors[i], label=f"{i + 1} {ORGANS[i]}") for i in range(13)]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(out_path, dpi=80)
    plt.close(fig)


def run_demo(
    out_dir: str = "runs/demo",
    data_dir: str = "data/phantoms",
    num_train: int = 16,
    num_val: int = 4,
    pretrain_iterations: int = 40,
    max_epochs: int = 15,
    seed: int = 0,
    real_ct_dir: str = os.path.join(os.path.dirname(ROOT), "shared", "data", "real_ct"),
):
    """Generate phantoms, pre-train and fine-tune a small Swin UNETR, evaluate on held-out phantoms, infer, report."""
    out_dir, data_dir = os.path.abspath(out_dir), os.path.abspath(data_dir)
    os.makedirs(out_dir, exist_ok=True)
    start = time.time()

    print(f"=== [1/6] generating {num_train} + {num_val} + 1 phantoms in {data_dir}", flush=True)
    datalist = write_phantoms(data_dir, num_train=num_train, num_val=num_val, num_test=1, seed=seed, progress=True)

    common = {"dataset_dir": data_dir, "ckpt_dir": os.path.join(out_dir, "models")}
    sources = [datalist]
    if os.path.isdir(real_ct_dir):
        sources.append(os.path.join(real_ct_dir, "*_ct.nii.gz"))
    else:
        print(f"(no unlabelled real CT at {real_ct_dir}: pre-training on the phantoms only)")
    interval = pretrain_iterations // 2
    t_pretrain = _bundle_run(
        f"[2/6] self-supervised pre-training on {len(sources)} source(s) (feature_size 12, 64^3 crops)",
        ["pretrain.json", "small_pretrain.json"],
        output_dir=os.path.join(out_dir, "pretrain"),
        train_sources=sources,
        val_sources=[datalist],  # the phantoms' validation list; the real CT are unlabelled extra training data
        max_iterations=pretrain_iterations,
        ckpt_interval=interval,
        val_interval=interval,
        image_interval=interval,
        **common,
    )
    encoder = os.path.join(common["ckpt_dir"], "ssl_encoder.pt")
    t_train = _bundle_run(
        "[3/6] fine-tuning Swin UNETR from the pre-trained encoder",
        ["train.json", "small.json"],
        output_dir=os.path.join(out_dir, "train"),
        max_epochs=max_epochs,
        val_interval=max_epochs,
        pretrained_encoder=encoder,
        **common,
    )
    scratch = {**common, "ckpt_dir": os.path.join(out_dir, "scratch", "models")}
    t_scratch = _bundle_run(
        "[4/6] the same fine-tuning from random weights, for comparison",
        ["train.json", "small.json"],
        output_dir=os.path.join(out_dir, "scratch", "train"),
        max_epochs=max_epochs,
        val_interval=max_epochs,
        **scratch,
    )
    t_eval = _bundle_run(
        "[5/6] evaluating both on the held-out validation phantoms",
        ["train.json", "evaluate.json", "small.json"],
        output_dir=os.path.join(out_dir, "eval"),
        **common,
    )
    t_eval += _bundle_run(
        "[5/6] (from random weights)",
        ["train.json", "evaluate.json", "small.json"],
        output_dir=os.path.join(out_dir, "scratch", "eval"),
        **scratch,
    )
    test_case = json.load(open(datalist))["test"][0]
    t_infer = _bundle_run(
        "[6/6] inference on a held-out phantom",
        ["inference.json", "small.json"],
        dataset_dir=os.path.join(data_dir, os.path.dirname(test_case["image"])),
        output_dir=os.path.join(out_dir, "inference"),
        ckpt_dir=common["ckpt_dir"],
    )

    dice = _read_means(os.path.join(out_dir, "eval", "val_mean_dice_per_case.csv"))
    hd95 = _read_means(os.path.join(out_dir, "eval", "val_hd95_mm_per_case.csv"))
    scratch_dice = _read_means(os.path.join(out_dir, "scratch", "eval", "val_mean_dice_per_case.csv"))["mean"]
    comparison = (
        f"mean Dice over 13 organs on held-out phantoms: {dice['mean']:.3f} from the pre-trained encoder, "
        f"{scratch_dice:.3f} from random weights (same {max_epochs} epochs, seed and phantoms)"
    )
    name = os.path.basename(test_case["image"]).replace(".nii.gz", "")
    png = os.path.join(out_dir, "slices.png")
    _slices_png(
        os.path.join(data_dir, test_case["image"]),
        os.path.join(data_dir, test_case["label"]),
        os.path.join(out_dir, "inference", f"{name}_seg.nii.gz"),
        png,
    )

    shutil.copy(
        os.path.join(out_dir, "pretrain", "images", f"iteration_{pretrain_iterations:07d}.png"),
        os.path.join(out_dir, "pretrain.png"),
    )
    start_losses, end_losses = loss_summary(os.path.join(out_dir, "pretrain", "losses.csv"))
    losses = ["| pre-training loss | first 3 iterations | last 3 iterations |", "|---|---|---|"]
    losses += [f"| {k} | {start_losses[k]:.3f} | {end_losses[k]:.3f} |" for k in start_losses]
    losses = "\n".join(losses)

    lines = [f"| {'organ':<30} | Dice  | HD95 (mm) |", f"|{'-' * 32}|-------|-----------|"]
    for organ in ORGANS + ["mean"]:
        lines.append(f"| {organ:<30} | {dice[organ]:.3f} | {hd95[organ]:9.1f} |")
    table = "\n".join(lines)
    total = time.time() - start
    report = (
        f"# Swin UNETR demo on synthetic CT phantoms\n\n"
        f"Pre-trained for {pretrain_iterations} iterations with `configs/small_pretrain.json` on "
        f"{', '.join(f'`{s}`' for s in sources)}; then fine-tuned from the pre-trained encoder on {num_train} phantoms "
        f"for {max_epochs} epochs with `configs/small.json` (feature_size 12, 64^3 crops, 4 mm voxels); evaluated on "
        f"{num_val} held-out phantoms on their original grids.\n\n"
        f"{losses}\n\n![pre-training](pretrain.png)\n\n{table}\n\n{comparison[0].upper()}{comparison[1:]}.\n\n"
        f"Times: pre-training {t_pretrain:.0f} s, fine-tuning {t_train:.0f} s (from random weights "
        f"{t_scratch:.0f} s), evaluation {t_eval:.0f} s, "
        f"inference {t_infer:.0f} s, total {total:.0f} s.\n\n"
        f"![slices](slices.png)\n\nOutputs: `pretrain/` (losses.csv, images/, TensorBoard, checkpoints), "
        f"`models/ssl_encoder.pt`, `train/` (logs, TensorBoard, checkpoints), `models/model.pt`, `eval/` "
        f"(CSV tables, predicted label maps), `inference/{name}_seg.nii.gz`, `scratch/` (the comparison).\n"
    )
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(report)
    print(f"\n{losses}\n\n{table}\n\n{comparison}")
    print(f"report: {os.path.join(out_dir, 'report.md')}\nslices: {png}\ntotal time: {total:.0f} s")
    return dice["mean"]


if __name__ == "__main__":
    fire.Fire(run_demo)

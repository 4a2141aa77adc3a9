"""GPU check at the paper's size: benchmark, the pre-training loop end to end, a few minutes of pre-training,
one fine-tuning epoch, one segmentation of real CT, each checked; exits non-zero when any step fails.

    python -m scripts.tools.gpu_check --out_dir runs/gpu_check      # a CUDA GPU: 6 min (H100) before the loop step
    python -m scripts.tools.gpu_check --dry_run --out_dir /tmp/gpu_dry     # the same steps, CPU-sized

Paper size: feature_size 48, 96^3 crops, 2 volumes x 2 crops, AMP (bf16 where the GPU has it).
Pre-training runs on generated phantoms plus the unlabelled real CT in ``real_ct_dir`` for about
``pretrain_seconds`` (the iteration count comes from the benchmark's step time), validating four times on
held-out volumes; the last validation's rotation accuracy must exceed ``min_rotation_accuracy`` (chance:
0.25). The loop step runs the bundle's pre-training on that data with each loader and fails when neither keeps
the GPU at 90% of the step alone's rate (``scripts.tools.pretrain_loop``). Writes ``summary.json`` and
``summary.md`` (plus ``benchmark.json``, ``loop.json`` and each step's log) to ``out_dir``; ``docs``: a page whose
planning table gets the benchmark's and the loop's rows (``docs/measurements.md``); ``benchmark_variants``:
e.g. ``plain,bundle,regional`` to time regional compilation too. The dry run uses
``configs/small*.json`` and checks only that every step works.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import fire
import nibabel as nib
import numpy as np
import torch

from scripts.atomic_files import refuse_bundle_folder
from scripts.errors import install_error_hook
from scripts.tools.demo import ROOT, bundle_command, loss_summary
from scripts.tools.phantoms import write_phantoms

REAL_CT = os.path.join(os.path.dirname(ROOT), "shared", "data", "real_ct")
# held out of pre-training for validation; the other *_ct.nii.gz files train
VALIDATION_CT = "crlm1004_abdomen_ct.nii.gz"
SEGMENTED_CT = "abdomen_pelvis_3mm_ct.nii.gz"


def _last(pattern: str, text: str) -> float | None:
    values = re.findall(pattern + r": ([0-9.]+(?:e-?[0-9]+)?)", text)
    return float(values[-1]) if values else None


def _last_probe(run: Path) -> dict | None:
    """The last pre-training probe report of ``run`` (``scripts.pretraining.probe``), without the confusion matrix."""
    reports = sorted(run.glob("probe/epoch_*.json"), key=lambda p: int(p.stem.split("_")[1]))
    if not reports:
        return None
    report = json.loads(reports[-1].read_text())
    report["rotation"].pop("confusion", None)
    return report


class _Check:
    """Runs the steps, keeps their figures and failures."""

    def __init__(self, out_dir: Path):
        self.out_dir, self.figures, self.failures = out_dir, {}, []

    def fail(self, step: str, why: str) -> None:
        print(f"FAIL [{step}] {why}", flush=True)
        self.failures.append(f"{step}: {why}")

    def bundle(self, step: str, configs: list[str], **overrides) -> tuple[bool, str, float]:
        """One bundle workflow in a subprocess; its output is streamed and kept in ``<step>.log``."""
        cmd = bundle_command(configs, **overrides)
        print(f"\n=== {step}\n$ {' '.join(cmd)}", flush=True)
        start = time.time()
        lines = []
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1"}
        with subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc:
            for line in proc.stdout:  # type: ignore[union-attr]
                print(line, end="", flush=True)
                lines.append(line)
        seconds = time.time() - start
        text = "".join(lines)
        (self.out_dir / f"{step}.log").write_text(text)
        if proc.returncode != 0:
            self.fail(step, f"exit code {proc.returncode} (log: {self.out_dir / f'{step}.log'})")
        return proc.returncode == 0, text, seconds


def gpu_check(
    out_dir: str = "runs/gpu_check",
    dry_run: bool = False,
    real_ct_dir: str = REAL_CT,
    pretrain_seconds: float = 240.0,
    min_rotation_accuracy: float = 0.5,
    benchmark_repeats: int = 5,
    benchmark_variants: str = "plain,bundle",
    num_workers: int = 8,
    seed: int = 0,
    docs: str | None = None,
) -> int:
    """Run the check; returns (and exits with) 0 when every step passed, 1 otherwise."""
    from scripts.tools import benchmark

    out = Path(refuse_bundle_folder(out_dir)).resolve()  # its models/ and runs would replace the bundle's
    if out.is_dir() and any(out.iterdir()):
        print(f"{out}: holds an earlier check; its results are replaced", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    check = _Check(out)
    start = time.time()
    if not dry_run and not torch.cuda.is_available():
        check.fail("device", "no CUDA device (use --dry_run on a CPU)")
        return _finish(check, out, start, dry_run)
    device = "cpu" if dry_run else "cuda"
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    amp = None if dry_run else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    size = (
        dict(feature_size=12, roi=64, batch=1, crops=1) if dry_run else dict(feature_size=48, roi=96, batch=2, crops=2)
    )
    window = json.loads(Path(ROOT, "configs", "small.json").read_text())["window_size"] if dry_run else 7
    check.figures.update(device=gpu, torch=torch.__version__, amp=amp, **size, window_size=window)
    print(f"gpu_check: {gpu}, torch {torch.__version__}, {size}, window {window}, amp {amp}", flush=True)

    # 1. benchmark: plain MONAI against the bundle's path, at this size
    try:
        bench = benchmark.run(
            **size,
            window_size=window,
            device=device,
            amp=amp,
            variants=benchmark_variants,
            repeats=1 if dry_run else benchmark_repeats,
            warmup=0 if dry_run else 1,
            out=str(out / "benchmark.json"),
            docs=docs,
        )
        check.figures["benchmark"] = {
            task: {v: {k: r[k] for k in ("median_s", "peak_gib")} for v, r in variants.items()}
            for task, variants in bench["tasks"].items()
        }
        step_s = bench["tasks"]["pretrain"]["bundle"]["median_s"]
    except Exception as e:  # a failed step is reported; the later steps still run
        check.fail("benchmark", f"{type(e).__name__}: {e}")
        step_s = 1.0

    # 2. data: phantoms (labelled) plus the unlabelled real CT, one real volume held out for validation
    data = out / "phantoms"
    datalist = write_phantoms(
        str(data), num_train=2 if dry_run else 8, num_val=1 if dry_run else 4, num_test=0, seed=seed
    )
    real = sorted(Path(real_ct_dir).glob("*_ct.nii.gz")) if os.path.isdir(real_ct_dir) else []
    train_sources, val_sources = [datalist], [datalist]
    if real and not dry_run:
        train_sources += [str(p) for p in real if p.name != VALIDATION_CT]
        val_sources += [str(p) for p in real if p.name == VALIDATION_CT]
    elif not real:
        print(f"(no real CT at {real_ct_dir}: pre-training and segmenting phantoms only)", flush=True)

    # 3. the pre-training loop end to end on that data: is the GPU waiting for the loader?
    _loop(check, out, size, window, device, amp, train_sources, dry_run, num_workers, docs)

    # 4. pre-training for about pretrain_seconds at this size
    iterations = 2 if dry_run else int(min(5000, max(20, 0.8 * pretrain_seconds / step_s)) // 4 * 4)
    interval = iterations if dry_run else iterations // 4
    models = out / "models"
    common = dict(dataset_dir=str(data), ckpt_dir=str(models), num_workers=0 if dry_run else num_workers)
    small = ["small_pretrain.json"] if dry_run else []
    ok, log, seconds = check.bundle(
        "pretrain",
        ["pretrain.json", *small],
        output_dir=str(out / "pretrain"),
        train_sources=train_sources,
        val_sources=val_sources,
        max_iterations=iterations,
        val_interval=interval,
        ckpt_interval=interval,
        image_interval=interval,
        log_interval=max(1, iterations // 40),
        # the paper's 500 warm-up iterations would fill a short run: warm up for its first tenth
        warmup_iterations=max(1, iterations // 10),
        **common,
    )
    if ok:
        first, last = loss_summary(str(out / "pretrain" / "losses.csv"))
        accuracy = _last("val_rotation_accuracy", log)
        check.figures["pretrain"] = {
            "iterations": iterations,
            "seconds": round(seconds, 1),
            "s_per_iteration_with_startup": round(seconds / iterations, 3),
            "losses_first": first,
            "losses_last": last,
            "val_rotation_accuracy": accuracy,
            "val_reconstruction_l1": _last("val_reconstruction_l1", log),
            "val_contrastive_top1": _last("val_contrastive_top1", log),
            "probe": _last_probe(out / "pretrain"),  # balanced rotation with interval and p-value, chance levels
        }
        if accuracy is None or not 0.0 <= accuracy <= 1.0:
            check.fail("pretrain", f"no validation rotation accuracy in the log (got {accuracy})")
        elif not dry_run and accuracy <= min_rotation_accuracy:
            check.fail("pretrain", f"validation rotation accuracy {accuracy:.3f} <= {min_rotation_accuracy}")
        if not dry_run and not last["total"] < first["total"]:
            check.fail("pretrain", f"total loss did not fall: {first['total']:.3f} -> {last['total']:.3f}")
        if not (models / "ssl_encoder.pt").is_file():
            check.fail("pretrain", "models/ssl_encoder.pt was not written")

    # 5. one fine-tuning epoch from the pre-trained encoder
    ok, log, seconds = check.bundle(
        "finetune",
        ["train.json", *(["small.json"] if dry_run else [])],
        output_dir=str(out / "train"),
        max_epochs=1,
        val_interval=1,
        pretrained_encoder=str(models / "ssl_encoder.pt"),
        **common,
    )
    if ok:
        dice = _last("val_mean_dice", log)
        check.figures["finetune"] = {"seconds": round(seconds, 1), "val_mean_dice": dice}
        if dice is None or not np.isfinite(dice):
            check.fail("finetune", f"no finite validation Dice in the log (got {dice})")
        if not (models / "model.pt").is_file():
            check.fail("finetune", "models/model.pt was not written")

    # 6. segment one real CT (a phantom without real data) and check the map lies on its grid
    source = next((p for p in real if p.name == SEGMENTED_CT), None) or next(data.glob("imagesTr/*.nii.gz"))
    inputs = out / "infer_input"
    shutil.rmtree(inputs, ignore_errors=True)
    inputs.mkdir()
    shutil.copy(source, inputs / source.name)
    ok, log, seconds = check.bundle(
        "infer",
        ["inference.json", *(["small.json"] if dry_run else [])],
        dataset_dir=str(inputs),
        output_dir=str(out / "inference"),
        ckpt_dir=str(models),
        cpu_engine="torch",  # the GPU's path; the dry run on a CPU checks the same steps without converting
    )
    if ok:
        seg = out / "inference" / source.name.replace(".nii.gz", "_seg.nii.gz")
        check.figures["infer"] = {"seconds": round(seconds, 1), "input": source.name}
        if not seg.is_file():
            check.fail("infer", f"{seg} was not written")
        else:
            image, label = nib.load(str(source)), nib.load(str(seg))
            labels = np.unique(np.asarray(label.dataobj))
            check.figures["infer"]["labels_found"] = [int(v) for v in labels]
            if label.shape[:3] != image.shape[:3] or not np.allclose(label.affine, image.affine, atol=1e-3):
                check.fail("infer", f"map {label.shape} / affine differ from the image {image.shape}")
            if labels.min() < 0 or labels.max() > 13:
                check.fail("infer", f"labels outside 0..13: {labels}")
    return _finish(check, out, start, dry_run)


def _loop(check: _Check, out: Path, size: dict, window: int, device: str, amp, sources, dry_run, workers, docs):
    from scripts.tools import benchmark

    small = json.loads(Path(ROOT, "configs", "small_pretrain.json").read_text())
    try:
        loop = benchmark.run(
            **{**size, "batch": 2},  # contrastive coding needs two crops per step
            window_size=window,
            pixdim=small["pixdim"] if dry_run else (1.5, 1.5, 2.0),
            device=device,
            amp=amp,
            tasks="pretrain_loop",
            data=sources,
            loaders="process,thread",
            loop_overrides={"num_workers": 0 if dry_run else workers},
            repeats=2 if dry_run else 10,
            warmup=1 if dry_run else 2,
            out=str(out / "loop.json"),
            docs=docs,
        )["loop"]
    except Exception as e:  # a failed step is reported; the later steps still run
        check.fail("loop", f"{type(e).__name__}: {e}")
        return
    finally:
        if device == "cuda":
            torch.cuda.empty_cache()
    keys = ("loop_s", "network_only_s", "busy_fraction", "throughput_ratio", "loader_only_s")
    check.figures["loop"] = {name: {k: round(r[k], 3) for k in keys} for name, r in loop.items()}
    best = max(r["throughput_ratio"] for r in loop.values())
    if not dry_run and best < 0.9:
        check.fail("loop", f"the pre-training loop runs at {best:.0%} of the step alone's rate (below 90%)")


def _finish(check: _Check, out: Path, start: float, dry_run: bool) -> int:
    check.figures["total_seconds"] = round(time.time() - start, 1)
    check.figures["failures"] = check.failures
    (out / "summary.json").write_text(json.dumps(check.figures, indent=2) + "\n")
    lines = [f"# GPU check{' (dry run)' if dry_run else ''}: {'PASS' if not check.failures else 'FAIL'}", ""]
    lines += [f"- {k}: {json.dumps(v)}" for k, v in check.figures.items()]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines), flush=True)
    return 1 if check.failures else 0


if __name__ == "__main__":
    install_error_hook(command=True)
    sys.exit(fire.Fire(gpu_check, serialize=lambda code: None))

"""Label-efficiency study in one command: does an encoder make fine-tuning better with few labelled volumes?

    python -m scripts.tools.label_study --datalist data/phantoms/dataset.json --dataset_dir data/phantoms \\
        --encoders "['scratch','models/ssl_encoder.pt']" --counts "[2,4,8]" --seeds "[0,1,2]" \\
        --overlays "['small.json']" --out_dir runs/study

Every cell (encoder x labelled-volume count x seed) fine-tunes ``train.json`` (plus the preset and overlays)
with the same budget and schedule (``--iterations``: the same optimiser steps for every cell at batch_size 1,
or ``--max_epochs``) on the first ``count`` volumes of one seeded order of the training list
(``scripts.tasks.splits``: smaller sets are subsets of larger ones), then evaluates on the datalist's own
validation list, the same for every cell. ``scratch`` starts from random weights; any other entry is a weight
file in a layout the bundle loads. ``--frozen True`` keeps the encoder frozen (a quick linear-probe-like check).
``--workers N`` runs N cells side by side, the CPU cores split between them.

Each cell lives in ``<out_dir>/cells/<encoder>_n<count>_s<seed>/`` and ends with ``result.json``; a rerun skips
the finished cells (resumable after a kill). Writes ``<out_dir>/study.csv`` (every cell, mean and per-class
Dice), ``<out_dir>/study.png`` (mean Dice against labelled volumes, one line per encoder, seeds as points,
mean +- 95% Student's t interval) and ``<out_dir>/paired.csv`` (each encoder minus scratch per count, paired
by seed, with a bootstrap 95% interval).
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import fire
import numpy as np

from scripts.atomic_files import BUNDLE_ROOT, atomic_path, refuse_bundle_folder
from scripts.errors import ConfigError, InputError, install_error_hook
from scripts.inputs import load_datalist_json
from scripts.tasks.splits import Split

FROZEN_ITERATIONS = 10**9  # freeze_encoder_iterations for the whole run


def cell_name(encoder: str, count: int, seed: int) -> str:
    label = "scratch" if encoder == "scratch" else os.path.splitext(os.path.basename(encoder))[0]
    return f"{label}_n{count}_s{seed}"


def worker_env(workers: int, cpus: int | None = None) -> dict:
    """The environment of one of ``workers`` cells run side by side: the CPUs split evenly between them (at
    least one thread each), since PyTorch would otherwise give every cell all cores and they would contend."""
    cpus = cpus or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    threads = str(max(1, cpus // workers))
    return {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads} if workers > 1 else dict(os.environ)


def _run(args: list[str], log: str, env: dict | None = None) -> None:
    with open(log, "w") as f:
        command = [sys.executable, "-m", "monai.bundle", "run", *args]
        proc = subprocess.run(command, cwd=BUNDLE_ROOT, stdout=f, stderr=f, env=env)
    if proc.returncode != 0:
        tail = open(log).read().strip().splitlines()[-1:] or [""]
        raise InputError(f"study cell failed (exit {proc.returncode}; log {log}): {tail[0]}")


def _configs(names: list[str]) -> str:
    return str([os.path.join(BUNDLE_ROOT, "configs", n) for n in names])


def training_cases(datalist: str, count: int, split_seed: int = 0) -> list[str]:
    """The ``count`` training images a cell trains on: the Split that train.json builds from ``label_fraction``
    and ``split_seed`` (one seeded order of the list, so smaller sets are subsets of larger ones)."""
    entries = load_datalist_json(datalist)["training"]
    split = Split(None, fraction=count / len(entries), seed=split_seed)
    return [e["image"] for e in split.select(entries, "training")]


def run_cell(encoder, count, seed, n_train, common: dict, configs: list, folder: str, frozen: bool, env=None) -> dict:
    """Fine-tune and evaluate one cell in ``folder`` (subprocesses with ``env``); returns (and writes) its result."""
    os.makedirs(folder, exist_ok=True)
    ids = {**common, "seed": seed, "label_fraction": count / n_train, "fold": "None"}
    ids.update(output_dir=os.path.join(folder, "runs"), ckpt_dir=os.path.join(folder, "models"), overwrite="True")
    if encoder != "scratch":
        ids["pretrained_encoder"] = os.path.abspath(encoder)
    if frozen:
        ids["freeze_encoder_iterations"] = FROZEN_ITERATIONS
    args = [a for key, value in ids.items() for a in (f"--{key}", str(value))]
    _run(["--config_file", _configs(["train.json", *configs]), *args], os.path.join(folder, "train.log"), env)
    evaluation = {k: v for k, v in ids.items() if k not in ("pretrained_encoder", "freeze_encoder_iterations")}
    evaluation["output_dir"] = os.path.join(folder, "eval")
    # each cell's model segments a few volumes once: converting it for the CPU engine would cost more than it saves
    evaluation["cpu_engine"] = "torch"
    args = [a for key, value in evaluation.items() for a in (f"--{key}", str(value))]
    _run(
        ["--config_file", _configs(["train.json", "evaluate.json", *configs]), *args],
        os.path.join(folder, "eval.log"),
        env,
    )
    with open(os.path.join(folder, "eval", "val_mean_dice_per_case.csv")) as f:
        mean_row = next(r for r in csv.DictReader(f) if r["case"] == "mean")
    result = {"encoder": encoder, "count": count, "seed": seed, "frozen": frozen}
    result["training_cases"] = training_cases(common["datalist"], count, int(common["split_seed"]))
    result["dice"] = {k: (float(v) if v else float("nan")) for k, v in mean_row.items() if k != "case"}
    with atomic_path(os.path.join(folder, "result.json")) as tmp, open(tmp, "w") as f:
        json.dump(result, f, indent=2)  # written last: its presence marks the cell finished
    return result


def iteration_budget(iterations: int, count: int) -> dict:
    """Overrides that give a cell of ``count`` volumes ``iterations`` optimiser steps (one volume per step, so
    ``iterations / count`` epochs) with the warm-up over the same first 1/16 of them as ``small.json``: every
    count then gets the same compute and the same schedule in steps."""
    if iterations % count:
        raise ConfigError(f"iterations {iterations}: must be a multiple of each labelled-volume count ({count})")
    epochs = iterations // count
    return {"max_epochs": epochs, "val_interval": epochs, "warmup_epochs": max(1, iterations // 16) / count}


def bootstrap_interval(values, reps: int = 10000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of ``values`` (a single value: that value twice)."""
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return float(values.mean()), float(values.mean())
    means = np.random.default_rng(seed).choice(values, (reps, values.size)).mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def paired_table(results: list[dict]) -> list[dict]:
    """Each encoder minus scratch at each count, paired by seed, with a bootstrap 95% interval."""
    by = {(r["encoder"], r["count"], r["seed"]): r["dice"]["mean"] for r in results}
    rows = []
    for encoder in sorted({r["encoder"] for r in results} - {"scratch"}):
        for count in sorted({r["count"] for r in results}):
            diffs = [by[(encoder, count, s)] - by[("scratch", count, s)] for (e, c, s) in by
                     if e == encoder and c == count and ("scratch", count, s) in by]  # fmt: skip
            if diffs:
                low, high = bootstrap_interval(diffs)
                rows.append({"encoder": encoder, "count": count, "seeds": len(diffs),
                             "mean_difference": float(np.mean(diffs)), "low": low, "high": high})  # fmt: skip
    return rows


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import t

    fig, ax = plt.subplots(figsize=(6, 4))
    encoders = sorted({r["encoder"] for r in results}, key=lambda e: e != "scratch")
    for i, encoder in enumerate(encoders):
        counts = sorted({r["count"] for r in results if r["encoder"] == encoder})
        shift = 2 ** (0.04 * (i - (len(encoders) - 1) / 2))  # encoders side by side at each count
        means, errors = [], []
        for count in counts:
            values = [r["dice"]["mean"] for r in results if r["encoder"] == encoder and r["count"] == count]
            ax.scatter([count * shift] * len(values), values, color=f"C{i}", alpha=0.4, s=12)
            means.append(float(np.mean(values)))
            # Student's t: with 3 seeds the normal 1.96 would make the interval 2.2x too narrow
            n = len(values)
            errors.append(float(t.ppf(0.975, n - 1)) * float(np.std(values, ddof=1)) / math.sqrt(n) if n > 1 else 0)
        label = "scratch" if encoder == "scratch" else os.path.basename(encoder)
        ax.errorbar([c * shift for c in counts], means, yerr=errors, color=f"C{i}", marker="o", capsize=3, label=label)
    ax.set_xscale("log", base=2)
    all_counts = sorted({r["count"] for r in results})
    ax.set_xticks(all_counts, [str(c) for c in all_counts])
    ax.minorticks_off()
    ax.set_xlabel("labelled training volumes")
    ax.set_ylabel("mean Dice (held-out list)")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def study(
    datalist: str,
    dataset_dir: str,
    out_dir: str = "runs/study",
    encoders=("scratch", "models/ssl_encoder.pt"),
    counts=(2, 4, 8),
    seeds=(0, 1, 2),
    preset: str = "",
    overlays=(),
    max_epochs: int | None = None,
    iterations: int | None = None,
    frozen=False,
    split_seed: int = 0,
    workers: int = 1,
) -> list[dict]:
    """Run (or resume) the study; returns every cell's result. See the module docstring. ``workers`` cells run
    side by side, the CPU cores split between them (on 2 cores two one-thread cells finish about 1.2x sooner
    than one two-thread cell at a time)."""
    from scripts.options import flag

    frozen = flag("frozen", frozen)
    refuse_bundle_folder(out_dir)
    lists = load_datalist_json(datalist)
    n_train, n_val = len(lists.get("training", [])), len(lists.get("validation", []))
    if not n_val:
        raise InputError(f"datalist {datalist}: no 'validation' list to evaluate every cell on")
    if any(int(c) < 1 or int(c) > n_train for c in counts):
        raise ConfigError(f"counts {list(counts)}: each between 1 and the {n_train} training volumes of {datalist}")
    for encoder in encoders:
        if encoder != "scratch" and not os.path.isfile(encoder):
            raise InputError(f"encoder {encoder}: file not found")
    configs = ([f"tasks/{preset}.json"] if preset else []) + list(overlays)
    if max_epochs and iterations:
        raise ConfigError("give max_epochs (the same epochs for every cell) or iterations, not both")
    budgets = {int(c): iteration_budget(int(iterations), int(c)) if iterations else {} for c in counts}
    common = {"dataset_dir": os.path.abspath(dataset_dir), "datalist": os.path.abspath(datalist)}
    common["split_seed"] = split_seed
    if max_epochs:
        common.update(max_epochs=max_epochs, val_interval=max_epochs)
    cells = [(e, int(c), int(s)) for e in encoders for c in sorted(counts) for s in seeds]
    if int(workers) < 1:
        raise ConfigError(f"workers {workers}: at least 1")
    results, pending = {}, []
    for cell in cells:
        marker = os.path.join(out_dir, "cells", cell_name(*cell), "result.json")
        if os.path.isfile(marker):
            with open(marker) as f:
                results[cell] = json.load(f)
            print(f"{cell_name(*cell)}: finished earlier", flush=True)
        else:
            pending.append(cell)
    start, env = time.time(), worker_env(int(workers))

    def fine_tune(cell):
        folder = os.path.join(out_dir, "cells", cell_name(*cell))
        return run_cell(*cell, n_train, {**common, **budgets[cell[1]]}, configs, folder, frozen, env)

    # cells start from this thread only, so after a failure no new cell starts (the running ones finish, on disk)
    queue, running, computed = list(pending), {}, 0
    with ThreadPoolExecutor(int(workers)) as pool:
        while queue or running:
            while queue and len(running) < int(workers):
                cell = queue.pop(0)
                running[pool.submit(fine_tune, cell)] = cell
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                cell = running.pop(future)
                results[cell] = future.result()
                computed += 1
                eta = (time.time() - start) / computed * (len(pending) - computed)
                print(
                    f"[{len(cells) - len(pending) + computed}/{len(cells)}] {cell_name(*cell)}: mean Dice "
                    f"{results[cell]['dice']['mean']:.4f} (about {eta / 60:.1f} min left)",
                    flush=True,
                )
    results = [results[cell] for cell in cells]
    _write_tables(results, out_dir)
    return results


def _write_tables(results: list[dict], out_dir: str) -> None:
    classes = [k for k in results[0]["dice"] if k != "mean"]
    with atomic_path(os.path.join(out_dir, "study.csv")) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["encoder", "count", "seed", "frozen", "mean_dice", *classes])
        for r in results:
            writer.writerow([r["encoder"], r["count"], r["seed"], r["frozen"], f"{r['dice']['mean']:.4f}",
                             *(f"{r['dice'][c]:.4f}" for c in classes)])  # fmt: skip
    rows = paired_table(results)
    with atomic_path(os.path.join(out_dir, "paired.csv")) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["encoder", "count", "seeds", "mean_difference", "low", "high"])
        writer.writeheader()
        writer.writerows(rows)
    plot(results, os.path.join(out_dir, "study.png"))
    print(f"wrote {out_dir}/study.csv, study.png and paired.csv")


if __name__ == "__main__":
    install_error_hook(command=True)
    fire.Fire(study, serialize=lambda result: None)

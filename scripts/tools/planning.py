"""The planning table of ``docs/measurements.md``: the benchmark's figures as rows users can plan with.

``python -m scripts.tools.benchmark ... --docs docs/measurements.md`` turns its results into rows (date, machine,
task, size, path, seconds, first call, peak memory, notes) and writes them between the two marker lines below in
that file. A row measured again (same machine, task, size and path) replaces the older one; other rows stay.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from scripts.atomic_files import atomic_path
from scripts.errors import InputError

START = "<!-- planning table: rows written by scripts.tools.benchmark --docs; do not edit by hand -->"
END = "<!-- planning table end -->"
HEADER = (
    "| date | machine | task | size | path | seconds (median) | first call s | peak memory GiB | notes |",
    "|---|---|---|---|---|---|---|---|---|",
)
KEY_COLUMNS = (1, 2, 3, 4)  # machine, task, size, path


def machine(device) -> str:
    """A short description of where the figures were measured: the GPU's name, or the CPU's model, the cores this
    process may use and the memory."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = "CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 if hasattr(os, "sysconf") else 0
    return f"{model}, {cores} cores, {memory:.0f} GiB"


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _size(s: dict, task: str) -> str:
    roi = "x".join(str(v) for v in s["roi"])
    net = f"feature_size {s['feature_size']}, window {s['window_size']}, {roi} crops"
    amp = f", {s['amp']} autocast" if s.get("amp") else ""
    if task == "infer":
        image = f" ({Path(s['image']).name.split('.')[0]})" if s.get("image") else " (noise)"
        volume = "x".join(str(v) for v in s["volume"])
        return f"{net}, {volume} voxels{image}, sw_batch {s['sw_batch_size']}, overlap {s['overlap']}{amp}"
    if task == "finetune":
        return f"{net}, {_count(s['batch'] * s['crops'], 'crop')}{amp}"
    if task == "pretrain_loop":
        sources = s.get("data") or []
        sources = [sources] if isinstance(sources, str) else sources
        data = " + ".join(Path(d).name for d in sources) or "the configs' dataset_dir"
        spacing = "x".join(f"{v:g}" for v in s["pixdim"])
        return f"{net}, {_count(s['batch'], 'volume')} x {_count(s['crops'], 'crop')}{amp}, {data} at {spacing} mm"
    return f"{net}, {_count(s['batch'], 'volume')} x {_count(s['crops'], 'crop')}{amp}"


TASK_NAMES = {
    "pretrain": "pre-training iteration (network step)",
    "finetune": "fine-tuning iteration (network step)",
    "infer": "segment one volume (sliding window)",
    "pretrain_loop": "pre-training loop, end to end",
}


def rows(results: dict, date: str | None = None) -> list[str]:
    """Markdown table rows for ``results`` (what ``scripts.tools.benchmark.run`` returns)."""
    s = results["settings"]
    date = date or datetime.date.today().isoformat()
    where = f"{s['machine']}, {s['threads']} threads" if s["device_type"] == "cpu" else s["machine"]
    out = []
    for task, variants in results["tasks"].items():
        for variant, r in variants.items():
            notes = (
                f"labels vs {next(iter(variants))}: lowest Dice {r['label_dice_min']:.4f}"
                if "label_dice_min" in r
                else ""
            )
            path = f"{variant} (fell back to PyTorch)" if r.get("engine") == "torch" else variant
            cells = [date, where, TASK_NAMES[task], _size(s, task), path]
            cells += [f"{r['median_s']:.2f}", f"{r['first_s']:.2f}", f"{r['peak_gib']:.2f}", notes]
            out.append("| " + " | ".join(cells) + " |")
    for loader, r in results.get("loop", {}).items():
        notes = (
            f"device busy {r['busy_fraction']:.0%}; step alone {r['network_only_s']:.2f} s "
            f"({r['throughput_ratio']:.0%} of its rate); waiting for data {r['data_wait_s']:.3f} s per iteration; "
            f"the loader alone {r['loader_only_s']:.3f} s per batch"
        )
        cells = [date, where, TASK_NAMES["pretrain_loop"], _size(s, "pretrain_loop")]
        changed = "".join(f", {k} {v}" for k, v in (s.get("loop_overrides") or {}).items())
        cells += [f"{loader} loader, {r['num_workers']} workers{changed}", f"{r['loop_s']:.2f}", f"{r['setup_s']:.2f}"]
        cells += [f"{r['peak_gib']:.2f}", notes + f"; first call: set-up incl. caching {r['setup_s']:.0f} s"]
        out.append("| " + " | ".join(cells) + " |")
    return out


def _key(row: str) -> tuple:
    cells = [c.strip() for c in row.strip().strip("|").split("|")]
    return tuple(cells[i] for i in KEY_COLUMNS)


def write(path, new_rows: list[str]) -> None:
    """Put ``new_rows`` into the planning table of ``path`` (replacing rows with the same key), keeping the file's
    other text; the table's marker lines must be there."""
    path = Path(path)
    text = path.read_text()
    if START not in text or END not in text:
        raise InputError(f"{path}: no planning table (the marker lines {START!r} and {END!r})")
    head, rest = text.split(START, 1)
    table, tail = rest.split(END, 1)
    old = [line for line in table.strip().splitlines() if line.startswith("| ") and line not in HEADER]
    keys = {_key(r) for r in new_rows}
    kept = [r for r in old if _key(r) not in keys]
    body = "\n".join([START, *HEADER, *kept, *new_rows, END])
    with atomic_path(str(path)) as tmp:
        Path(tmp).write_text(head + body + tail)

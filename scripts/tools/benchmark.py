"""Side-by-side timing of plain MONAI Swin UNETR against this bundle's fast path, in one process.

    python -m scripts.tools.benchmark --feature_size 48 --roi 96 --batch 2 --crops 2 --device cuda --amp bf16

Each repeat runs every variant once, in turn (interleaved), so drifts of the machine hit all variants
alike. Per task (pre-training iteration, fine-tuning iteration, sliding-window inference of one volume)
it prints min / median seconds, the ratio of medians to ``plain`` and the peak memory, and writes
the figures as JSON. Variants:

- ``plain``: MONAI's SwinUNETR as is (matrix attention), AdamW with PyTorch's default implementation.
- ``bundle``: what the configs run: SDPA window attention on CUDA (``scripts.network.speed``), MONAI's fused
  attention whenever no gradient is taken, fused AdamW.
- ``sdpa``: ``bundle`` with the SDPA kernel also on the CPU.
- ``compile``: ``bundle`` plus ``torch.compile`` of the whole network (the first, compiling call is reported
  separately); ``regional``: ``bundle`` with each Swin block compiled on its own.
- ``checkpoint``: ``bundle`` plus activation checkpointing (``use_checkpoint``), for memory.
- ``openvino``: inference only, on the CPU: the windows through OpenVINO at float32
  (``scripts.inference.cpu_engine``, what inference and evaluation run on a CPU); ``openvino_bf16`` the same in
  bfloat16. Conversion and compilation are the first call's; the labels are compared with the first variant's
  (per-class Dice, reported as ``label_dice_min``).

A real CT for the inference task (``--image``) is reoriented to RAS, resampled to ``--pixdim`` and windowed as
``configs/inference.json`` does; otherwise the volume is uniform noise of ``--volume`` voxels.

Task ``pretrain_loop`` runs the bundle's real pre-training loop (``configs/pretrain.json`` at the same sizes, on
``--data``: loading, caching, crops, views, step) once per ``--loaders`` entry and reports how much of its time
the step takes and its rate against the step alone (``scripts.tools.pretrain_loop``); ``--repeats`` and
``--warmup`` count its iterations. Peak memory is CUDA's allocated peak on a GPU and the process's resident peak
on a CPU (everything the process holds, all variants' networks included). ``--docs docs/measurements.md`` writes
the figures into that page's planning table (``scripts.tools.planning``).
"""

from __future__ import annotations

import copy
import json
import logging
import statistics
import tempfile
import time
from types import SimpleNamespace

import fire
import torch
from monai.inferers import SlidingWindowInferer
from monai.losses import DiceCELoss
from monai.networks.nets import SwinUNETR

from scripts.atomic_files import atomic_path
from scripts.errors import ConfigError, install_error_hook
from scripts.inference.cpu_engine import EngineSlidingWindowInferer
from scripts.inputs import require_file
from scripts.network.pretraining import SSLHead
from scripts.network.speed import compile_network, use_attention
from scripts.options import choice
from scripts.pretraining.loss import SSLLoss
from scripts.pretraining.steps import SSLTrainStep
from scripts.tools import planning, pretrain_loop

VARIANTS = ("plain", "bundle", "sdpa", "compile", "regional", "checkpoint", "openvino", "openvino_bf16")
ENGINE_VARIANTS = {"openvino": "f32", "openvino_bf16": "bf16"}
WORKLOADS = ("pretrain", "finetune", "infer")
LOOP_TASK = "pretrain_loop"
AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Case:
    """One variant of one task: its network, optimizer and a ``run()`` doing one timed unit of work."""

    def __init__(self, task, variant, template, device, amp_dtype, opts):
        self.task, self.variant, self.device, self.amp_dtype = task, variant, device, amp_dtype
        network = copy.deepcopy(template)
        if variant == "checkpoint":
            for module in network.modules():
                if hasattr(module, "use_checkpoint"):
                    module.use_checkpoint = True
        if variant in ENGINE_VARIANTS and (task != "infer" or device.type != "cpu"):
            raise ConfigError(f"variant {variant} is CPU inference only: use --tasks infer --device cpu")
        # the configs' default kernel: SDPA on CUDA, MONAI's matrix path in CPU training (measured faster there)
        sdpa = variant == "sdpa" or (variant != "plain" and device.type == "cuda")
        use_attention(network, "sdpa" if sdpa else "monai")
        for module in network.modules():
            if hasattr(module, "use_flash_attention"):
                module.use_flash_attention = variant != "plain"
        compiled = {"compile": True, "regional": "regional"}.get(variant, False)
        self.network = compile_network(network.to(device), enabled=compiled)
        fused = {} if variant == "plain" else {"fused": True}
        self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=1e-4, **fused)
        self.opts = opts
        self.scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
        generator = torch.Generator().manual_seed(0)
        roi, n = opts["roi"], opts["batch"] * opts["crops"]
        if task == "pretrain":
            self.step = SSLTrainStep(max_grad_norm=1.0)
            self.engine = SimpleNamespace(
                network=self.network,
                optimizer=self.optimizer,
                loss_function=SSLLoss(),
                amp=bool(amp_dtype),
                amp_kwargs={"dtype": amp_dtype} if amp_dtype else {},
                scaler=self.scaler,
                state=SimpleNamespace(device=device),
            )
            self.x = torch.rand((n, 1, *roi), generator=generator)
        elif task == "finetune":
            self.loss = DiceCELoss(to_onehot_y=True, softmax=True)
            self.x = torch.rand((n, 1, *roi), generator=generator).to(device)
            self.y = torch.randint(0, opts["classes"], (n, 1, *roi), generator=generator).to(device)
        else:
            window = dict(roi_size=roi, sw_batch_size=opts["sw_batch_size"], overlap=opts["overlap"], mode="gaussian")
            if variant in ENGINE_VARIANTS:
                self.inferer = EngineSlidingWindowInferer(
                    **window, engine="openvino", precision=ENGINE_VARIANTS[variant], cache_dir=opts["cache_dir"]
                )
            else:
                self.inferer = SlidingWindowInferer(**window)
            self.x = (
                opts["image"] if opts["image"] is not None else torch.rand((1, 1, *opts["volume"]), generator=generator)
            )
            self.x = self.x.to(device)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=bool(self.amp_dtype))

    def run(self):
        if self.task == "pretrain":
            return self.step(self.engine, {"image": self.x})["loss"]
        if self.task == "finetune":
            self.network.train()
            self.optimizer.zero_grad(set_to_none=True)
            with self._autocast():
                loss = self.loss(self.network(self.x).float(), self.y)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
            return loss
        self.network.eval()
        with torch.inference_mode(), self._autocast():
            return self.inferer(self.x, self.network)


def reset_peak(device: torch.device) -> None:
    """Start a new peak: CUDA's allocated peak, or on Linux the process's resident high-water mark."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # 5: reset the peak resident set size (Linux >= 4.0)
    except OSError:
        pass  # then the peak is the process's since its start


def peak_gib(device: torch.device) -> float:
    """The peak since ``reset_peak`` in GiB (on a CPU without /proc: the process's peak, from ``resource``)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 2**20
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _timed(case: _Case) -> tuple[float, float]:
    """Seconds of one ``case.run()`` and the peak memory (GiB, see ``peak_gib``) during it; an inference case
    keeps its labels (``case.labels``) for the comparison between variants."""
    reset_peak(case.device)
    _sync(case.device)
    start = time.perf_counter()
    out = case.run()
    _sync(case.device)
    seconds = time.perf_counter() - start
    peak = peak_gib(case.device)
    if case.task == "infer":
        case.labels = out.argmax(1).cpu()
    return seconds, peak


def label_dice(a: torch.Tensor, b: torch.Tensor, classes: int) -> dict:
    """Dice between two label maps for each class present in either (``{class: dice}``)."""
    out = {}
    for c in range(classes):
        x, y = a == c, b == c
        total = int(x.sum() + y.sum())
        if total:
            out[c] = 2 * int((x & y).sum()) / total
    return out


def load_volume(path: str, pixdim, a_min: float, a_max: float) -> torch.Tensor:
    """``(1, 1, *spatial)`` float32: the image at ``path`` as ``configs/inference.json`` prepares it."""
    from monai.transforms import (
        Compose,
        CropForeground,
        EnsureChannelFirst,
        LoadImage,
        Orientation,
        ScaleIntensityRange,
        Spacing,
    )
    from monai.transforms.utils import is_positive

    prepare = Compose(
        [
            LoadImage(image_only=True),
            EnsureChannelFirst(),
            Orientation(axcodes="RAS"),
            Spacing(pixdim=pixdim, mode="bilinear"),
            ScaleIntensityRange(a_min=a_min, a_max=a_max, b_min=0.0, b_max=1.0, clip=True),
            CropForeground(select_fn=is_positive, allow_smaller=True),
        ]
    )
    return torch.as_tensor(prepare(path)).float()[None]


def _side3(value, name: str, multiple: int = 32) -> tuple[int, int, int]:
    sides = (value,) * 3 if isinstance(value, int) else tuple(int(v) for v in value)
    if len(sides) != 3 or min(sides) < multiple or any(s % multiple for s in sides):
        raise ConfigError(
            f"{name} must be one int or three ints, each a multiple of {multiple} (>= {multiple}), got {value!r}"
        )
    return sides  # type: ignore[return-value]


def _split(value, allowed: tuple, name: str) -> list[str]:
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v) for v in value]
    unknown = [v for v in items if v not in allowed]
    if unknown or not items:
        raise ConfigError(f"{name}: unknown {unknown} (choose from {', '.join(allowed)})")
    return items


def run(
    feature_size: int = 12,
    roi=64,
    batch: int = 1,
    crops: int = 2,
    volume=None,
    image: str | None = None,
    pixdim=(1.5, 1.5, 2.0),
    a_min: float = -175.0,
    a_max: float = 250.0,
    cache_dir: str | None = None,
    window_size: int = 7,
    classes: int = 14,
    sw_batch_size: int = 2,
    overlap: float = 0.25,
    device: str = "auto",
    amp: str | None = None,
    tasks="pretrain,finetune,infer",
    variants="plain,bundle",
    repeats: int = 5,
    warmup: int = 1,
    threads: int | None = None,
    seed: int = 0,
    data: str | None = None,
    loaders="process,thread",
    loop_overrides: dict | None = None,
    out: str | None = "benchmark.json",
    docs: str | None = None,
) -> dict:
    """Time the tasks for each variant; print a table and write ``out`` (JSON).

    Args:
        feature_size: Swin embedding size (paper: 48). roi: crop side(s) (paper: 96).
        batch, crops: volumes per step and crops per volume (pre-training makes two views of each crop).
        volume: side(s) of the noise volume segmented by sliding window (default 1.5 x roi, rounded to 32).
        image: a CT (NIfTI, DICOM folder) to segment instead, prepared at ``pixdim`` with the window
            ``[a_min, a_max]``. cache_dir: where the OpenVINO variants keep their converted model (default: a
            temporary folder).
        window_size: Swin window (paper: 7), for all variants. amp: None, "fp16" or "bf16".
        tasks, variants: comma-separated choices (see the module docstring).
        repeats, warmup: timed and untimed rounds (the first call of each variant, with its compilation and
            allocations, is reported apart); threads: torch CPU threads (default: torch's).
        data: pre-training sources of ``pretrain_loop`` (a folder, glob or datalist, or a list; default the config's
            ``dataset_dir``, the demo's phantoms); loaders: ``process`` and/or ``thread``; loop_overrides: more
            config overrides for the loop (e.g. ``{"cache_rate": 0.0}``).
        docs: a page with a planning table (``docs/measurements.md``) to write the figures into.
    """
    if amp is not None:
        choice("amp", amp, tuple(AMP_DTYPES))
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"repeats must be at least 1 and warmup at least 0, got {repeats} and {warmup}")
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    if threads:
        torch.set_num_threads(threads)
    roi3 = _side3(roi, "roi")
    volume3 = _side3(volume if volume is not None else [32 * round(1.5 * s / 32) for s in roi3], "volume", 1)
    task_list, variant_list = _split(tasks, WORKLOADS + (LOOP_TASK,), "tasks"), _split(variants, VARIANTS, "variants")
    loader_list = _split(loaders, pretrain_loop.LOADERS, "loaders") if LOOP_TASK in task_list else []
    volume_image = None
    if image is not None and "infer" in task_list:
        volume_image = load_volume(str(require_file(image, "image")), pixdim, a_min, a_max)
        volume3 = tuple(volume_image.shape[2:])
    opts = dict(roi=roi3, batch=batch, crops=crops, volume=volume3, classes=classes, image=volume_image)
    opts["cache_dir"] = cache_dir or tempfile.mkdtemp(prefix="benchmark_openvino_")
    opts.update(sw_batch_size=sw_batch_size, overlap=overlap)
    amp_dtype = AMP_DTYPES.get(amp) if amp else None
    results: dict = {
        "settings": {
            "feature_size": feature_size,
            "roi": roi3,
            "batch": batch,
            "crops": crops,
            "volume": volume3,
            "image": image,
            "window_size": window_size,
            "amp": amp,
            "repeats": repeats,
            "machine": planning.machine(dev),
            "device_type": dev.type,
            "pixdim": list(pixdim),
            "sw_batch_size": sw_batch_size,
            "overlap": overlap,
            "loop_overrides": loop_overrides,
            "data": data,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "tasks": {},
    }
    for task in [t for t in task_list if t != LOOP_TASK]:
        torch.manual_seed(seed)
        if task == "pretrain":
            template = SSLHead(feature_size=feature_size, window_size=window_size)
        else:
            template = SwinUNETR(
                in_channels=1, out_channels=classes, feature_size=feature_size, window_size=window_size
            )
        cases = {v: _Case(task, v, template, dev, amp_dtype, opts) for v in variant_list}
        first: dict = {}
        for v, case in cases.items():  # untimed rounds: allocator, kernel selection, compilation
            for _ in range(warmup):
                seconds = _timed(case)[0]
                first.setdefault(v, seconds)
        times: dict = {v: [] for v in cases}
        peaks: dict = {v: 0.0 for v in cases}
        for r in range(repeats):
            for v, case in cases.items():
                seconds, peak = _timed(case)
                times[v].append(seconds)
                peaks[v] = max(peaks[v], peak)
            print(f"{task}: round {r + 1}/{repeats} " + " ".join(f"{v} {times[v][-1]:.3f}s" for v in cases), flush=True)
        first = {v: first.get(v, times[v][0]) for v in cases}  # without warm-up the first call is timed
        base = statistics.median(times[variant_list[0]])
        results["tasks"][task] = {
            v: {
                "min_s": min(times[v]),
                "median_s": statistics.median(times[v]),
                "first_s": first[v],
                "speedup_vs_" + variant_list[0]: base / statistics.median(times[v]),
                "peak_gib": peaks[v],
                "times_s": times[v],
            }
            for v in cases
        }
        if task == "infer":
            for v in variant_list:
                if v in ENGINE_VARIANTS:  # the engine falls back to PyTorch (with a warning) when its check fails
                    results["tasks"][task][v]["engine"] = cases[v].inferer.ran_on(cases[v].network, dev)
            for v in variant_list[1:]:
                dice = label_dice(cases[variant_list[0]].labels, cases[v].labels, classes)
                results["tasks"][task][v]["label_dice"] = dice
                results["tasks"][task][v]["label_dice_min"] = min(dice.values())
        del cases
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    if loader_list:
        results["loop"] = _loops(
            loader_list, results["settings"], dev, amp_dtype, data, loop_overrides, repeats, warmup
        )
    print(table(results))
    if out:
        with atomic_path(out) as tmp:
            with open(tmp, "w") as f:
                json.dump(results, f, indent=2)
        print(f"wrote {out}")
    if docs:
        planning.write(docs, planning.rows(results))
        print(f"wrote the planning rows into {docs}")
    return results


def _loops(loaders, s: dict, dev, amp_dtype, data, overrides, iterations: int, warmup: int) -> dict:
    """``pretrain_loop.measure`` per loader at the benchmark's sizes (each with its peak memory)."""
    config = {
        "feature_size": s["feature_size"],
        "window_size": s["window_size"],
        "roi_size": list(s["roi"]),
        "batch_size": s["batch"],
        "num_samples": s["crops"],
        "pixdim": s["pixdim"],
        "device": f"$torch.device({str(dev)!r})",
        "amp": bool(amp_dtype),
        "amp_dtype": str(amp_dtype or torch.float32).replace("torch.", ""),
    }
    if data is not None:
        config["train_sources"] = [str(d) for d in data] if isinstance(data, (list, tuple)) else [str(data)]
    out = {}
    for loader in loaders:
        reset_peak(dev)
        out[loader] = pretrain_loop.measure({**config, **(overrides or {})}, iterations, warmup, loader)
        out[loader]["peak_gib"] = peak_gib(dev)
    return out


def table(results: dict) -> str:
    """The figures as a Markdown table."""
    s = results["settings"]
    image = f" ({s['image']})" if s.get("image") else ""
    lines = [
        f"feature_size {s['feature_size']}, roi {s['roi']}, batch {s['batch']} x {s['crops']} crops, "
        f"volume {s['volume']}{image}, window {s['window_size']}, amp {s['amp']}, {s['machine']}, "
        f"{s['threads']} threads, torch {s['torch']}, {s['repeats']} rounds",
    ]
    if results["tasks"]:
        lines += [
            "",
            "| task | variant | min s | median s | first s | speed-up | peak GiB | labels: min Dice |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
    for task, variants in results["tasks"].items():
        for v, r in variants.items():
            ratio = next(value for key, value in r.items() if key.startswith("speedup_vs_"))
            dice = f"{r['label_dice_min']:.4f}" if "label_dice_min" in r else "-"
            v = f"{v} (ran on PyTorch)" if r.get("engine") == "torch" else v
            lines.append(
                f"| {task} | {v} | {r['min_s']:.3f} | {r['median_s']:.3f} | {r['first_s']:.3f} | {ratio:.2f}x "
                f"| {r['peak_gib']:.2f} | {dice} |"
            )
    if results.get("loop"):
        lines += [
            "",
            "| pre-training loop | workers | s / iteration | step s | waiting for data s | other s | device busy "
            "| step alone s | loop rate / step-alone rate | loader alone s | set-up s | peak GiB |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for loader, r in results["loop"].items():
            lines.append(
                f"| {loader} | {r['num_workers']} | {r['loop_s']:.3f} | {r['step_s']:.3f} | {r['data_wait_s']:.3f} "
                f"| {r['other_s']:.3f} | {r['busy_fraction']:.1%} | {r['network_only_s']:.3f} "
                f"| {r['throughput_ratio']:.1%} | {r['loader_only_s']:.3f} | {r['setup_s']:.1f} | {r['peak_gib']:.2f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")  # conversion times
    install_error_hook(command=True)
    fire.Fire(run, serialize=lambda result: None)  # the table is printed; the dict is for callers

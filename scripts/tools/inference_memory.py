"""Peak memory and time of segmenting one CT: against its number of slices, and per postprocessing option.

    python -m scripts.tools.inference_memory sweep --slices "[100,250,500]"
    python -m scripts.tools.inference_memory sweep --slices "[100]" --configs "['inference.json']"
    python -m scripts.tools.inference_memory compare --slices 240
    python -m scripts.tools.inference_memory compare --slices 240 --classes 2   # what grows with the classes

The CT is a phantom (``scripts.tools.phantoms``) at 0.74 x 0.74 mm in-plane, padded with air to 512 x 512,
with N slices over its 210 mm. Every figure comes from a child process of its own (peak resident memory,
``ru_maxrss``, and wall time), so one run does not inherit another's memory.

``sweep``: the bundle's inference command (``configs`` plus ``small.json`` unless ``configs`` is given),
random weights of the configs' size, on the CPU, one CT per slice count; also the estimate inference checks
volumes against before the compute (``scripts.inference.memory``).

``compare``: the postprocessing options on one CT, with the phantom's own organs, smoothed, as the network's
class scores on its grid: ``by slabs`` (the configs' ``InvertedLabelsd``: the scores sampled where each input
voxel lies on the network's grid, a few input slices at a time, only the ``uint8`` labels at full resolution),
``per class`` (``Invertd`` of one class at a time with a running argmax: ``InvertedLabelsd``'s path for images
without their input grid's metadata), ``all at once`` (``Invertd`` of every class, then argmax: MONAI's usual
chain, float64 resampling as MONAI's default) and ``argmax first`` (argmax on the network's grid, the label
map inverted with nearest neighbour); per option peak memory, time and per-organ Dice against ``all at once``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import fire
import nibabel as nib
import numpy as np

_ROOT = Path(__file__).resolve().parents[2]
OPTIONS = ("all at once", "per class", "by slabs", "argmax first")
INPLANE = 0.742  # mm: the phantom's 380 mm field of view in 512 columns


def phantom_ct(folder: Path, slices: int, seed: int = 0) -> tuple[Path, Path]:
    """``(image, label)`` NIfTI files of a 512 x 512 x ``slices`` phantom CT."""
    from scripts.tools.phantoms import generate_phantom

    hu, label, affine = generate_phantom(seed, spacing=(INPLANE, INPLANE, 210.0 / slices), vary_spacing=False)
    pad = [(0, max(0, 512 - s)) for s in hu.shape[:2]] + [(0, 0)]
    hu, label = np.pad(hu, pad, constant_values=-1000), np.pad(label, pad)
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / f"ct{slices}.nii.gz", folder.parent / f"label{slices}.nii.gz"
    nib.save(nib.Nifti1Image(hu.astype(np.int16), affine), paths[0])
    nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), paths[1])
    return paths


def random_model(configs: list[str], folder: Path) -> Path:
    """``model.pt`` of the configs' network with random weights."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(_ROOT / "configs" / c) for c in configs])
    parser.update({"bundle_root": str(_ROOT), "ckpt_path": ""})
    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(parser.get_parsed_content("network_def").state_dict(), folder / "model.pt")
    return folder


def make(folder: str, slices: int, configs=None) -> None:
    """Write the phantom CT (and, with ``configs``, random weights) under ``folder``: run as a child process,
    because a child's peak memory counts its parent's memory at the fork (Linux keeps it across exec)."""
    phantom_ct(Path(folder) / "images", int(slices))
    if configs:
        random_model(list(configs), Path(folder) / "models")


def _make(folder: Path, slices: int, configs=None) -> tuple[Path, Path]:
    cmd = [sys.executable, "-m", "scripts.tools.inference_memory", "make", str(folder), str(slices)]
    subprocess.run(cmd + (["--configs", json.dumps(configs)] if configs else []), cwd=_ROOT, check=True)
    return folder / "images" / f"ct{slices}.nii.gz", folder / f"label{slices}.nii.gz"


def measured(cmd: list[str]) -> tuple[float, float, int]:
    """(peak resident GB, seconds, exit code) of ``cmd`` run as a child process (of a parent that holds no
    volume: see ``make``)."""
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        print(proc.stderr.read().decode()[-2000:], file=sys.stderr)
    return usage.ru_maxrss / 2**20, time.time() - start, proc.returncode


def sweep(slices=(100, 250, 500), configs=None, out: str = "") -> list[dict]:
    """Peak memory and time of the inference command per slice count; ``configs`` default: the CPU overlay."""
    from scripts.inference.memory import inference_gb, network_gb
    from scripts.tools.demo import bundle_command

    configs = list(configs or ["inference.json", "small.json"])
    rows = []
    with tempfile.TemporaryDirectory(prefix="inference_memory_") as tmp:
        pixdim, classes, features, roi, sw_batch = _config_values(
            configs, "pixdim", "out_channels", "feature_size", "roi_size", "sw_batch_size"
        )
        network = network_gb(features, roi, sw_batch)  # the sweep runs on the CPU
        for n in [int(s) for s in slices]:
            image, _ = _make(Path(tmp) / f"in{n}", n, configs)
            models = Path(tmp) / f"in{n}" / "models"
            cmd = bundle_command(
                configs, dataset_dir=image.parent, output_dir=Path(tmp) / f"out{n}", ckpt_dir=models, max_memory_gb=1e6
            )
            peak, seconds, code = measured(cmd)
            shape, spacing = nib.load(image).shape, nib.load(image).header.get_zooms()
            rows.append(
                {
                    "configs": "+".join(configs),
                    "slices": n,
                    "peak_gb": round(peak, 2),
                    "seconds": round(seconds, 1),
                    "estimate_gb": round(inference_gb(shape, spacing, pixdim, 1, classes, network), 2),
                    "exit": code,
                }
            )
            print(_row(rows[-1]), flush=True)
    _write(rows, out)
    return rows


def compare(slices: int = 240, configs=None, out: str = "", classes: int = 0) -> list[dict]:
    """The postprocessing options side by side on one CT (see the module docstring); ``classes`` > 0: that many
    classes instead of the configs' (organs above the last one count as the last), to see what grows with them."""
    configs = list(configs or ["inference.json", "small.json"])
    rows = []
    with tempfile.TemporaryDirectory(prefix="postprocessing_") as tmp:
        image, label = _make(Path(tmp), int(slices))
        labels = {}
        for option in OPTIONS:
            result = Path(tmp) / f"{option.replace(' ', '_')}.npy"
            cmd = [sys.executable, "-m", "scripts.tools.inference_memory", "postprocess", str(image), str(label)]
            cmd += [option, str(result), json.dumps(configs), str(int(classes))]
            peak, seconds, code = measured(cmd)
            labels[option] = np.load(result) if code == 0 else None
            rows.append(
                {
                    "option": option,
                    "slices": int(slices),
                    "classes": int(classes) or _config_values(configs, "out_channels")[0],
                    "peak_gb": round(peak, 2),
                    "seconds": round(seconds, 1),
                }
            )
        reference = labels["all at once"]
        for row in rows:
            got = labels[row["option"]]
            row["dice_min"], row["dice_mean"], row["equal_voxels"] = _agreement(got, reference)
            print(_row(row), flush=True)
    _write(rows, out)
    return rows


def postprocess(image: str, label: str, option: str, result: str, configs, classes: int = 0) -> None:
    """One option in this process (``compare`` runs it as a child): preprocess, scores, postprocess, save."""
    import torch
    from monai.bundle import ConfigParser
    from monai.data import MetaTensor
    from monai.transforms import AsDiscreted, GaussianSmooth, Invertd

    from scripts.transforms import InvertedLabelsd

    parser = ConfigParser()
    configs = configs if isinstance(configs, list) else json.loads(configs)  # fire parses a JSON list itself
    parser.read_config([str(_ROOT / "configs" / c) for c in configs])
    # the label rides along the image's chain (nearest neighbour) to give the scores on the network's grid
    parser.update(
        {"bundle_root": str(_ROOT), "data_keys": ["image", "label"], "spatial_modes": ["bilinear", "nearest"]}
    )
    if option == "all at once":  # MONAI's default resampling precision, as the chain had it
        for t in parser["preprocessing"]["transforms"]:
            if isinstance(t, dict) and str(t.get("_target_", "")).endswith("Spacingd"):
                t.pop("dtype", None)
    preprocessing = parser.get_parsed_content("preprocessing")
    data = preprocessing({"image": image, "label": label})
    grid = data["label"][0]  # the phantom's organs, smoothed below over about a voxel: scores with soft borders
    classes = int(classes) or parser.get_parsed_content("out_channels")
    onehot = torch.nn.functional.one_hot(grid.long().clamp(max=classes - 1), classes).permute(3, 0, 1, 2).float()
    scores = torch.softmax(4 * GaussianSmooth(sigma=1.0)(onehot), 0)
    scores = MetaTensor(scores)
    item = {"image": data["image"], "pred": scores}
    if option == "by slabs":
        out = InvertedLabelsd("pred", preprocessing)(item)["pred"]
    elif option == "per class":
        out = InvertedLabelsd("pred", preprocessing).by_classes(scores, item)
    elif option == "all at once":
        inverted = Invertd("pred", preprocessing, orig_keys="image", nearest_interp=False)(item)
        out = AsDiscreted("pred", argmax=True)(inverted)["pred"]
    else:
        item["pred"] = MetaTensor(scores.argmax(0, keepdim=True).float())
        out = Invertd("pred", preprocessing, orig_keys="image", nearest_interp=True)(item)["pred"]
    np.save(result, np.asarray(out[0]).astype(np.uint8))


def _agreement(got, reference) -> tuple:
    if got is None or reference is None or got.shape != reference.shape:
        return None, None, None
    dice = [
        2 * np.sum((got == c) & (reference == c)) / (np.sum(got == c) + np.sum(reference == c))
        for c in np.unique(reference)[1:]
    ]
    return round(float(min(dice)), 4), round(float(np.mean(dice)), 4), round(float(np.mean(got == reference)), 6)


def _config_values(configs: list[str], *ids):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(_ROOT / "configs" / c) for c in configs])
    return [parser.get_parsed_content(i) for i in ids]


def _row(row: dict) -> str:
    return "  ".join(f"{k} {v}" for k, v in row.items())


def _write(rows: list[dict], out: str) -> None:
    if out:
        Path(out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    commands = {"sweep": sweep, "compare": compare, "postprocess": postprocess, "make": make}
    fire.Fire(commands, serialize=lambda result: None)

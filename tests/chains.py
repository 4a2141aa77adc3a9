"""What the fine-tuning, evaluation and inference chains must preserve, and tiny cases that show it.

Shared by ``tests/test_chains.py`` and the config mutation run (``tests/config_mutants.py``). The
chains are read from the parsed configs (``train.json``, ``train.json`` + ``evaluate.json``,
``inference.json``, each alone and with every task preset), never from their text, so the tests hold
whatever the configs' layout.

A case is built from its own label: every class has one intensity (increasing with the class), the
classes fill the cells of a 3 x 3 x 2 grid in a fixed shuffled order (no flip or quarter turn maps the
layout onto itself), the body is surrounded by air on unequal margins, has air along one edge inside its
bounding box and holds a block of bone (intensity above every window). Whatever a chain does in space,
the image inside each class region must stay one constant level, with levels in class order: an image
moved without its label breaks that.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser
from monai.transforms import Compose, RandomizableTransform, apply_transform

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "tasks.md"
WORKFLOWS = {  # chain name -> configs, the preset merged last
    "train": ("train.json",),
    "evaluate": ("train.json", "evaluate.json"),
    "inference": ("inference.json",),
}
PRESETS = [None] + sorted(p.stem for p in (ROOT / "configs" / "tasks").glob("*.json"))
# CPU-sized settings that do not change what a chain does: a 16^3 crop on a case of about 30^3 voxels
TINY = {"roi_size": [16, 16, 16], "num_workers": 0, "cache_rate": 0.0, "sw_batch_size": 4}
KEYS = ("image", "label")
GRID = (3, 3, 2)  # cells of the class layout
CELL = 8  # cell side in voxels of the working spacing
MARGIN_LOW, MARGIN_HIGH = 2, 4  # air around the body, in working voxels (unequal: no mirror symmetry)


def name(preset: str | None) -> str:
    return preset or "btcv default"


def config_files(workflow: str, preset: str | None) -> list[str]:
    files = [str(ROOT / "configs" / f) for f in WORKFLOWS[workflow]]
    return files + ([str(ROOT / "configs" / "tasks" / f"{preset}.json")] if preset else [])


def parse(workflow: str, preset: str | None, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(config_files(workflow, preset))
    parser.update({"bundle_root": str(ROOT), **TINY, **overrides})
    return parser


# ---------------------------------------------------------------- what the docs state for each task
def task_table() -> dict:
    """The docs' preset table: ``{preset: {"pixdim": [...], "window": (a_min, a_max) | None, "crop": int}}``
    (``window`` None: per-channel z-score over the non-zero voxels)."""
    text = DOCS.read_text().split("| preset | input channels |", 1)[1]
    rows = {}
    for line in text.splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        spacing = cells[3]
        pixdim = [float(spacing.split()[0])] * 3 if "isotropic" in spacing else [float(v) for v in spacing.split(" x ")]
        window = re.fullmatch(r"HU \[(-?[\d.]+), (-?[\d.]+)\]", cells[4])
        rows[cells[0].strip("`")] = {
            "pixdim": pixdim,
            "window": (float(window[1]), float(window[2])) if window else None,
            "crop": int(cells[5].split("^")[0]),
        }
    return rows


def stated(preset: str | None) -> dict:
    """The task's documented spacing, intensity and crop (the default configs are BTCV's)."""
    return task_table()[preset or "btcv"]


def raw_preset(preset: str | None) -> dict:
    path = ROOT / "configs" / "tasks" / f"{preset or 'btcv'}.json"
    return json.loads(path.read_text())


def label_table(preset: str | None) -> tuple[int, list | None]:
    """(number of raw label values, region definitions or None) as the preset file states them."""
    raw = raw_preset(preset)
    names = raw["label_names"] if isinstance(raw["label_names"], list) else raw["class_names"]
    return len(names), raw.get("label_regions")


# ---------------------------------------------------------------- cases built from their own label
def case_arrays(preset: str | None, ratio: float = 1.0, seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image (C, X, Y, Z), label (X, Y, Z), affine) of one case whose voxels are ``ratio`` times the
    working spacing, stored left-posterior (LPS) so that reorientation flips two axes."""
    n_labels, _ = label_table(preset)
    task = stated(preset)
    body = np.array(GRID) * CELL
    extent = body + MARGIN_LOW + MARGIN_HIGH  # in working voxels
    shape = np.ceil(extent / ratio).astype(int)
    pos = [np.arange(s) * ratio for s in shape]  # working-voxel coordinate of each stored voxel
    cell = [np.floor((p - MARGIN_LOW) / CELL).astype(int) for p in pos]
    inside = [(c >= 0) & (c < g) for c, g in zip(cell, GRID)]
    body_mask = inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]
    pocket = (pos[0] < MARGIN_LOW + 4)[:, None, None] & (pos[1] < MARGIN_LOW + 4)[None, :, None]
    body_mask &= ~pocket  # air along one edge, inside the body's bounding box: it stays after the body crop
    order = np.random.default_rng(seed).permutation(int(np.prod(GRID)))
    classes = (order % n_labels).reshape(GRID)
    ci = [np.clip(c, 0, g - 1) for c, g in zip(cell, GRID)]
    label = np.where(body_mask, classes[np.ix_(*ci)], 0).astype(np.uint8)
    bx, by, bz = np.argwhere(classes == 0)[0]  # a bone block inside the first background cell
    lo = [MARGIN_LOW + CELL * b + 2 for b in (bx, by, bz)]
    sel = [(p >= lo_) & (p < lo_ + CELL - 4) for p, lo_ in zip(pos, lo)]
    bone = sel[0][:, None, None] & sel[1][None, :, None] & sel[2][None, None, :]
    image = intensities(preset, label, body_mask, bone)
    spacing = np.array(task["pixdim"]) * ratio
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [40.0, 25.0, -30.0]
    return image, label, affine


def intensities(preset, label: np.ndarray, body: np.ndarray, bone: np.ndarray) -> np.ndarray:
    """(C, X, Y, Z) image: one level per label value (CT: inside the task's HU window, increasing; MRI:
    positive, increasing), air below the window (CT) or 0 (MRI), bone above every level."""
    n_labels, task = label_table(preset)[0], stated(preset)
    if task["window"]:
        a_min, a_max = task["window"]
        levels = a_min + (a_max - a_min) * (np.arange(n_labels) + 1) / (n_labels + 1)
        air, bone_value = a_min - 500.0, a_max + 1500.0
    else:
        levels, air, bone_value = 100.0 * (np.arange(n_labels) + 2), 0.0, 100.0 * (n_labels + 8)
    base = np.where(bone, bone_value, np.where(body, levels[label], air))
    # channels differ in scale, so a z-score over all channels at once is not a per-channel one
    return np.stack([base * (1 + 0.5 * k) for k in range(raw_preset(preset)["in_channels"])]).astype(np.float32)


def sampler_case_arrays(preset: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 48 x 48 x 40 voxel body (working spacing) in air with one small labelled cube at its centre and air
    along one edge inside its bounding box: room for 16^3 crops centred anywhere on the cube or the body."""
    n_labels = label_table(preset)[0]
    shape = np.array([48, 48, 40]) + MARGIN_LOW + MARGIN_HIGH
    body = np.zeros(shape, bool)
    body[MARGIN_LOW:-MARGIN_HIGH, MARGIN_LOW:-MARGIN_HIGH, MARGIN_LOW:-MARGIN_HIGH] = True
    label = np.zeros(shape, np.uint8)
    centre = MARGIN_LOW + np.array([24, 24, 20])
    label[tuple(slice(c - 3, c + 3) for c in centre)] = n_labels - 1  # in every region of region tasks
    body[MARGIN_LOW : MARGIN_LOW + 16, MARGIN_LOW : MARGIN_LOW + 16, :] = False  # air inside the body's box
    affine = np.diag([*stated(preset)["pixdim"], 1.0])
    return intensities(preset, label, body, np.zeros_like(body)), label, affine


def write_case(folder: Path, case: str, preset: str | None, ratio: float = 1.0, arrays=None) -> dict:
    """``{"image": path, "label": path}`` of a case written as MSD stores it (4-D image for several channels);
    ``arrays``: (image, label, affine) to write instead of ``case_arrays(preset, ratio)``."""
    image, label, affine = case_arrays(preset, ratio) if arrays is None else arrays
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    data = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
    paths = {"image": folder / "imagesTr" / f"{case}.nii.gz", "label": folder / "labelsTr" / f"{case}.nii.gz"}
    nib.save(nib.Nifti1Image(data, affine), paths["image"])
    nib.save(nib.Nifti1Image(label, affine), paths["label"])
    return {k: str(v) for k, v in paths.items()}


def write_dataset(folder: Path, preset: str | None, ratio: float = 1.0) -> Path:
    """A dataset folder with one training and one validation case and its ``dataset.json``."""
    train = write_case(folder, "case_train", preset, ratio)
    val = write_case(folder, "case_val", preset, ratio)
    rel = lambda item: {k: str(Path(v).relative_to(folder)) for k, v in item.items()}  # noqa: E731
    datalist = {"training": [rel(train)], "validation": [rel(val)], "test": [rel(val)["image"]]}
    (folder / "dataset.json").write_text(json.dumps(datalist))
    return folder


# ---------------------------------------------------------------- reading a chain's output
def decode_classes(label: torch.Tensor, regions: list | None, n_labels: int) -> torch.Tensor:
    """The raw label value of each voxel; -1 where the label is no label value (interpolated, scaled) or its
    region pattern matches none."""
    label = torch.as_tensor(label).float()
    if regions is None or label.shape[0] == 1:  # region tasks: also before LabelToRegionsd
        exact = (label[0] == label[0].round()) & (label[0] >= 0) & (label[0] < n_labels)
        return torch.where(exact, label[0].round().long(), -1)
    out = torch.full(label.shape[1:], -1, dtype=torch.long)
    for value in range(n_labels):
        pattern = torch.tensor([float(value in r) for r in regions]).view(-1, 1, 1, 1)
        out[(label == pattern).all(0)] = value
    return out


def interior(classes: torch.Tensor) -> torch.Tensor:
    """Voxels whose 3 x 3 x 3 neighbourhood is all one class (away from class borders and the edge)."""
    c = classes.float()[None, None]
    hi = F.max_pool3d(F.pad(c, (1,) * 6, mode="replicate"), 3, stride=1)
    lo = -F.max_pool3d(F.pad(-c, (1,) * 6, mode="replicate"), 3, stride=1)
    return (hi == lo)[0, 0]


def misalignment(image, label, regions, n_labels) -> str | None:
    """Why ``image`` no longer matches ``label`` voxel for voxel, or None."""
    image = torch.as_tensor(image).float()
    if tuple(image.shape[1:]) != tuple(label.shape[1:]):
        return f"image shape {tuple(image.shape[1:])} != label shape {tuple(label.shape[1:])}"
    classes = decode_classes(label, regions, n_labels)
    inner = interior(classes)
    for ch in range(image.shape[0]):
        x = image[ch]
        tol = 1e-3 * float(x.max() - x.min()) + 1e-6
        levels = []
        for c in range(1, n_labels):
            values = x[inner & (classes == c)]
            if values.numel() == 0:
                continue
            if float(values.max() - values.min()) > tol:
                return f"channel {ch}: the image inside label {c} is not one intensity (its voxels moved apart)"
            levels.append((c, float(values.mean())))
        for (_, v0), (c1, v1) in zip(levels, levels[1:]):
            if not v1 > v0 + tol:
                return f"channel {ch}: label {c1} holds the image of another class (intensity order broken)"
    return None


def label_values_problem(label, regions, n_labels) -> str | None:
    """Why ``label`` is not a label of the task (raw values, or one binary channel per region), or None."""
    label = torch.as_tensor(label)
    raw = label.shape[0] == 1 and (not regions or len(regions) > 1)  # region tasks: before LabelToRegionsd
    allowed = torch.arange(n_labels).float() if raw else torch.tensor([0.0, 1.0])
    values = torch.unique(label.float())
    extra = values[~torch.isin(values, allowed)]
    if extra.numel():
        return f"label holds values outside the label table {allowed.tolist()}: {extra[:5].tolist()}"
    channels = len(regions) if regions and not raw else 1
    if label.shape[0] != channels:
        return f"label has {label.shape[0]} channels, the task has {channels}"
    return None


def flat(transform) -> list:
    return list(transform.flatten().transforms) if isinstance(transform, Compose) else [transform]


def force_random(transforms, prob: float = 1.0, keep=()) -> None:
    """Every random transform with a probability fires with ``prob`` (crop samplers have none)."""
    for t in transforms:
        if isinstance(t, RandomizableTransform) and hasattr(t, "prob") and not isinstance(t, keep):
            t.prob = prob


def run_steps(transforms, data, seed: int = 0, check=None):
    """Apply ``transforms`` one by one (as ``Compose`` does, lists of crops item by item); ``check(items)``
    after each step returns a problem or None; returns (output, failing step name and problem)."""
    for i, t in enumerate(transforms):
        if isinstance(t, RandomizableTransform) or hasattr(t, "set_random_state"):
            t.set_random_state(seed=seed + i)
        data = apply_transform(t, data, map_items=True)
        items = data if isinstance(data, list) else [data]
        channel_first = all(
            isinstance(d.get(k), torch.Tensor) and d[k].dim() == 4 for d in items for k in d if k in KEYS
        )
        if check is not None and channel_first:  # from the first channel-first step on
            for item in items:
                problem = check(item)
                if problem:
                    return data, (type(t).__name__, problem)
    return data, None


class StandIn(torch.nn.Module):
    """A network that segments the cases above by intensity: each voxel gets the class of the nearest known
    level of the first channel (the levels a chain produced for the case, ``{value: class}``). Outputs
    logits: ``n_out`` class channels, or one channel per region (``regions``) with +-10."""

    def __init__(self, levels: dict, n_out: int, regions=None):
        super().__init__()
        self.values = torch.tensor(sorted(levels))
        self.classes = torch.tensor([levels[v] for v in sorted(levels)])
        self.n_out, self.regions = n_out, regions
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # something to save for checkpoint savers

    def forward(self, x):
        nearest = (x[:, :1].unsqueeze(-1) - self.values.to(x)).abs().argmin(-1)[:, 0]  # (B, X, Y, Z)
        classes = self.classes.to(x.device)[nearest]
        if self.regions is None:
            return F.one_hot(classes, self.n_out).permute(0, 4, 1, 2, 3).to(x) * 10.0
        member = torch.stack([torch.isin(classes, torch.tensor(r, device=x.device)) for r in self.regions], 1)
        # +0.3: inside a region by its sigmoid (0.57 > 0.5), not by the logit itself (0.3 < 0.5)
        return torch.where(member, 0.3, -10.0).to(x)


def levels_of(image, label, regions, n_labels) -> dict:
    """``{intensity: class}`` of the first channel of a preprocessed case (its class and bone levels)."""
    classes = decode_classes(label, regions, n_labels)
    x = torch.as_tensor(image)[0].float()
    inner = interior(classes)
    out = {}
    for c in range(n_labels):
        values = torch.unique((x[inner & (classes == c)] * 1e4).round() / 1e4)
        out.update({float(v): c for v in values})
    return out


def messages(error: BaseException) -> str:
    """The error and every error it was raised from (MONAI wraps a failed component in a RuntimeError)."""
    out = []
    while error is not None:
        out.append(str(error))
        error = error.__cause__ or error.__context__
    return "\n".join(out)

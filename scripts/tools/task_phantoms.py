"""Tiny synthetic cases for the MSD task presets (tests and demos): multi-channel MRI and a one-organ CT.

- ``brain_tumour``: 4 channels (FLAIR, T1w, t1gd, T2w) of a skull-stripped head (zero outside the brain)
  with MSD Task01 labels nested like a glioma: edema (1) around a non-enhancing core (2) around an
  enhancing tumour (3), each with its own contrast per sequence.
- ``prostate``: 2 channels (T2, ADC) of pelvic tissue with no zero background, a gland made of a
  peripheral zone (1, posterior) and a transition zone (2, central), anisotropic slices as in MSD Task05.
- ``spleen``: single-channel CT in HU (air, fat, soft tissue) with a contrast-enhanced spleen (1), Task09.

Images are stored in LPS orientation (MSD-like 4-D files for multi-channel tasks); labels share the grid.

    python -m scripts.tools.task_phantoms --task brain_tumour --out_dir data/brain_phantoms
"""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
from scipy import ndimage

from scripts.options import choice

# task: (MSD modality, MSD labels, shape, spacing in mm)
TASKS = {
    "brain_tumour": (
        {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
        (40, 30, 28),
        (1.0, 1.0, 1.0),
    ),
    "prostate": (
        {"0": "T2", "1": "ADC"},
        {"0": "background", "1": "PZ", "2": "TZ"},
        (40, 30, 8),
        (0.62, 0.62, 3.6),
    ),
    "spleen": ({"0": "CT"}, {"0": "background", "1": "spleen"}, (40, 30, 24), (1.5, 1.5, 2.0)),
}

# intensity per label and channel (arbitrary MRI units, HU for CT): (tissue, then one row per label)
_BRAIN = np.array([[300, 500, 450, 350], [600, 380, 380, 700], [450, 300, 350, 550], [500, 420, 900, 500]])
_PROSTATE = np.array([[250, 1600], [420, 1700], [300, 1100]])
_SPLEEN = np.array([[40], [130]])


def _ellipsoid(shape, center, radii, rng, bump=0.12) -> np.ndarray:
    """Boolean ellipsoid (radii in voxels) with a smoothly deformed surface."""
    grid = np.meshgrid(*[np.arange(n) - c for n, c in zip(shape, center)], indexing="ij")
    r = np.sqrt(sum((g / max(rad, 1e-3)) ** 2 for g, rad in zip(grid, radii)))
    angle = np.arctan2(grid[1], grid[0])
    return r <= 1.0 + bump * np.sin(rng.integers(2, 5) * angle + rng.uniform(0, 2 * np.pi))


def generate_case(task: str, seed: int):
    """One case: ``(image (x, y, z[, c]) float32, label (x, y, z) uint8, affine)``; same seed, same case."""
    choice("task", task, sorted(TASKS))
    _, _, shape, spacing = TASKS[task]
    rng = np.random.default_rng(seed)
    shape = np.asarray(shape)
    mid = shape / 2 + rng.uniform(-2, 2, 3)
    label = np.zeros(tuple(shape), np.uint8)
    if task == "brain_tumour":
        body = _ellipsoid(shape, mid, shape * 0.45, rng, 0.04)
        c = mid + rng.uniform(-4, 4, 3)
        size = rng.uniform(7, 10)
        for lbl, scale in ((1, 1.0), (2, 0.6), (3, 0.35)):  # nested: every region inside the previous one
            label[_ellipsoid(shape, c, [size * scale] * 3, rng) & body] = lbl
        table = _BRAIN
    elif task == "prostate":
        body = np.ones(tuple(shape), bool)  # no zero background: z-scored over every voxel
        gland = _ellipsoid(shape, mid, [shape[0] * 0.3, shape[1] * 0.25, shape[2] * 0.45], rng, 0.05)
        label[gland] = 1
        label[_ellipsoid(shape, mid + [0, 3, 0], [shape[0] * 0.17, shape[1] * 0.14, shape[2] * 0.4], rng) & gland] = 2
        table = _PROSTATE
    else:
        body = _ellipsoid(shape, mid, shape * [0.45, 0.4, 0.6], rng, 0.02)
        label[_ellipsoid(shape, mid + [-6, -3, 0], [6, 8, 6], rng) & body] = 1
        table = _SPLEEN
    channels = table.shape[1]
    image = np.where(body[..., None], table[0], 0.0).astype(np.float32)
    for lbl in range(1, table.shape[0]):
        image[label == lbl] = table[lbl] * rng.uniform(0.9, 1.1)
    image = ndimage.gaussian_filter(image, (0.7, 0.7, 0.7, 0))
    image += rng.normal(0, 0.03 * float(np.abs(table).max()), image.shape).astype(np.float32)
    if task == "spleen":
        image = np.where(body[..., None], image, -1000.0).astype(np.float32)  # air outside the body
    else:
        image = np.where(body[..., None], np.maximum(image, 1.0), 0.0).astype(np.float32)
    image = image[..., 0] if channels == 1 else image
    image, label = image[::-1, ::-1].copy(), label[::-1, ::-1].copy()  # LPS storage
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [spacing[0] * (shape[0] - 1), spacing[1] * (shape[1] - 1), -10.0]
    return image, label, affine


def write_task_phantoms(out_dir: str, task: str, num_train: int = 3, num_val: int = 1, num_test: int = 1, seed=0):
    """Write cases and an MSD-style ``dataset.json`` (``training`` / ``validation`` / ``test`` as image paths in
    ``imagesTs``); returns its path."""
    modality, labels, _, _ = TASKS[task]
    datalist = {"name": f"synthetic {task}", "modality": modality, "labels": labels, "tensorImageSize": "4D"}
    case = 0
    for split, count in (("training", num_train), ("validation", num_val), ("test", num_test)):
        entries = []
        for _ in range(count):
            name = f"{task}_{case:03d}.nii.gz"
            image, label, affine = generate_case(task, seed * 1009 + case)
            images = "imagesTs" if split == "test" else "imagesTr"
            for folder, arr in ((images, image), ("labelsTr", label)):
                if folder == "labelsTr" and split == "test":
                    continue  # MSD: test cases come without labels, listed as plain paths
                os.makedirs(os.path.join(out_dir, folder), exist_ok=True)
                nib.save(nib.Nifti1Image(arr, affine), os.path.join(out_dir, folder, name))
            test = split == "test"
            entries.append(f"{images}/{name}" if test else {"image": f"{images}/{name}", "label": f"labelsTr/{name}"})
            case += 1
        datalist[split] = entries
    path = os.path.join(out_dir, "dataset.json")
    with open(path, "w") as f:
        json.dump(datalist, f, indent=2)
    return path


if __name__ == "__main__":
    import fire

    fire.Fire(write_task_phantoms)

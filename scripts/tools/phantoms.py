"""Synthetic abdominal CT phantoms with BTCV label maps: the bundle's default data, generated on demand.

Each phantom is a CT volume in Hounsfield units (int16 NIfTI) with a label map in BTCV ids
(uint8 NIfTI): body contour with subcutaneous fat and a muscle wall, visceral fat, bowel loops,
spine and ribs, and all 13 BTCV organs as smooth, randomly deformed shapes at plausible
positions, with plausible attenuation, texture and noise. Cases vary in size, position, contrast
enhancement and noise; voxels are anisotropic and stored in LPS orientation so that the
orientation and spacing transforms of every workflow are exercised.

Command line::

    python -m scripts.tools.phantoms --out_dir data/phantoms --num_train 16 --num_val 4 --num_test 1

writes ``imagesTr/``, ``labelsTr/``, ``imagesTs/`` (and ``labelsTs/``) plus ``dataset.json``, an
MSD-style datalist with ``training`` / ``validation`` / ``test`` lists whose paths are relative to
``out_dir``.
"""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
from scipy import ndimage

from scripts.tasks.labels import BTCV_LABELS

# Field of view in mm of nibabel's RAS+ world: +x towards the patient's right, +y anterior,
# +z superior. The liver therefore sits at +x and the spleen at -x.
FOV_MM = ((-190.0, 190.0), (-150.0, 150.0), (-100.0, 110.0))

# (unenhanced HU, portal-venous enhancement in HU) per organ; enhancement is scaled per case.
ORGAN_HU = {
    1: (45, 90),  # spleen, enhancing more than the liver in the portal-venous phase
    2: (35, 140),  # kidneys: cortex and medulla enhanced
    3: (35, 140),
    4: (5, 0),  # gallbladder: bile
    5: (45, 15),  # esophagus wall (an air lumen is added)
    6: (55, 45),
    7: (40, 40),  # stomach wall (content: positive oral contrast and gas)
    8: (40, 180),
    9: (40, 80),
    10: (40, 140),
    11: (40, 40),  # pancreas, lobulated with fat
    12: (30, 25),
    13: (30, 25),
}


def _rotation(rng: np.random.Generator, max_deg: float, base_deg=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Rotation matrix from x/y/z Euler angles: ``base_deg`` plus a uniform jitter of +-max_deg."""
    ax, ay, az = np.deg2rad(np.asarray(base_deg) + rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


class _Canvas:
    """Voxel grid of one phantom in RAS+ index order, with helpers that paint shapes in sub-boxes."""

    def __init__(self, spacing):
        self.spacing = np.asarray(spacing, dtype=float)
        self.origin = np.array([lo for lo, _ in FOV_MM])
        self.shape = tuple(int(round((hi - lo) / s)) for (lo, hi), s in zip(FOV_MM, self.spacing))
        self.hu = np.full(self.shape, -1000.0, dtype=np.float32)
        self.label = np.zeros(self.shape, dtype=np.uint8)

    def box(self, center, half_extent):
        """Index slices and mm coordinates of the grid inside ``center +- half_extent`` (mm)."""
        lo = np.floor((np.asarray(center) - half_extent - self.origin) / self.spacing).astype(int)
        hi = np.ceil((np.asarray(center) + half_extent - self.origin) / self.spacing).astype(int) + 1
        lo, hi = np.maximum(lo, 0), np.minimum(hi, self.shape)
        if np.any(hi <= lo):
            return None, None
        slices = tuple(slice(a, b) for a, b in zip(lo, hi))
        coords = [self.origin[d] + self.spacing[d] * np.arange(lo[d], hi[d]) for d in range(3)]
        return slices, np.meshgrid(*coords, indexing="ij")

    def blob(self, rng, center, radii, rot, bumpiness=0.15):
        """Mask (slices, bool array) of an ellipsoid whose surface is deformed by smooth bumps."""
        radii = np.asarray(radii, dtype=float)
        slices, grid = self.box(center, radii.max() * (1.0 + 2 * bumpiness))
        if slices is None:  # entirely outside the field of view
            return None, None
        x, y, z = grid
        d = np.stack([x - center[0], y - center[1], z - center[2]], axis=-1) @ rot  # local frame
        p = d / radii
        r = np.linalg.norm(p, axis=-1) + 1e-6
        u = p / r[..., None]
        bumps = np.zeros_like(r)
        for _ in range(4):  # low-order smooth function of the direction
            w = rng.normal(0.0, 2.0, 3)
            bumps += rng.uniform(0.3, 1.0) * np.cos(u @ w + rng.uniform(0, 2 * np.pi))
        return slices, r <= 1.0 + bumpiness * bumps / 2.0

    def tube(self, rng, points, radius, wobble=0.12):
        """Mask of a tube of ``radius`` mm along the polyline ``points`` (mm), radius gently varying."""
        pts = np.asarray(points, dtype=float)
        lo, hi = pts.min(0) - 1.5 * radius, pts.max(0) + 1.5 * radius
        slices, grid = self.box((lo + hi) / 2, (hi - lo) / 2)
        if slices is None:  # entirely outside the field of view
            return None, None
        x, y, z = grid
        xyz = np.stack([x, y, z], axis=-1)
        dist = np.full(x.shape, np.inf)
        for a, b in zip(pts[:-1], pts[1:]):
            ab = b - a
            t = np.clip(((xyz - a) @ ab) / max(ab @ ab, 1e-6), 0.0, 1.0)
            dist = np.minimum(dist, np.linalg.norm(xyz - (a + t[..., None] * ab), axis=-1))
        phase, freq = rng.uniform(0, 2 * np.pi), rng.uniform(0.02, 0.05)
        local_r = radius * (1.0 + wobble * np.sin(freq * (x + y + z) + phase))
        return slices, dist <= local_r

    def paint(self, mask_and_slices, hu, label=None, within=None):
        """Set HU (and label) inside a mask; ``within`` restricts painting to a full-size mask."""
        slices, mask = mask_and_slices
        if slices is None:
            return
        if within is not None:
            mask = mask & within[slices]
        self.hu[slices][mask] = hu
        if label is not None:
            self.label[slices][mask] = label


def generate_phantom(seed: int, spacing=(1.6, 1.6, 3.0), vary_spacing: bool = True):
    """Generate one phantom.

    Args:
        seed: random seed; the same seed gives the same phantom.
        spacing: nominal voxel size in mm (x, y, z).
        vary_spacing: jitter the in-plane and slice spacing by up to 10% per case.

    Returns:
        ``(hu, label, affine)``: int16 HU volume and uint8 BTCV label map of the same shape, stored
        in LPS orientation, and the 4x4 NIfTI affine (RAS+ world, mm) they share.
    """
    rng = np.random.default_rng(seed)
    spacing = np.asarray(spacing, dtype=float)
    if vary_spacing:
        inplane = spacing[0] * rng.uniform(0.9, 1.1)
        spacing = np.array([inplane, inplane, spacing[2] * rng.uniform(0.9, 1.1)])
    cv = _Canvas(spacing)
    scale = rng.uniform(0.9, 1.1)  # patient size
    shift = np.append(rng.uniform(-10, 10, 2), rng.uniform(-12, 12))  # patient position in the FOV
    enh = rng.uniform(0.7, 1.3)  # contrast enhancement relative to a typical portal-venous phase

    def at(x, y, z, jitter=5.0):
        return np.array([x, y, z]) * scale + shift + rng.uniform(-jitter, jitter, 3)

    def organ_hu(lbl):
        native, enhancement = ORGAN_HU[lbl]
        return native + enh * enhancement + rng.normal(0, 5)

    def size(*r, var=0.12):
        return np.asarray(r) * scale * rng.uniform(1 - var, 1 + var, 3)

    # body: elliptic cylinder, subcutaneous fat, muscle wall, visceral fat inside the cavity
    grid = np.meshgrid(
        *[cv.origin[d] + cv.spacing[d] * np.arange(cv.shape[d]) for d in range(3)], indexing="ij", sparse=True
    )
    gx, gy, gz = grid[0] - shift[0], grid[1] - shift[1], grid[2] - shift[2]
    a, b = 160 * scale * rng.uniform(0.93, 1.07), 115 * scale * rng.uniform(0.93, 1.07)
    taper = 1.0 + 0.0008 * gz  # slightly wider towards the chest
    ell = np.sqrt((gx / (a * taper)) ** 2 + (gy / (b * taper)) ** 2)
    ell = np.broadcast_to(ell, cv.shape)
    fat_mm, muscle_mm = rng.uniform(10, 28), rng.uniform(8, 14)
    body = ell <= 1.0
    wall = ell <= 1.0 - fat_mm / b
    cavity = ell <= 1.0 - (fat_mm + muscle_mm) / b
    cv.hu[body] = -100.0
    cv.hu[wall] = 50.0
    cv.hu[cavity] = -90.0
    cavity = cavity & (np.broadcast_to(gy, cv.shape) > -60 * scale)  # retroperitoneum ends at the spine

    # spine (vertebral bodies and discs), paraspinal muscles, ribs in the upper half
    for zc in np.arange(-100, 115, 32.0):
        cv.paint(cv.blob(rng, at(0, -75, zc, 2), size(20, 17, 12, var=0.05), _rotation(rng, 3), 0.03), 250)
        cv.paint(cv.tube(rng, [at(0, -102, zc - 5, 1), at(0, -112, zc + 5, 1)], 6, 0.0), 500)
    for side in (-1, 1):
        cv.paint(cv.blob(rng, at(side * 40, -85, 0, 2), size(22, 20, 130, var=0.05), _rotation(rng, 2), 0.05), 55)
        for zc in np.arange(25, 111, 26.0):
            arc = [
                at(side * 25, -95, zc, 1),
                at(side * 95, -75, zc - 8, 1),
                at(side * 140, 0, zc - 16, 1),
                at(side * 110, 75, zc - 24, 1),
            ]
            cv.paint(cv.tube(rng, arc, 5.0, 0.1), 650)

    # bowel loops in the lower abdomen: soft tissue with some gas, unlabelled
    for _ in range(rng.integers(6, 10)):
        c = at(rng.uniform(-90, 90), rng.uniform(-10, 70), rng.uniform(-95, -20), 0)
        cv.paint(
            cv.blob(rng, c, size(22, 18, 20, var=0.3), _rotation(rng, 90), 0.3), rng.uniform(15, 45), within=cavity
        )
        cv.paint(
            cv.blob(rng, c + rng.uniform(-5, 5, 3), size(8, 7, 8, var=0.3), _rotation(rng, 90), 0.2),
            -850,
            within=cavity,
        )

    # organs; later ones win where shapes touch, as vessels run through and along organs
    def organ(lbl, shape):
        cv.paint(shape, organ_hu(lbl), lbl, within=cavity)

    organ(6, cv.blob(rng, at(65, -5, 45), size(58, 62, 55), _rotation(rng, 10)))  # liver right lobe
    organ(6, cv.blob(rng, at(5, 35, 60), size(48, 30, 30), _rotation(rng, 10, (0, 0, 15))))  # left lobe
    organ(1, cv.blob(rng, at(-82, -30, 50), size(20, 42, 45), _rotation(rng, 10, (0, 0, 30))))
    stomach_hu, oral_contrast = organ_hu(7), rng.uniform(140, 200)
    fundus = cv.blob(rng, at(-45, 5, 72), size(34, 30, 28), _rotation(rng, 10))
    body_st = cv.blob(rng, at(-30, 38, 38), size(30, 26, 36), _rotation(rng, 10, (30, 0, 0)))
    for part in (fundus, body_st):
        cv.paint(part, stomach_hu, 7, within=cavity)
        # gastric contents: positive oral contrast, gas in the most anterior part; still labelled stomach
        slices, mask = part
        if slices is not None:
            inner = ndimage.binary_erosion(mask, iterations=2) & cavity[slices]
            cv.hu[slices][inner] = oral_contrast
            yy = cv.origin[1] + cv.spacing[1] * np.arange(slices[1].start, slices[1].stop)
            gas = inner & (yy[None, :, None] > np.percentile(yy, 75))
            cv.hu[slices][gas] = -800.0
    organ(4, cv.blob(rng, at(40, 42, 15), size(14, 15, 30), _rotation(rng, 15, (20, 0, 0))))
    organ(2, cv.blob(rng, at(58, -48, -18), size(24, 26, 48), _rotation(rng, 10, (0, 10, -15))))
    organ(3, cv.blob(rng, at(-58, -48, -6), size(24, 26, 48), _rotation(rng, 10, (0, -10, 15))))
    pancreas = cv.tube(rng, [at(22, 2, 2), at(-5, 12, 18), at(-35, 5, 28), at(-65, -18, 38)], 11 * scale, 0.2)
    organ(11, pancreas)
    if pancreas[0] is not None:  # fatty lobulation: smooth random blotches of fat inside the gland
        slices, mask = pancreas
        blotch = ndimage.gaussian_filter(rng.normal(0, 1, mask.shape), 1.2)
        fat = mask & cavity[slices] & (blotch > 0.8 * blotch.std())
        cv.hu[slices][fat] = -40.0
    organ(12, cv.blob(rng, at(40, -42, 42), size(8, 15, 22), _rotation(rng, 10, (0, 0, 30)), 0.1))
    organ(13, cv.blob(rng, at(-38, -42, 36), size(8, 15, 22), _rotation(rng, 10, (0, 0, -30)), 0.1))
    esophagus = [at(-5, -42, 112, 2), at(-12, -35, 95, 2), at(-28, -12, 80, 2)]
    organ(5, cv.tube(rng, esophagus, 10 * scale, 0.1))
    cv.paint(cv.tube(rng, esophagus, 3.0, 0.2), -850.0, within=cv.label == 5)  # air in the lumen
    organ(9, cv.tube(rng, [at(24, -38, 112, 2), at(22, -36, 60, 2), at(20, -42, -100, 2)], 11 * scale, 0.1))
    organ(8, cv.tube(rng, [at(-12, -47, 112, 2), at(-10, -47, -100, 2)], 11 * scale, 0.05))
    pv = [at(48, 4, 42, 3), at(22, 2, 28, 2), at(2, -2, 18, 2), at(-30, -14, 26, 3), at(-66, -26, 42, 3)]
    organ(10, cv.tube(rng, pv, 7.5 * scale, 0.1))

    # texture, partial-volume blur and scanner noise
    texture = ndimage.gaussian_filter(rng.normal(0, 1, cv.shape).astype(np.float32), 2.0)
    cv.hu += np.where(body, texture * (8.0 / max(texture.std(), 1e-6)), 0.0).astype(np.float32)
    cv.hu = ndimage.gaussian_filter(cv.hu, 0.6)
    cv.hu += rng.normal(0, rng.uniform(8, 18), cv.shape).astype(np.float32)
    hu = np.clip(np.round(cv.hu), -1024, 3071).astype(np.int16)

    # store LPS: flip the first two axes; the affine maps LPS-ordered indices to RAS+ mm
    hu, label = hu[::-1, ::-1].copy(), cv.label[::-1, ::-1].copy()
    top = cv.origin + cv.spacing * (np.asarray(cv.shape) - 1)
    affine = np.diag([-cv.spacing[0], -cv.spacing[1], cv.spacing[2], 1.0])
    affine[:3, 3] = [top[0], top[1], cv.origin[2]]
    return hu, label, affine


def write_phantoms(
    out_dir: str,
    num_train: int = 16,
    num_val: int = 4,
    num_test: int = 1,
    seed: int = 0,
    spacing=(1.6, 1.6, 3.0),
    progress: bool = False,
) -> str:
    """Write phantoms and an MSD-style ``dataset.json`` under ``out_dir``; returns the datalist path.

    Case ``i`` uses seed ``seed * 100003 + i``, so datasets with the same seed share their cases.
    Existing files with the same name are regenerated (the generator is deterministic).
    """
    if min(num_train, num_val, num_test) < 0 or num_train + num_val + num_test == 0:
        raise ValueError(
            f"need non-negative case counts with at least one case, got "
            f"num_train={num_train}, num_val={num_val}, num_test={num_test}"
        )
    splits = {"training": num_train, "validation": num_val, "test": num_test}
    datalist = {
        "name": "Swin UNETR synthetic abdominal CT phantoms",
        "description": "Synthetic CT in HU with BTCV label ids, generated by scripts/tools/phantoms.py",
        "labels": {str(k): v for k, v in BTCV_LABELS.items()},
        "modality": {"0": "CT"},
        "seed": seed,
    }
    case = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(splits.values()), desc="phantoms", unit="case")
    for split, count in splits.items():
        img_dir, lbl_dir = ("imagesTr", "labelsTr") if split != "test" else ("imagesTs", "labelsTs")
        os.makedirs(os.path.join(out_dir, img_dir), exist_ok=True)
        os.makedirs(os.path.join(out_dir, lbl_dir), exist_ok=True)
        entries = []
        for _ in range(count):
            name = f"phantom_{case:03d}.nii.gz"
            hu, label, affine = generate_phantom(seed * 100003 + case, spacing=spacing)
            for folder, arr in ((img_dir, hu), (lbl_dir, label)):
                img = nib.Nifti1Image(arr, affine)
                img.header.set_xyzt_units("mm", "sec")
                img.set_qform(affine, code=1)
                img.set_sform(affine, code=1)
                nib.save(img, os.path.join(out_dir, folder, name))
            entries.append({"image": f"{img_dir}/{name}", "label": f"{lbl_dir}/{name}"})
            case += 1
            if bar is not None:
                bar.update()
        datalist[split] = entries
    if bar is not None:
        bar.close()
    path = os.path.join(out_dir, "dataset.json")
    with open(path, "w") as f:
        json.dump(datalist, f, indent=2)
    return path


def phantoms_command(
    out_dir: str = "data/phantoms", num_train: int = 16, num_val: int = 4, num_test: int = 1, seed: int = 0
):
    """Command-line entry point: write the phantoms and print where the datalist is."""
    path = write_phantoms(out_dir, num_train, num_val, num_test, seed, progress=True)
    print(f"wrote {num_train + num_val + num_test} phantoms and {path}")
    return path


if __name__ == "__main__":
    import fire

    fire.Fire(phantoms_command)

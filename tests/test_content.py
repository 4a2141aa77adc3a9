"""Data that cannot teach pre-training is named and skipped by a stated rule, before any compute: volumes thinner
than a crop (mostly padding), mostly outside the HU window, or flat inside it (a label map). A thinner volume
that still fills most of its crop is kept with a warning saying how much padding it brings."""

import csv
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from scripts.errors import InputError
from scripts.pretraining.content import CropContent
from scripts.pretraining.data import usable_images

from conftest import ROOT

# the CPU overlay's crop: 64^3 voxels at 4 mm = 256 mm per side
RULE = CropContent(roi_size=[64, 64, 64], pixdim=[4.0, 4.0, 4.0], a_min=-1000, a_max=1000)


def ct(shape, spacing=(4.0, 4.0, 4.0), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A body-like volume in HU (soft tissue and bone in air) and its RAS affine."""
    rng = np.random.default_rng(seed)
    data = np.full(shape, -1024, np.int16)
    data[2:-2, 2:-2, :] = rng.normal(40, 30, (shape[0] - 4, shape[1] - 4, shape[2])).astype(np.int16)
    data[shape[0] // 2 - 2 : shape[0] // 2 + 2, -8:-4, :] = 700
    return data, np.diag([*spacing, 1.0])


def test_a_slab_thinner_than_half_a_crop_is_skipped_naming_the_axis_and_the_padding():
    data, affine = ct((80, 80, 3), spacing=(4.0, 4.0, 1.0))  # 3 mm thick
    reason, _ = RULE.check(affine, data)
    assert reason is not None and "3 mm along z" in reason and "256 mm crop" in reason and "99% padding" in reason


def test_a_volume_somewhat_thinner_than_a_crop_is_kept_with_its_padding_stated():
    data, affine = ct((80, 80, 41), spacing=(4.0, 4.0, 5.0))  # 205 mm of a 256 mm crop: 20% padding
    reason, warnings = RULE.check(affine, data)
    assert reason is None and len(warnings) == 1
    assert "205 mm along z" in warnings[0] and "20% padding" in warnings[0]


def test_thickness_is_measured_along_the_world_axis_whatever_the_storage_order():
    data, _ = ct((80, 80, 3), spacing=(4.0, 4.0, 1.0))
    stored_z_first = np.transpose(data, (2, 0, 1))  # voxel axis 0 now runs along world z
    affine = np.zeros((4, 4))
    affine[2, 0], affine[0, 1], affine[1, 2], affine[3, 3] = 1.0, -4.0, -4.0, 1.0  # and x, y flipped (LPS-like)
    reason, _ = RULE.check(affine, stored_z_first)
    assert reason is not None and "3 mm along z" in reason
    assert CropContent.extent_mm(affine, stored_z_first.shape).tolist() == [320.0, 320.0, 3.0]


def test_a_volume_mostly_outside_the_hu_window_is_skipped():
    data, affine = ct((80, 80, 80))
    data[:, :, :70] = -3024  # outside the scanner's field of view in most slices
    reason, _ = RULE.check(affine, data)
    assert reason is not None and "inside the HU window (-1000, 1000)" in reason and "min_window_fraction" in reason


def test_a_label_map_is_skipped_as_flat_inside_the_window():
    labels = np.zeros((80, 80, 80), np.uint8)
    labels[20:60, 20:60, 20:60] = np.arange(14).repeat(3)[:40][None, None, :]
    reason, _ = RULE.check(np.diag([4.0, 4.0, 4.0, 1.0]), labels)
    assert reason is not None and "flat after scaling" in reason


def test_a_ct_volume_larger_than_its_crop_passes_without_a_word():
    data, affine = ct((80, 80, 80))
    assert RULE.check(affine, data) == (None, [])


def save(path, data, affine):
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return {"image": str(path)}


def test_pre_training_skips_them_listed_in_its_report_without_counting_them_as_broken_files(tmp_path):
    items = [save(tmp_path / f"good{i}.nii.gz", *ct((70, 70, 70), seed=i)) for i in range(3)]
    items.append(save(tmp_path / "slab.nii.gz", *ct((70, 70, 3))))
    report = tmp_path / "skipped.csv"
    # one of four (25%) skipped for its content: max_skipped_fraction (for unreadable files) is not reached
    kept = usable_images(items, max_skipped_fraction=0.05, num_threads=1, report=str(report), content=RULE)
    assert [item["image"] for item in kept] == [item["image"] for item in items[:3]]
    rows = list(csv.DictReader(open(report)))
    assert [row["image"] for row in rows] == [items[3]["image"]] and "min_crop_fill" in rows[0]["problem"]
    with pytest.raises(InputError, match="none of the 1 pre-training volumes can be used.*slab"):
        usable_images(items[3:], num_threads=1, content=RULE)


def test_the_data_check_names_what_pre_training_would_skip(tmp_path):
    save(tmp_path / "body.nii.gz", *ct((70, 70, 70)))
    save(tmp_path / "slab.nii.gz", *ct((70, 70, 3)))

    def check(*extra):
        cmd = [sys.executable, "-m", "scripts.tools.check_data", "--folder", str(tmp_path), *extra]
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)

    plain = check()
    assert plain.returncode == 0, plain.stdout + plain.stderr
    small = check("--pretraining", "true", "--roi_size", "[64,64,64]", "--pixdim", "[4,4,4]")
    assert small.returncode == 1
    errors = [line for line in small.stdout.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "slab.nii.gz: pre-training skips it: 12 mm along z" in errors[0]
    assert "pre-training crops of 256 x 256 x 256 mm" in small.stdout

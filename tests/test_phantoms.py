"""The embedded synthetic CT phantoms: deterministic, anatomically laid out, stored LPS and anisotropic."""

import json

import nibabel as nib
import numpy as np
import pytest

from scripts.tasks.labels import BTCV_LABELS
from scripts.tools.phantoms import generate_phantom, write_phantoms


@pytest.fixture(scope="module")
def case():
    return generate_phantom(3)


def test_same_seed_same_phantom_and_different_seed_differs(case):
    hu, label, affine = case
    hu2, label2, affine2 = generate_phantom(3)
    assert np.array_equal(hu, hu2) and np.array_equal(label, label2) and np.array_equal(affine, affine2)
    hu3, label3, _ = generate_phantom(4)
    assert hu3.shape != hu.shape or not np.array_equal(label3, label)


def test_all_thirteen_organs_present_with_btcv_ids(case):
    _, label, _ = case
    assert label.dtype == np.uint8
    assert set(np.unique(label).tolist()) == set(BTCV_LABELS)


def test_header_is_lps_with_anisotropic_spacing(case):
    hu, _, affine = case
    assert nib.aff2axcodes(affine) == ("L", "P", "S")
    spacing = np.abs(np.diag(affine)[:3])
    assert spacing[2] > 1.5 * spacing[0]


def test_organs_sit_on_their_anatomical_side(case):
    """In RAS+ world coordinates the liver is on the patient's right (+x), the spleen on the left."""
    _, label, affine = case

    def centre_mm(lbl):
        idx = np.argwhere(label == lbl).mean(axis=0)
        return affine[:3, :3] @ idx + affine[:3, 3]

    assert centre_mm(6)[0] > 20 and centre_mm(1)[0] < -20  # liver right, spleen left
    assert centre_mm(2)[0] > 0 > centre_mm(3)[0]  # right kidney right of left kidney
    assert centre_mm(8)[1] < centre_mm(4)[1]  # aorta posterior to the gallbladder


def test_attenuation_is_plausible_ct(case):
    hu, label, _ = case
    assert hu.dtype == np.int16
    median = {lbl: np.median(hu[label == lbl]) for lbl in BTCV_LABELS}
    assert median[0] < -100  # air and fat dominate the background
    assert -20 < median[4] < 40  # gallbladder: fluid
    assert 60 < median[6] < 180  # liver, contrast enhanced
    assert median[8] > median[6]  # arterial blood brighter than liver
    assert (hu > 400).sum() > 1000  # bone exists
    assert hu.min() >= -1024


def test_write_phantoms_makes_msd_datalist(tmp_path):
    path = write_phantoms(str(tmp_path), num_train=2, num_val=1, num_test=1, seed=1)
    datalist = json.load(open(path))
    assert [len(datalist[k]) for k in ("training", "validation", "test")] == [2, 1, 1]
    for entry in datalist["training"] + datalist["validation"] + datalist["test"]:
        img, lbl = nib.load(tmp_path / entry["image"]), nib.load(tmp_path / entry["label"])
        assert img.shape == lbl.shape and np.allclose(img.affine, lbl.affine)
    assert datalist["labels"]["10"] == "portal vein and splenic vein"


def test_rejects_empty_dataset(tmp_path):
    with pytest.raises(ValueError, match="at least one case"):
        write_phantoms(str(tmp_path), 0, 0, 0)


@pytest.mark.parametrize("seed", [119, 179, 300004])  # 300004: case 1 of `--seed 3`
def test_a_structure_drawn_outside_the_field_of_view_is_skipped_not_a_crash(seed):
    """These seeds place a vessel or an organ wholly outside the grid (they crashed the generator once)."""
    hu, label, _ = generate_phantom(seed)
    assert hu.shape == label.shape and len(np.unique(label)) >= 10

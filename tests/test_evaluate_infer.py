"""Evaluation writes per-organ Dice / HD95 tables; inference writes label maps on the input's own grid."""

import csv
import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from scripts.tasks.labels import BTCV_LABELS

from conftest import REAL_CT, bundle_run, requires_real_ct

pytestmark = pytest.mark.slow  # every test runs a bundle workflow

ORGANS = [BTCV_LABELS[i] for i in range(1, 14)]


def read_table(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_evaluate_writes_per_organ_dice_and_hd95(trained, phantoms, tmp_path):
    bundle_run(
        ["train.json", "evaluate.json", "small.json"],
        {"dataset_dir": phantoms, "ckpt_dir": trained["dir"] / "models", "output_dir": tmp_path, "num_workers": 0},
    )
    for name in ("val_mean_dice_per_case.csv", "val_hd95_mm_per_case.csv"):
        rows = read_table(tmp_path / name)
        assert list(rows[0]) == ["case", *ORGANS, "mean"]
        assert [r["case"] for r in rows] == ["phantom_004.nii.gz", "mean"]
    dice = read_table(tmp_path / "val_mean_dice_per_case.csv")[0]
    values = [float(dice[o]) for o in ORGANS if dice[o]]
    assert values and all(0.0 <= v <= 1.0 for v in values)
    assert abs(np.mean(values) - float(dice["mean"])) < 1e-3
    # the predicted label map is written on the original (LPS, anisotropic) grid of the case
    image = nib.load(phantoms / "imagesTr" / "phantom_004.nii.gz")
    pred = nib.load(tmp_path / "predictions" / "phantom_004_seg.nii.gz")
    assert pred.shape == image.shape and np.allclose(pred.affine, image.affine, atol=1e-4)


def test_inference_on_lps_anisotropic_input_keeps_shape_and_affine(trained, phantoms, tmp_path):
    image_path = phantoms / "imagesTs" / "phantom_005.nii.gz"
    image = nib.load(image_path)
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
    bundle_run(
        ["inference.json", "small.json"],
        {
            "dataset_dir": phantoms / "imagesTs",
            "ckpt_dir": trained["dir"] / "models",
            "output_dir": tmp_path,
            "num_workers": 0,
        },
    )
    pred = nib.load(tmp_path / "phantom_005_seg.nii.gz")
    assert pred.shape == image.shape
    assert np.allclose(pred.affine, image.affine, atol=1e-4)
    assert pred.get_data_dtype() == np.uint8
    labels = np.unique(np.asarray(pred.dataobj))
    assert labels.min() >= 0 and labels.max() <= 13


@requires_real_ct()
def test_real_ct_inference_and_evaluation_stay_aligned(trained, tmp_path):
    """Real int32 HU abdomen at 3 mm: outputs on the input grid, and evaluation against its labels runs."""
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    # a datalist needs the files under one base folder; links avoid copying the shared data
    (data / "images" / "abdomen.nii.gz").symlink_to(REAL_CT / "abdomen_pelvis_3mm_ct.nii.gz")
    (data / "labels" / "abdomen.nii.gz").symlink_to(REAL_CT / "abdomen_pelvis_3mm_btcv13.nii.gz")
    entry = {"image": "images/abdomen.nii.gz", "label": "labels/abdomen.nii.gz"}
    (data / "dataset.json").write_text(json.dumps({"training": [entry], "validation": [entry], "test": [entry]}))
    image = nib.load(data / "images" / "abdomen.nii.gz")

    models = tmp_path / "models"  # the engine's cache goes beside the weights
    # without a converted model another test's run may have left there
    shutil.copytree(trained["dir"] / "models", models, ignore=shutil.ignore_patterns("openvino"))
    inference = bundle_run(
        ["inference.json", "small.json"],
        {
            "dataset_dir": data / "images",
            "ckpt_dir": models,
            "output_dir": tmp_path / "inf",
            "num_workers": 0,
            "cpu_engine": "auto",  # the default: OpenVINO on a CPU
        },
    )
    pred = nib.load(tmp_path / "inf" / "abdomen_seg.nii.gz")
    assert pred.shape == image.shape and np.allclose(pred.affine, image.affine, atol=1e-4)
    assert "converted the network to OpenVINO" in inference.stdout + inference.stderr
    assert len(list((models / "openvino").glob("*.xml"))) == 1

    evaluation = bundle_run(
        ["train.json", "evaluate.json", "small.json"],
        {
            "dataset_dir": data,
            "ckpt_dir": models,
            "output_dir": tmp_path / "eval",
            "num_workers": 0,
            "cpu_engine": "auto",
        },
    )
    log = evaluation.stdout + evaluation.stderr
    assert "sliding windows through OpenVINO" in log and "converted the network" not in log  # the cached model
    rows = read_table(tmp_path / "eval" / "val_mean_dice_per_case.csv")
    assert rows[0]["case"] == "abdomen.nii.gz"
    assert rows[0]["esophagus"] == ""  # absent from this scan: no Dice, not a zero
    pred = nib.load(tmp_path / "eval" / "predictions" / "abdomen_seg.nii.gz")
    assert pred.shape == image.shape and np.allclose(pred.affine, image.affine, atol=1e-4)

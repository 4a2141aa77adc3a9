"""Bad input to inference or evaluation: non-zero exit, one line naming the file and the problem, no output."""

import json

import nibabel as nib
import numpy as np
import pytest

from conftest import bundle_run


def save(path, array, affine=None):
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), path)


def make_case(folder, name, kind):
    """Write an image (and matching label) named ``name`` with one planted problem; returns the problem text."""
    image, label = folder / "images" / name, folder / "labels" / name
    vol = np.full((40, 40, 20), -500, np.int16)
    save(label, np.zeros((40, 40, 20), np.uint8))
    if kind == "missing":
        return "file not found"
    if kind == "corrupt":
        save(image, vol)
        raw = image.read_bytes()
        image.write_bytes(raw[: len(raw) // 2])  # truncated gzip stream
        return "unreadable or corrupt"
    if kind == "2d":
        save(image, vol[:, :, 0])
        return "2-D image"
    if kind == "4d":
        save(image, np.stack([vol, vol], axis=-1))
        return "4-D image"
    if kind == "mismatch":
        save(image, vol)
        save(label, np.zeros((40, 40, 18), np.uint8))
        return "differs from image"
    raise ValueError(kind)


@pytest.fixture
def case_dir(tmp_path):
    for sub in ("images", "labels", "out"):
        (tmp_path / sub).mkdir()
    return tmp_path


def assert_clean_failure(proc, problem, path, out_dir):
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert problem in errors[0] and str(path) in errors[0]
    assert "Traceback" not in proc.stderr
    assert not any(out_dir.rglob("*.nii*")) and not any(out_dir.rglob("*.csv"))


@pytest.mark.parametrize("kind", ["missing", "corrupt", "2d", "4d"])
def test_inference_rejects_bad_image(kind, case_dir, random_model):
    problem = make_case(case_dir, "bad.nii.gz", kind)
    datalist = case_dir / "datalist.json"
    datalist.write_text(json.dumps({"test": [{"image": "images/bad.nii.gz"}]}))
    proc = bundle_run(["inference.json", "small.json"],
                      {"dataset_dir": case_dir, "datalist": datalist, "ckpt_dir": random_model,
                       "output_dir": case_dir / "out"}, check=False)
    assert_clean_failure(proc, problem, case_dir / "images" / "bad.nii.gz", case_dir / "out")


@pytest.mark.parametrize("kind", ["corrupt", "mismatch"])
def test_evaluation_rejects_bad_case(kind, case_dir, random_model):
    problem = make_case(case_dir, "bad.nii.gz", kind)
    entry = {"image": "images/bad.nii.gz", "label": "labels/bad.nii.gz"}
    (case_dir / "dataset.json").write_text(json.dumps({"training": [entry], "validation": [entry]}))
    proc = bundle_run(["train.json", "evaluate.json", "small.json"],
                      {"dataset_dir": case_dir, "ckpt_dir": random_model, "output_dir": case_dir / "out"}, check=False)
    bad = case_dir / ("labels" if kind == "mismatch" else "images") / "bad.nii.gz"
    assert_clean_failure(proc, problem, bad, case_dir / "out")


def test_missing_model_checkpoint_is_named(case_dir, tmp_path):
    make_case(case_dir, "ok.nii.gz", "2d")
    proc = bundle_run(["inference.json", "small.json"],
                      {"dataset_dir": case_dir / "images", "ckpt_dir": tmp_path / "nowhere", "output_dir": case_dir / "out"},
                      check=False)
    assert_clean_failure(proc, "file not found", tmp_path / "nowhere" / "model.pt", case_dir / "out")


def test_folder_without_images_is_reported(case_dir, random_model):
    proc = bundle_run(["inference.json", "small.json"],
                      {"dataset_dir": case_dir / "out", "ckpt_dir": random_model, "output_dir": case_dir / "out"},
                      check=False)
    assert_clean_failure(proc, "no NIfTI images", case_dir / "out", case_dir / "out")

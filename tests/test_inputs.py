"""Input checks name the file and the problem before any work starts."""

import json

import nibabel as nib
import numpy as np
import pytest

from scripts.errors import InputError
from scripts.inputs import check_case, checked_datalist


def write(path, array, affine=None):
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return str(path)


def test_label_values_outside_the_task_classes_are_rejected(tmp_path):
    image = write(tmp_path / "img.nii.gz", np.zeros((8, 8, 8), np.int16))
    label = write(tmp_path / "lbl.nii.gz", np.full((8, 8, 8), 17, np.uint8))
    with pytest.raises(InputError, match=r"lbl.nii.gz: values \[17\] outside the task's classes 0..13"):
        check_case({"image": image, "label": label}, ("image", "label"), num_classes=14)


def test_label_on_another_grid_is_rejected(tmp_path):
    image = write(tmp_path / "img.nii.gz", np.zeros((8, 8, 8), np.int16))
    label = write(tmp_path / "lbl.nii.gz", np.zeros((8, 8, 8), np.uint8), np.diag([2.0, 1, 1, 1]))
    with pytest.raises(InputError, match="affine differs from image"):
        check_case({"image": image, "label": label}, ("image", "label"))


def test_single_volume_4d_image_is_accepted(tmp_path):
    image = write(tmp_path / "img.nii.gz", np.zeros((8, 8, 8, 1), np.int16))
    check_case({"image": image}, ("image",))


def test_empty_file_and_empty_list(tmp_path):
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match="empty.nii.gz: file is empty"):
        check_case({"image": str(tmp_path / "empty.nii.gz")})
    (tmp_path / "d.json").write_text(json.dumps({"training": []}))
    with pytest.raises(InputError, match="list 'training' is empty"):
        checked_datalist(str(tmp_path / "d.json"), "training", str(tmp_path))

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
        check_case({"image": image, "label": label}, ("image", "label"), label_values=14)


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


def write_header_affine(path, array, affine):
    """A NIfTI whose sform is ``affine`` as given (nibabel refuses to derive a qform from a broken one)."""
    header = nib.Nifti1Header()
    header.set_data_dtype(array.dtype)
    header.set_sform(affine, code=1)
    nib.save(nib.Nifti1Image(array, None, header), str(path))
    return str(path)


def nan_affine():
    affine = np.eye(4)
    affine[1, 1] = np.nan
    return affine


@pytest.mark.parametrize(
    "affine, problem",
    [
        (nan_affine(), "affine has non-finite entries (NaN or infinite): the voxel geometry is unknown"),
        (np.diag([1.0, 0.0, 1.0, 1.0]), "affine is singular (a zero or repeated axis)"),
        (
            np.diag([0.001, 0.001, 0.001, 1.0]),
            "voxel spacing (0.001, 0.001, 0.001) mm outside the plausible 0.05-20 mm",
        ),
        (np.diag([40.0, 40.0, 40.0, 1.0]), "voxel spacing (40, 40, 40) mm outside the plausible 0.05-20 mm"),
    ],
    ids=["NaN entry", "zero column", "0.001 mm", "40 mm"],
)
def test_a_volume_whose_geometry_cannot_be_trusted_is_refused_naming_the_reason(tmp_path, affine, problem):
    image = write_header_affine(tmp_path / "img.nii.gz", np.zeros((8, 8, 8), np.int16), affine)
    with pytest.raises(InputError) as refused:
        check_case({"image": image}, ("image",))
    assert str(refused.value).startswith(f"image {image}: {problem}")


def test_the_resampled_size_is_estimated_and_refused_above_the_limit_before_resampling(tmp_path):
    from scripts.inputs import Geometry

    # 64^3 voxels of 10 mm at a working spacing of 0.5 mm: 1280^3 float32 voxels, 7.8 GB
    image = write(tmp_path / "img.nii.gz", np.zeros((64, 64, 64), np.int16), np.diag([10.0, 10.0, 10.0, 1.0]))
    with pytest.raises(InputError, match=r"would be \[1280, 1280, 1280\] voxels, 7.8 GB, above max_resampled_gb=4"):
        check_case({"image": image}, ("image",), geometry=Geometry(pixdim=[0.5, 0.5, 0.5]))
    check_case({"image": image}, ("image",), geometry=Geometry(pixdim=[0.5, 0.5, 0.5], max_resampled_gb=10))


def test_a_spacing_much_coarser_than_the_working_one_is_a_warning(tmp_path):
    from scripts.inputs import Geometry

    image = write(tmp_path / "img.nii.gz", np.full((8, 8, 8), -1000, np.int16), np.diag([1.0, 1.0, 10.0, 1.0]))
    warnings = []
    check_case({"image": image}, ("image",), warnings=warnings, geometry=Geometry(pixdim=[1.5, 1.5, 2.0]))
    assert any("more than 4 times the coarsest working spacing [1.5, 1.5, 2.0] mm" in w for w in warnings), warnings

"""Batch inference takes every image it can, sets the bad ones aside, and never overwrites an input."""

import errno
import json
import tempfile

import nibabel as nib
import numpy as np
import pytest

from scripts.errors import InputError
from scripts.inference.batch import BatchInferenceError, InferenceBatch, output_path


def write(path, array=None):
    nib.save(nib.Nifti1Image(np.full((8, 8, 8), -500, np.int16) if array is None else array, np.eye(4)), str(path))
    return str(path)


def test_every_nifti_of_the_folder_sorted_and_nothing_else(tmp_path):
    for name in ("b.nii.gz", "a.nii"):
        write(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    batch = InferenceBatch(str(tmp_path), output_dir=str(tmp_path / "out"))
    assert [d["image"] for d in batch.items] == [str(tmp_path / "a.nii"), str(tmp_path / "b.nii.gz")]
    batch.finish()  # nothing skipped: no error


def test_bad_images_are_set_aside_and_reported_at_the_end(tmp_path):
    good = write(tmp_path / "good.nii.gz")
    write(tmp_path / "flat.nii.gz", np.zeros((8, 8), np.int16))
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    batch = InferenceBatch(str(tmp_path), output_dir=str(tmp_path / "out"))
    assert batch.items == [{"image": good}]
    with pytest.raises(BatchInferenceError) as raised:
        batch.finish()
    message = str(raised.value)
    assert message.startswith(f"2 of 3 images could not be segmented (the other 1 were written to {tmp_path / 'out'})")
    assert f"{tmp_path / 'broken.nii.gz'}: unreadable or corrupt" in message
    assert f"{tmp_path / 'flat.nii.gz'}: 2-D image" in message


def test_a_batch_without_any_good_image_fails_at_once(tmp_path):
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(BatchInferenceError, match="1 of 1 images could not be segmented:\n  image .*broken.nii.gz"):
        InferenceBatch(str(tmp_path), output_dir=str(tmp_path / "out"))


def test_output_names_follow_save_imaged():
    assert output_path("/in/case_1.nii.gz", "/out") == "/out/case_1_seg.nii.gz"
    assert output_path("/in/case.2.nii", "/out") == "/out/case.2_seg.nii.gz"


def test_writing_into_the_input_folder_is_refused(tmp_path):
    write(tmp_path / "ct.nii.gz")
    with pytest.raises(InputError, match="is the input folder"):
        InferenceBatch(str(tmp_path), output_dir=str(tmp_path))


def test_an_output_that_would_overwrite_an_input_is_refused(tmp_path):
    (tmp_path / "in").mkdir()
    write(tmp_path / "in" / "ct.nii.gz")
    write(tmp_path / "in" / "ct_seg.nii.gz")  # e.g. a reference segmentation listed as an image
    datalist = tmp_path / "list.json"
    datalist.write_text(json.dumps({"test": [{"image": "in/ct.nii.gz"}, {"image": "in/ct_seg.nii.gz"}]}))
    with pytest.raises(InputError, match=r"output .*in/ct_seg.nii.gz: would overwrite the input image"):
        InferenceBatch(str(tmp_path), str(datalist), output_dir=str(tmp_path / "in"))


def test_two_inputs_with_the_same_name_are_refused(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        write(tmp_path / sub / "ct.nii.gz")
    datalist = tmp_path / "list.json"
    datalist.write_text(json.dumps({"test": [{"image": "a/ct.nii.gz"}, {"image": "b/ct.nii.gz"}]}))
    with pytest.raises(InputError, match="have the same file name"):
        InferenceBatch(str(tmp_path), str(datalist), output_dir=str(tmp_path / "out"))


def test_an_interrupted_segmentation_write_leaves_no_file(tmp_path, monkeypatch):
    import torch
    from monai.transforms import SaveImage

    from scripts.atomic_files import AtomicNibabelWriter

    def dies_halfway(img, filename):
        with open(filename, "wb") as f:
            f.write(b"half a NIfTI")
        raise KeyboardInterrupt  # stands for a kill during the write

    monkeypatch.setattr(nib, "save", dies_halfway)
    saver = SaveImage(output_dir=str(tmp_path), output_postfix="seg", separate_folder=False, writer=AtomicNibabelWriter)
    with pytest.raises(KeyboardInterrupt):
        saver(torch.zeros(1, 4, 4, 4), meta_data={"filename_or_obj": "ct.nii.gz"})
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    saver(torch.zeros(1, 4, 4, 4), meta_data={"filename_or_obj": "ct.nii.gz"})
    assert [p.name for p in tmp_path.iterdir()] == ["ct_seg.nii.gz"]


def test_an_output_dir_that_cannot_be_written_stops_before_any_image_is_read(tmp_path, monkeypatch):
    image = tmp_path / "scans" / "a.nii.gz"
    image.parent.mkdir()
    image.write_bytes(b"not read: the output check comes first")
    taken = tmp_path / "taken"
    taken.write_text("a file where the output folder should be")
    with pytest.raises(InputError, match=rf"output_dir {taken}: is a file, not a folder"):
        InferenceBatch(str(image.parent), output_dir=str(taken))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", full)
    with pytest.raises(InputError, match=r"output_dir .*out: cannot write there \(No space left on device\)"):
        InferenceBatch(str(image.parent), output_dir=str(tmp_path / "out"))


@pytest.mark.parametrize("shape", [(6, 5, 1), (6, 5, 4, 1), (6, 5, 4)])
def test_segmentations_are_written_in_the_exact_shape_of_the_input_file(tmp_path, shape):
    """MONAI drops trailing singleton dimensions; a one-slice or (x, y, z, 1) input must keep them."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import SaveImage

    from scripts.atomic_files import AtomicNibabelWriter

    spatial = tuple(shape[:3])
    dim = np.array([len(shape), *shape] + [1] * (7 - len(shape)))  # the NIfTI header field the reader keeps
    meta = {"dim": dim, "original_affine": np.eye(4), "spatial_shape": np.array(spatial)}
    pred = MetaTensor(torch.ones((1, *spatial)), affine=torch.eye(4), meta={**meta, "filename_or_obj": "x.nii.gz"})
    SaveImage(
        output_dir=str(tmp_path),
        output_postfix="seg",
        separate_folder=False,
        writer=AtomicNibabelWriter,
        resample=False,
        output_dtype=np.uint8,
        print_log=False,
    )(pred)
    assert nib.load(tmp_path / "x_seg.nii.gz").shape == shape

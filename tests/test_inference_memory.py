"""Inference holds one class at a time on the input's grid, and refuses a volume that will not fit first."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from chains import label_table, name, parse, write_case
from monai.data import MetaTensor
from monai.transforms import AsDiscreted, Invertd

from scripts.inference.batch import BatchInferenceError
from scripts.inference.memory import inference_gb
from scripts.transforms import InvertedLabelsd


@pytest.mark.parametrize("ratio", [0.6, 1.0, 1.7])
@pytest.mark.parametrize("preset", [None, "task01_brain_tumour", "task05_prostate"], ids=name)
def test_labels_a_few_slices_at_a_time_equal_inverting_every_class_at_once(preset, ratio, tmp_path):
    """Reoriented, resampled (finer, equal and coarser input spacing) and cropped: the same label map, voxel for
    voxel, wherever a class has a score there; a voxel beyond the crop, where every inverted score is zero but
    for float rounding (< 1e-3), is background. Slabs of one slice give the same map as one slab of all."""
    case = write_case(tmp_path, "case", preset, ratio=ratio)
    preprocessing = parse("inference", preset).get_parsed_content("preprocessing")
    image = preprocessing({"image": case["image"]})["image"]
    n, regions = label_table(preset)
    torch.manual_seed(0)
    logits = torch.randn(len(regions) if regions else n, *image.shape[1:]) * 3
    scores = MetaTensor(torch.sigmoid(logits) if regions else torch.softmax(logits, 0))
    kwargs = {"threshold": 0.5} if regions else {"argmax": True}
    at_once = Invertd("pred", preprocessing, orig_keys="image", nearest_interp=False)({"pred": scores, "image": image})
    expected = AsDiscreted("pred", **kwargs)(at_once)["pred"].to(torch.uint8)
    slabs = [
        InvertedLabelsd("pred", preprocessing, argmax=not regions, threshold=0.5 if regions else None, slab_mb=mb)(
            {"pred": scores, "image": image}
        )["pred"]
        for mb in (64.0, 0.001)
    ]
    got = slabs[0]
    assert got.dtype == torch.uint8 and got.shape == expected.shape and torch.equal(got, slabs[1])
    inverted = at_once["pred"].as_tensor()
    scored = inverted.max(0).values > 1e-3
    # a near tie (top two scores, or a region's score and its threshold, within 1e-4) may go either way in float32
    margin = (inverted - 0.5).abs().min(0).values if regions else -inverted.topk(2, dim=0).values.diff(dim=0)[0]
    compared = scored & (margin > 1e-4)
    assert torch.equal(got[:, compared], expected[:, compared]), "labels differ from inverting all classes at once"
    assert not got[:, ~scored].any()
    assert compared.float().mean() > 0.3  # the body's box is compared; the air around it was cropped away
    assert (scored & ~compared).float().mean() < 1e-3
    assert np.allclose(got.affine, expected.affine) and got.shape[1:] == write_shape(case["image"])


def test_an_image_without_its_input_grid_metadata_is_inverted_one_class_at_a_time(tmp_path):
    """Not read by LoadImage (no original_affine / spatial_shape): Invertd class by class, the same labels."""
    case = write_case(tmp_path, "case", None, ratio=0.6)
    preprocessing = parse("inference", None).get_parsed_content("preprocessing")
    image = preprocessing({"image": case["image"]})["image"]
    torch.manual_seed(0)
    scores = MetaTensor(torch.softmax(torch.randn(4, *image.shape[1:]) * 3, 0))
    expected = AsDiscreted("pred", argmax=True)(
        Invertd("pred", preprocessing, orig_keys="image", nearest_interp=False)({"pred": scores, "image": image})
    )["pred"]
    del image.meta["original_affine"]
    got = InvertedLabelsd("pred", preprocessing)({"pred": scores, "image": image})["pred"]
    assert torch.equal(got, expected.to(torch.uint8))


def write_shape(path) -> tuple:
    import nibabel as nib

    return nib.load(path).shape[:3]


def test_a_tie_keeps_the_lower_class_as_argmax_does(tmp_path):
    case = write_case(tmp_path, "case", None)
    preprocessing = parse("inference", None).get_parsed_content("preprocessing")
    image = preprocessing({"image": case["image"]})["image"]
    scores = MetaTensor(torch.full((4, *image.shape[1:]), 0.25))
    got = InvertedLabelsd("pred", preprocessing)({"pred": scores, "image": image})["pred"]
    assert int(got.max()) == 0


def test_a_volume_that_would_not_fit_the_stated_memory_is_refused_in_one_line_before_any_compute(tmp_path):
    case = write_case(tmp_path / "data", "case", None)
    need = inference_gb(write_shape(case["image"]), [1.5, 1.5, 2.0], [1.5, 1.5, 2.0], 1, 14)
    parser = parse(
        "inference",
        None,
        dataset_dir=str(tmp_path / "data" / "imagesTr"),
        output_dir=str(tmp_path / "out"),
        max_memory_gb=need / 2,
    )
    with pytest.raises(Exception) as err:
        parser.get_parsed_content("cases")  # the image list is checked when the workflow starts
    error = err.value.__cause__ or err.value
    assert isinstance(error, BatchInferenceError), error
    line = [line for line in str(error).splitlines() if "case.nii.gz" in line]
    assert len(line) == 1 and "needs about" in line[0] and "max_memory_gb" in line[0], str(error)
    assert not (tmp_path / "out" / "case_seg.nii.gz").exists()
    fits = parse("inference", None, dataset_dir=str(tmp_path / "data" / "imagesTr"), max_memory_gb=need * 2)
    fits["output_dir"] = str(tmp_path / "out2")
    assert len(fits.get_parsed_content("cases").items) == 1


def test_the_memory_estimate_grows_with_the_input_and_with_classes_only_on_the_network_grid():
    """Twice the slices: about twice the volume-dependent part; 14 classes instead of 2: only the small
    network-grid term grows, not 12 float32 maps at the input's resolution (labels are taken a slab at a time)."""
    base = inference_gb((512, 512, 100), [0.8, 0.8, 1.0], [4.0] * 3, 1, 14)
    double = inference_gb((512, 512, 200), [0.8, 0.8, 1.0], [4.0] * 3, 1, 14)
    fixed = inference_gb((1, 1, 1), [1.0] * 3, [4.0] * 3, 1, 14)
    assert double - fixed == pytest.approx(2 * (base - fixed), rel=0.01)
    two = inference_gb((512, 512, 100), [0.8, 0.8, 1.0], [4.0] * 3, 1, 2)
    assert base - two < 0.1 * 12 * 4 * 512 * 512 * 100 / 2**30


def test_evaluation_reads_one_case_at_a_time(tmp_path):
    """Evaluating a long validation list must not cache every case: memory would grow with the list."""
    from chains import write_dataset
    from monai.data import CacheDataset

    data = write_dataset(tmp_path / "data", None)
    dataset = parse("evaluate", None, dataset_dir=str(data)).get_parsed_content("validate#dataset")
    assert not isinstance(dataset, CacheDataset), type(dataset)
    assert len(dataset) == 1 and dataset[0]["image"].dim() == 4  # read when asked for, through the chain


def test_an_image_with_nothing_above_the_intensity_window_is_all_background_on_its_grid(tmp_path):
    """The body crop of an image below the CT window is empty: the network sees nothing, every voxel is 0."""
    import nibabel as nib

    path = tmp_path / "air.nii.gz"
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    nib.save(nib.Nifti1Image(np.full((40, 40, 20), -500, np.int16), affine), path)
    preprocessing = parse("inference", None).get_parsed_content("preprocessing")
    image = preprocessing({"image": str(path)})["image"]
    assert image.shape[1:].numel() == 0
    got = InvertedLabelsd("pred", preprocessing)(
        {"pred": MetaTensor(torch.zeros(14, *image.shape[1:])), "image": image}
    )
    assert got["pred"].shape == (1, 40, 40, 20) and not got["pred"].any()
    assert np.allclose(got["pred"].affine, affine)

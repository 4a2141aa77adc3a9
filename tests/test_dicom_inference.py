"""DICOM in inference: a series folder is one input, a folder of series folders a batch; the segmentation
lies on the series' grid (checked against the affine written out from the DICOM positions), and the DICOM
SEG asked for references the series' own images. Formats inference cannot read are named as such."""

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_data import hu_volume, write_series

from scripts.errors import InputError
from scripts.inference.batch import InferenceBatch

from conftest import ROOT, bundle_run

RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def test_a_folder_of_series_folders_is_a_batch_of_converted_series_on_their_own_grids(tmp_path):
    batch_dir = tmp_path / "batch"
    a = write_series(batch_dir / "patient_a", hu_volume(seed=1), series_number=2)
    write_series(
        batch_dir / "patient_a",
        hu_volume((10, 8, 1), seed=2),
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
        series_number=1,
        names="LOC{index}",
    )  # the localizer beside the series is not an input of its own
    b = write_series(batch_dir / "patient_b" / "study" / "series", hu_volume(seed=3), pixel_spacing=(0.6, 0.5))
    (batch_dir / "scan.mhd").write_text("ObjectType = Image\n")
    out = tmp_path / "out"
    batch = InferenceBatch(str(batch_dir), output_dir=str(out))
    images = [item["image"] for item in batch.items]
    assert images == [str(out / "dicom_images" / "patient_a.nii.gz"), str(out / "dicom_images" / "patient_b.nii.gz")]
    for image, series in zip(images, (a, b)):
        img = nib.load(image)
        assert img.shape == (10, 8, 6)
        np.testing.assert_allclose(img.affine, RAS @ series["lps"], atol=1e-4)
    assert batch.failed == [
        f"image {batch_dir / 'scan.mhd'}: unsupported format (MetaImage); convert with python -m scripts.tools.prepare"
    ]
    one = InferenceBatch(str(batch_dir / "patient_a"), output_dir=str(tmp_path / "one"))
    assert [item["image"] for item in one.items] == [str(tmp_path / "one" / "dicom_images" / "patient_a.nii.gz")]


def test_a_folder_without_nifti_or_dicom_names_the_unsupported_files(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "scan.nrrd").write_text("NRRD0004\n")
    with pytest.raises(
        InputError,
        match=r"no NIfTI images .* or DICOM series folders; found 1 unsupported files "
        r"\(scan.nrrd\): convert with python -m scripts.tools.prepare",
    ):
        InferenceBatch(str(tmp_path / "in"), output_dir=str(tmp_path / "out"))


def test_a_folder_whose_series_cannot_be_converted_is_reported_with_the_reason(tmp_path):
    write_series(tmp_path / "in" / "gap", hu_volume(seed=4), offsets=[0, 2.5, 5, 10, 12.5, 15])
    write_series(tmp_path / "in" / "good", hu_volume(seed=5))
    batch = InferenceBatch(str(tmp_path / "in"), output_dir=str(tmp_path / "out"))
    assert len(batch.items) == 1
    (failure,) = batch.failed
    assert (
        failure.startswith(f"DICOM folder {tmp_path / 'in' / 'gap'}: no CT volume series")
        and "missing slices" in failure
    )


@pytest.mark.slow  # one inference workflow run
def test_inference_on_a_dicom_series_writes_a_map_on_its_grid_and_a_dicom_seg_referencing_it(tmp_path, random_model):
    series = write_series(tmp_path / "in" / "chest", hu_volume((40, 32, 12), seed=6), pixel_spacing=(2.0, 1.5))
    out = tmp_path / "out"
    bundle_run(
        ["inference.json", "small.json"],
        {"dataset_dir": tmp_path / "in", "ckpt_dir": random_model, "output_dir": out, "dicom_seg": True},
    )
    seg = nib.load(out / "chest_seg.nii.gz")
    assert seg.shape == (40, 32, 12)
    np.testing.assert_allclose(seg.affine, RAS @ series["lps"], atol=1e-4)
    labels = np.asarray(seg.dataobj)
    ds = pydicom.dcmread(out / "chest_seg.dcm")
    assert ds.Modality == "SEG" and ds.StudyInstanceUID == series["study_uid"]
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == series["series_uid"]
    found = sorted(int(v) for v in np.unique(labels) if v > 0)
    assert len(ds.SegmentSequence) == len(found) >= 1
    # every frame of segment 1 is the map's first label on the slice it references
    sop_to_slice = {uid: k for k, uid in enumerate(series["sop_uids"])}
    frames, compared = ds.pixel_array.reshape(-1, 32, 40), 0
    for frame, item in zip(frames, ds.PerFrameFunctionalGroupsSequence):
        if item.SegmentIdentificationSequence[0].ReferencedSegmentNumber != 1:
            continue
        k = sop_to_slice[item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        np.testing.assert_array_equal(frame.astype(bool), labels[:, :, k].T == found[0])
        compared += 1
    assert compared == np.any(labels == found[0], axis=(0, 1)).sum()  # one frame per slice holding the label


def test_a_datalist_image_may_be_a_dicom_series_folder_read_through_its_conversion(tmp_path, monkeypatch):
    """Evaluation and fine-tuning read datalists with checked_datalist: a folder image is its series."""
    import json
    import tempfile

    from scripts.inputs import checked_datalist

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    volume = hu_volume(seed=7)
    series = write_series(tmp_path / "data" / "case1", volume)
    label = np.zeros(volume.shape, np.uint8)
    label[2:5, 3:6, 1:4] = 6
    nib.save(nib.Nifti1Image(label, RAS @ series["lps"]), tmp_path / "data" / "case1_label.nii.gz")
    nib.save(
        nib.Nifti1Image(label, RAS @ series["lps"] @ np.diag([1, -1, 1, 1.0])), tmp_path / "data" / "flipped.nii.gz"
    )
    datalist = tmp_path / "data" / "dataset.json"
    entries = [{"image": "case1", "label": "case1_label.nii.gz"}, {"image": "case1", "label": "flipped.nii.gz"}]
    datalist.write_text(json.dumps({"validation": entries[:1], "training": entries[1:]}))
    (item,) = checked_datalist(
        str(datalist), "validation", str(tmp_path / "data"), label_names=[str(v) for v in range(14)]
    )
    assert item["image"].startswith(str(tmp_path / "tmp" / "swin_unetr_dicom")) and item["image"].endswith(
        "/case1.nii.gz"
    )
    np.testing.assert_array_equal(np.asarray(nib.load(item["image"]).dataobj), volume)
    with pytest.raises(InputError, match="flipped.nii.gz: affine differs from image .*case1.nii.gz"):
        checked_datalist(str(datalist), "training", str(tmp_path / "data"), label_names=[str(v) for v in range(14)])


def test_a_conversion_is_reused_only_for_the_same_series_never_for_another_patient_on_the_same_grid(tmp_path):
    first, second = hu_volume(seed=1), hu_volume(seed=2)
    write_series(tmp_path / "run1" / "CT", first)  # same folder name, same geometry, another patient's data
    write_series(tmp_path / "run2" / "CT", second)
    out = tmp_path / "out"
    InferenceBatch(str(tmp_path / "run1"), output_dir=str(out))
    converted = out / "dicom_images" / "CT.nii.gz"
    assert np.array_equal(nib.load(converted).get_fdata(), first)
    written = converted.stat().st_mtime_ns
    InferenceBatch(str(tmp_path / "run1"), output_dir=str(out))  # the same series again: reused, not rewritten
    assert converted.stat().st_mtime_ns == written
    InferenceBatch(str(tmp_path / "run2"), output_dir=str(out))
    assert np.array_equal(nib.load(converted).get_fdata(), second)


def test_dicom_seg_segments_are_named_by_the_task_classes_not_btcv(tmp_path):
    write_series(tmp_path / "in" / "liver_ct", hu_volume(seed=4))
    out = tmp_path / "out"
    from scripts.tasks.labels import preset_segment_types

    batch = InferenceBatch(
        str(tmp_path / "in"),
        output_dir=str(out),
        dicom_seg=True,
        class_names=["background", "liver", "cancer"],
        segment_types=preset_segment_types("task03_liver"),
    )
    (converted,) = [item["image"] for item in batch.items]
    labels = np.zeros((10, 8, 6), np.uint8)
    labels[2:6, 2:5, 1:4], labels[3:4, 3:4, 2:3] = 1, 2  # what the network would write for this case
    img = nib.load(converted)
    nib.save(nib.Nifti1Image(labels, img.affine), out / "liver_ct_seg.nii.gz")
    batch.done.add(converted)
    batch.finish()
    ds = pydicom.dcmread(out / "liver_ct_seg.dcm")
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["liver", "cancer"]  # BTCV would say spleen, kidney
    liver, cancer = ds.SegmentSequence
    assert liver.SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"  # SNOMED CT: liver
    assert cancer.SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"  # neoplasm
    assert cancer.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"  # morphologically abnormal
    assert liver.RecommendedDisplayCIELabValue != cancer.RecommendedDisplayCIELabValue


def test_every_preset_gives_each_class_a_snomed_segment_type():
    from pydicom.sr.codedict import codes

    from scripts.tasks.labels import preset_class_names, preset_segment_types

    for path in sorted((ROOT / "configs" / "tasks").glob("*.json")):
        types = preset_segment_types(path.stem)
        assert set(types) == set(preset_class_names(path.stem)) - {"background"}, path.stem
        assert all(hasattr(codes.SCT, keyword) for keyword in types.values()), path.stem


def test_a_one_slice_series_and_a_stray_file_are_reported_while_the_good_series_is_segmented(tmp_path):
    write_series(tmp_path / "in" / "good", hu_volume(seed=1))
    write_series(tmp_path / "in" / "one", hu_volume((10, 8, 1), seed=3))  # a single image: no slice spacing
    stray = tmp_path / "in" / "stray.dcm"
    stray.write_bytes(sorted((tmp_path / "in" / "good").iterdir())[0].read_bytes())
    batch = InferenceBatch(str(tmp_path / "in"), output_dir=str(tmp_path / "out"))
    assert [item["image"] for item in batch.items] == [str(tmp_path / "out" / "dicom_images" / "good.nii.gz")]
    assert batch.failed == [
        f"DICOM file {stray}: lies beside series folders; not segmented: move it into its series",
        f"DICOM folder {tmp_path / 'in' / 'one'}: no CT volume series (series #2 test series 2: one slice: a single "
        "image, not a volume (no slice spacing))",
    ]
    assert batch.total == 3


def blank_uids(folder):
    """What an anonymiser that blanks UIDs leaves: no SeriesInstanceUID and no SOPInstanceUID."""
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        del ds.SeriesInstanceUID, ds.SOPInstanceUID
        ds.file_meta.MediaStorageSOPInstanceUID = ""
        ds.save_as(path)


def test_a_series_whose_uids_were_blanked_is_converted_with_one_warning(tmp_path, caplog):
    volume = hu_volume(seed=5)
    write_series(tmp_path / "in" / "anon", volume)
    blank_uids(tmp_path / "in" / "anon")
    with caplog.at_level("WARNING"):
        batch = InferenceBatch(str(tmp_path / "in"), output_dir=str(tmp_path / "out"))
    assert batch.failed == []
    assert np.array_equal(nib.load(batch.items[0]["image"]).get_fdata(), volume)
    warned = [r.getMessage() for r in caplog.records if "without Series / SOP Instance UIDs" in r.getMessage()]
    assert len(warned) == 1 and "6 DICOM files" in warned[0]


def test_a_truncated_slice_is_named_in_the_reason_its_series_is_skipped(tmp_path):
    write_series(tmp_path / "in" / "good", hu_volume(seed=1))
    write_series(tmp_path / "in" / "cut", hu_volume(seed=2))
    damaged = sorted((tmp_path / "in" / "cut").iterdir())[2]
    damaged.write_bytes(damaged.read_bytes()[:200])  # an interrupted download
    batch = InferenceBatch(str(tmp_path / "in"), output_dir=str(tmp_path / "out"))
    assert len(batch.items) == 1 and len(batch.failed) == 1
    assert batch.failed[0].endswith(f"damaged DICOM files (truncated or corrupt, skipped): {damaged}")


def test_a_tilted_gantry_series_is_placed_alike_by_nibabel_and_simpleitk(tmp_path):
    sitk = pytest.importorskip("SimpleITK", reason="pip install -r requirements-dicom.txt")
    from scripts.dicom.series import series_to_nifti

    volume = hu_volume((10, 8, 6), seed=9)
    written = write_series(tmp_path / "tilted", volume)  # axial, rows 0.9 mm apart, slices 2.5 mm apart
    for k, path in enumerate(written["paths"]):  # the gantry tilt moves slice k by k rows (0.9 mm) along y
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = [
            ds.ImagePositionPatient[0],
            ds.ImagePositionPatient[1] + 0.9 * k,
            ds.ImagePositionPatient[2],
        ]
        ds.save_as(path)
    out = tmp_path / "tilted.nii.gz"
    series_to_nifti(str(tmp_path / "tilted"), str(out))
    img, itk = nib.load(out), sitk.ReadImage(str(out))
    for index in [(0, 0, 0), (9, 7, 5), (3, 6, 2)]:
        ras = (img.affine @ [*index, 1])[:3]
        lps = np.array(itk.TransformIndexToPhysicalPoint(index))
        np.testing.assert_allclose(ras * [-1, -1, 1], lps, atol=1e-3)  # the same point for every voxel
    data = np.asarray(img.dataobj)
    for k in range(6):  # each slice lies where its DICOM position says: moved k rows on the orthogonal grid
        np.testing.assert_array_equal(data[:, k:, k], volume[:, : 8 - k, k])
    assert np.allclose(img.header.get_qform(), img.affine) and img.header["qform_code"] == 1


def test_bit_flipped_headers_never_stop_a_batch(tmp_path):
    import random

    write_series(tmp_path / "in" / "good", hu_volume(seed=1))
    flipped = write_series(tmp_path / "in" / "flipped", hu_volume(seed=2))
    rng = random.Random(0)
    for path in flipped["paths"]:  # three random bytes of every header changed, as a failing disk leaves them
        data = bytearray(open(path, "rb").read())
        for _ in range(3):
            data[rng.randrange(132, 900)] = rng.randrange(256)
        open(path, "wb").write(bytes(data))
    batch = InferenceBatch(str(tmp_path / "in"), output_dir=str(tmp_path / "out"))
    assert [item["image"] for item in batch.items][-1] == str(tmp_path / "out" / "dicom_images" / "good.nii.gz")
    assert all("flipped" in failure for failure in batch.failed)

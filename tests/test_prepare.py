"""The prepare command: a mixed collection folder in, NIfTI in HU with the exact geometry, a datalist and a
report out; every series not converted named with its reason; reruns keep verified work.

The DICOM series are written here with pydicom from known HU volumes and known positions, so the expected
voxels and affine are computed independently of the code under test (LPS written out from the DICOM
definitions, then x and y negated for RAS)."""

import csv
import json
import logging
import os
import shutil
import signal
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from dicom_data import hu_volume, lps_affine, write_series
from pydicom.uid import JPEGLSLossless, RLELossless

from scripts.tools.prepare import prepare

from conftest import REAL_CT, ROOT, configs, requires_real_ct

RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # rows run head to feet: a non-axial grid catches swapped axes


def write_mhd(folder, volume, spacing, origin, flip_y=True):
    """A MetaImage header and raw file written by hand (LUNA16's format), independent of any reader."""
    os.makedirs(folder, exist_ok=True)
    direction = "1 0 0 0 -1 0 0 0 1" if flip_y else "1 0 0 0 1 0 0 0 1"
    header = (
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\nCompressedData = False\n"
        f"TransformMatrix = {direction}\nOffset = {' '.join(map(str, origin))}\nCenterOfRotation = 0 0 0\n"
        f"AnatomicalOrientation = RAI\nElementSpacing = {' '.join(map(str, spacing))}\n"
        f"DimSize = {' '.join(map(str, volume.shape))}\nElementType = MET_SHORT\nElementDataFile = scan.raw\n"
    )
    (folder / "scan.mhd").write_text(header)
    (folder / "scan.raw").write_bytes(volume.astype("<i2").tobytes(order="F"))  # x runs fastest
    lps = np.diag([spacing[0], -spacing[1] if flip_y else spacing[1], spacing[2], 1.0])
    lps[:3, 3] = origin
    return RAS @ lps


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """One folder with every case, prepared once with two worker processes."""
    root = tmp_path_factory.mktemp("collection")
    src = root / "raw"
    cases = {}
    even = hu_volume(seed=1) // 2 * 2  # even HU values: exact with RescaleSlope 2
    cases["ct"] = write_series(src / "p1" / "study" / "ct", even, orientation=CORONAL, slope=2.0, intercept=-1024)
    cases["ct"]["volume"] = even
    write_series(
        src / "p1" / "study" / "ct",
        hu_volume((10, 8, 1), seed=9),
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
        series_number=1,
        names="LOC{index}",
    )
    shutil.copytree(src / "p1" / "study" / "ct", src / "p1" / "study_copy" / "ct")
    for name, seed, syntax in (("rle", 2, RLELossless), ("jpegls", 3, JPEGLSLossless)):
        volume = hu_volume(seed=seed)
        cases[name] = write_series(src / name, volume, transfer_syntax=syntax, series_number=seed + 10)
        cases[name]["volume"] = volume
    # the JPEG-LS series exported again with new UIDs and names: the same scan twice
    write_series(src / "reexport", cases["jpegls"]["volume"], series_number=30, names="X{index}")
    write_series(src / "uneven", hu_volume(seed=4), offsets=[0, 2.5, 5, 8, 10.5, 13], series_number=4)
    write_series(src / "gap", hu_volume(seed=5), offsets=[0, 2.5, 5, 10, 12.5, 15], series_number=5)
    write_series(src / "mr", hu_volume(seed=6), modality="MR", series_number=6)
    write_series(src / "short", hu_volume((10, 8, 3), seed=7), series_number=7)
    broken = write_series(src / "broken", hu_volume(seed=8), series_number=8)
    damaged = broken["paths"][2]
    with open(damaged, "r+b") as f:  # header intact, pixel data cut short
        f.truncate(os.path.getsize(damaged) - 40)
    mhd_volume = hu_volume((12, 9, 7), seed=10)
    cases["mhd"] = {"volume": mhd_volume}
    cases["mhd"]["ras"] = write_mhd(src / "luna" / "subset0", mhd_volume, (0.8, 0.75, 1.25), (-150.5, 20.0, -300.0))
    (src / "README.txt").write_text("not an image")
    out = root / "prepared"
    summary = prepare(str(src), str(out), name="mixed", num_workers=2, min_slices=4)
    with open(out / "mixed_report.csv") as f:
        rows = list(csv.DictReader(f))
    return {"src": src, "out": out, "cases": cases, "summary": summary, "rows": rows}


def rows_of(collection, folder):
    return [r for r in collection["rows"] if r["source"] == str(collection["src"] / folder)]


def test_report_keeps_ct_volumes_and_names_the_reason_for_every_other_series(collection):
    def only(folder):
        (row,) = rows_of(collection, folder)
        return row["status"], row["reason"].split(":")[0]

    ct_rows = sorted((r["status"], r["reason"].split(":")[0]) for r in rows_of(collection, "p1/study/ct"))
    assert ct_rows == [("kept", ""), ("skipped", "localizer/scout")]
    copies = rows_of(collection, "p1/study_copy/ct")  # the series and its localizer, copied
    original = collection["src"] / "p1/study/ct"
    assert len(copies) == 2 and all(r["reason"] == f"duplicate: same series and files as {original}" for r in copies)
    assert only("rle") == ("kept", "") and only("jpegls") == ("kept", "")
    assert only("reexport") == ("skipped", "duplicate")  # same voxels on the same grid as the JPEG-LS series
    assert only("uneven") == ("skipped", "slice spacing not uniform")
    (gap,) = rows_of(collection, "gap")
    assert gap["reason"] == "missing slices: 1 missing in 1 gaps of the 2.5 mm slice spacing"
    assert only("mr") == ("skipped", "not CT")
    assert only("short") == ("skipped", "too few slices")
    (broken,) = rows_of(collection, "broken")
    assert broken["status"] == "skipped" and broken["reason"].startswith("unreadable pixel data: ")
    assert broken["reason"].split(": ")[1].endswith("IM00003")  # the damaged file is named
    assert len(collection["rows"]) == 13  # 12 series and the MHD file; README.txt and scan.raw are not rows
    summary = collection["summary"]
    assert (summary["kept"], summary["skipped"], summary["series"], summary["volume_files"]) == (4, 9, 12, 1)


def test_kept_volumes_hold_the_hu_values_and_the_affine_of_an_independent_conversion(collection):
    out, cases = collection["out"], collection["cases"]
    for name in ("ct", "rle", "jpegls"):
        case = cases[name]
        (row,) = [r for r in collection["rows"] if r["series_uid"] == case["series_uid"] and r["status"] == "kept"]
        img = nib.load(out / row["output"])
        assert img.get_data_dtype() == np.int16, name
        np.testing.assert_array_equal(np.asarray(img.dataobj), case["volume"], err_msg=name)
        np.testing.assert_allclose(img.affine, RAS @ case["lps"], atol=1e-4, err_msg=name)
        assert row["size"] == "10x8x6" and row["spacing_mm"] == "0.7x0.9x2.5", row
    # coronal slices, by hand: LPS = origin + 9 * 0.7 * row + 7 * 0.9 * column + 5 * 2.5 * normal
    (row,) = [r for r in collection["rows"] if r["series_uid"] == cases["ct"]["series_uid"] and r["status"] == "kept"]
    corner = nib.load(out / row["output"]).affine @ np.array([9, 7, 5, 1.0])
    np.testing.assert_allclose(corner[:3], [100 - 6.3, 120 - 12.5, 30 - 6.3], atol=1e-4)  # RAS: x, y negated
    (row,) = rows_of(collection, "luna/subset0/scan.mhd")
    img = nib.load(out / row["output"])
    np.testing.assert_array_equal(np.asarray(img.dataobj), cases["mhd"]["volume"])
    np.testing.assert_allclose(img.affine, cases["mhd"]["ras"], atol=1e-4)
    assert row["output"] == "images/luna_subset0_scan.nii.gz"


def test_datalist_lists_exactly_the_kept_volumes_relative_to_its_folder(collection):
    out = collection["out"]
    lists = json.loads((out / "mixed.json").read_text())
    kept = sorted(r["output"] for r in collection["rows"] if r["status"] == "kept")
    listed = sorted(e["image"] for e in lists["training"] + lists["validation"])
    assert listed == kept and len(lists["validation"]) == 1  # 5% of 4 rounds to 0; a split keeps one
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(os.path.basename(p) for p in kept)
    from scripts.pretraining.data import image_list

    assert len(image_list(str(out / "mixed.json"))) == len(lists["training"])


def test_pre_training_validates_on_the_validation_lists_of_its_training_datalists_by_default(collection, caplog):
    """Only --train_sources given: val_sources is train_sources, whose datalists (as prepare writes them) hold a
    validation list apart from the training one. A folder has no such list: the overlap is warned about."""
    from monai.bundle import ConfigParser

    from scripts.pretraining.data import image_list, validation_images

    parser = ConfigParser()
    parser.read_config(configs("pretrain.json"))
    parser.update({"train_sources": [str(collection["out"] / "mixed.json")]})
    assert parser.get_parsed_content("val_sources") == parser.get_parsed_content("train_sources")
    with caplog.at_level(logging.WARNING):
        validation = parser.get_parsed_content("validate#images")
    assert len(validation) == 1 and not set(map(str, validation)) & set(
        map(str, parser.get_parsed_content("train#images"))
    )
    assert "also training volumes" not in caplog.text
    folder = str(collection["out"] / "images")
    with caplog.at_level(logging.WARNING):
        validation_images(folder, image_list(folder))
    assert "4 of 4 pre-training validation volumes are also training volumes" in caplog.text


def small_collection(root):
    write_series(root / "raw" / "a", hu_volume(seed=11), series_number=1)
    write_series(root / "raw" / "b", hu_volume(seed=12), series_number=2)
    write_series(root / "raw" / "c", hu_volume(seed=13), series_number=3)
    return root / "raw", root / "out"


@pytest.mark.slow  # a fresh interpreter imports MONAI and torch
def test_a_run_killed_while_writing_leaves_no_partial_file_and_the_rerun_completes(tmp_path):
    src, out = small_collection(tmp_path)
    # the second volume's write is cut short by SIGKILL, as an out-of-memory kill or a power cut would
    killer = (
        "import os, signal\n"
        "import scripts.dicom.series as series\n"
        "real, calls = series.nib.save, []\n"
        "def dies(img, path):\n"
        "    calls.append(path)\n"
        "    if len(calls) == 2:\n"
        "        open(path, 'wb').write(b'half a file')\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    real(img, path)\n"
        "series.nib.save = dies\n"
        "from scripts.tools.prepare import prepare\n"
        f"prepare({str(src)!r}, {str(out)!r}, num_workers=0, min_slices=4)\n"
    )
    proc = subprocess.run([sys.executable, "-c", killer], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    images = out / "images"
    assert len([p for p in images.iterdir() if not p.name.startswith(".")]) == 1  # only the complete one
    assert len(list(images.glob(".*.partial*"))) == 1  # the temporary file of the killed write
    summary = prepare(str(src), str(out), num_workers=0, min_slices=4)
    assert (summary["kept"], summary["already_converted"], summary["converted"]) == (3, 1, 2)
    assert summary["stale_partial_files_removed"] == 1 and not list(images.glob(".*"))
    for path in images.iterdir():
        assert np.asarray(nib.load(path).dataobj).shape == (10, 8, 6)


def test_a_rerun_reconverts_an_output_that_no_longer_reads_back(tmp_path):
    src, out = small_collection(tmp_path)
    prepare(str(src), str(out), num_workers=0, min_slices=4)
    damaged = sorted((out / "images").iterdir())[0]
    damaged.write_bytes(damaged.read_bytes()[:-30])  # truncated gzip stream: its header still reads
    summary = prepare(str(src), str(out), num_workers=0, min_slices=4)
    assert (summary["already_converted"], summary["converted"]) == (2, 1)
    assert np.asarray(nib.load(damaged).dataobj).shape == (10, 8, 6)


@requires_real_ct()
def test_the_real_dicom_series_converts_as_simpleitk_reads_it(tmp_path):
    """The shared series is four slices of a head scan: instance 18, then 180-182 (1.25 mm apart)."""
    import SimpleITK as sitk

    src = REAL_CT / "dicom_head_16x16x4"
    summary = prepare(str(src), str(tmp_path / "whole"), num_workers=0, min_slices=3)
    (row,) = csv.DictReader(open(summary["report"]))
    assert row["reason"] == "missing slices: 161 missing in 1 gaps of the 1.25 mm slice spacing"
    contiguous = tmp_path / "contiguous"
    contiguous.mkdir()
    for name in ("7136", "7166", "7196"):
        shutil.copy(src / name, contiguous / name)
    summary = prepare(str(contiguous), str(tmp_path / "out"), num_workers=0, min_slices=3)
    assert summary["kept"] == 1, summary
    (path,) = (tmp_path / "out" / "images").iterdir()
    reader = sitk.ImageSeriesReader()  # GDCM's sorting and rescaling, independent of pydicom
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(contiguous)))
    reference = reader.Execute()
    expected = sitk.GetArrayFromImage(reference).transpose(2, 1, 0)
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    lps = lps_affine(
        reference.GetOrigin(),
        direction.T[:2].ravel(),
        reference.GetSpacing()[1::-1],
        direction[:, 2] * reference.GetSpacing()[2],
    )
    img = nib.load(path)
    assert img.shape == (16, 16, 3)
    np.testing.assert_array_equal(np.asarray(img.dataobj), expected)
    np.testing.assert_allclose(img.affine, RAS @ lps, atol=1e-3)
    import pydicom

    stored = pydicom.dcmread(contiguous / "7136").pixel_array  # the lowest slice; RescaleIntercept -1024
    np.testing.assert_array_equal(np.asarray(img.dataobj)[:, :, 0], stored.T.astype(int) - 1024)

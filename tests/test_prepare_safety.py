"""The prepare command's safety with awkward collections: names that sanitise alike, the output folder inside the
input folder, symbolic links, an output that cannot be written, file names that are not UTF-8, a killed run and
MetaImage files SimpleITK cannot read. Each test checks what the user sees: the report, the datalist, the error."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
from dicom_data import hu_volume, write_series

from scripts.errors import InputError
from scripts.tools.prepare import prepare

from conftest import ROOT


def write_nifti(path, seed, shape=(10, 8, 6)) -> np.ndarray:
    volume = hu_volume(shape, seed=seed)
    os.makedirs(os.path.dirname(os.fsencode(path)), exist_ok=True)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), path)
    return volume


def report_rows(summary) -> list:
    with open(summary["report"], encoding="utf-8") as f:  # strict UTF-8: the report must be readable text
        return list(csv.DictReader(f))


def datalist(summary) -> dict:
    with open(summary["datalist"], encoding="utf-8") as f:
        return json.load(f)


def voxels(path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def test_inputs_whose_names_sanitise_alike_get_distinct_outputs_and_each_collision_is_reported(tmp_path, capsys):
    src, out = tmp_path / "raw", tmp_path / "out"
    volumes = {name: write_nifti(src / name, seed) for seed, name in enumerate(("lung_1.nii.gz", "lung (1).nii.gz"))}
    volumes["Lung (1).nii.gz"] = write_nifti(src / "Lung (1).nii.gz", 7)  # Lung_1: lung_1 on a macOS disk
    summary = prepare(str(src), str(out), num_workers=0, min_slices=4)
    rows = {os.path.basename(r["source"]): r for r in report_rows(summary)}
    outputs = [r["output"] for r in rows.values()]
    assert all(r["status"] == "kept" for r in rows.values()) and len({o.lower() for o in outputs}) == 3, rows
    assert rows["lung_1.nii.gz"]["output"] == "images/lung_1.nii.gz"  # the name that needs no change keeps it
    for name, volume in volumes.items():
        np.testing.assert_array_equal(voxels(out / rows[name]["output"]), volume, err_msg=name)
    for name in ("lung (1).nii.gz", "Lung (1).nii.gz"):
        note = rows[name]["note"]
        assert "output name images/lung_1.nii.gz also derived from" in note and rows[name]["output"] in note, note
    assert summary["renamed_outputs"] == 2 and "2 output names made unique" in capsys.readouterr().out
    first = datalist(summary)

    # a rerun reuses every output, and a new colliding file neither renames nor replaces an earlier output
    volumes["lung~1.nii.gz"] = write_nifti(src / "lung~1.nii.gz", 9)  # also lung_1, sorted after the others
    summary = prepare(str(src), str(out), num_workers=0, min_slices=4)
    rows = {os.path.basename(r["source"]): r for r in report_rows(summary)}
    assert summary["kept"] == 4 and summary["already_converted"] == 3, summary
    listed = sorted(e["image"] for e in first["training"] + first["validation"])
    assert all(
        e in [e["image"] for e in datalist(summary)["training"] + datalist(summary)["validation"]] for e in listed
    )
    for name, volume in volumes.items():
        np.testing.assert_array_equal(voxels(out / rows[name]["output"]), volume, err_msg=name)


def test_an_output_folder_inside_the_input_folder_is_not_scanned_and_a_rerun_gives_the_same_datalist(tmp_path):
    src = tmp_path / "raw"
    for seed, name in enumerate(("scan_a", "scan_b", "scan_c")):  # sorted after "prepared": its copies would win
        write_nifti(src / f"{name}.nii.gz", seed)
    out = src / "prepared"
    first = prepare(str(src), str(out), num_workers=0, min_slices=4, val_fraction=0.34)
    second = prepare(str(src), str(out), num_workers=0, min_slices=4, val_fraction=0.34)
    assert datalist(first) == datalist(second) and (second["kept"], second["skipped"]) == (3, 0)
    assert all(not r["source"].startswith(str(out)) for r in report_rows(second))
    assert sorted(p.name for p in (out / "images").iterdir()) == ["scan_a.nii.gz", "scan_b.nii.gz", "scan_c.nii.gz"]
    with pytest.raises(InputError, match=f"output_dir {src} is the input_dir"):
        prepare(str(src), str(src), num_workers=0, min_slices=4)


def test_symlinked_series_folders_are_followed_and_links_not_followed_are_listed_with_a_reason(tmp_path):
    src, elsewhere = tmp_path / "raw", tmp_path / "elsewhere"
    series = write_series(elsewhere / "series", hu_volume(seed=1), series_number=1)
    src.mkdir()
    os.symlink(elsewhere / "series", src / "linked")
    os.symlink(src, src / "loop")  # a link to its own ancestor: walking it would never end
    os.symlink(elsewhere / "series", src / "same_again")
    os.symlink(tmp_path / "missing", src / "dangling")
    summary = prepare(str(src), str(tmp_path / "out"), num_workers=0, min_slices=4)
    rows = {os.path.relpath(r["source"], src): r for r in report_rows(summary)}
    assert rows["linked"]["status"] == "kept" and rows["linked"]["series_uid"] == series["series_uid"], rows
    assert rows["loop"]["status"] == "skipped" and rows["loop"]["reason"] == f"link to a folder already scanned: {src}"
    again = rows["same_again"]
    assert again["status"] == "skipped" and again["reason"] == f"link to a folder already scanned: {src / 'linked'}"
    assert rows["dangling"]["reason"] == f"broken link: {tmp_path / 'missing'} not found"
    assert (summary["kept"], summary["skipped"]) == (1, 3)


def test_an_output_that_cannot_be_written_stops_the_run_naming_the_output_not_the_input(tmp_path, monkeypatch):
    src, out = tmp_path / "raw", tmp_path / "out"
    write_nifti(src / "scan_a.nii.gz", 1)
    write_nifti(src / "scan_b.nii.gz", 2)
    real_save = nib.save

    def disk_full(img, path):
        if "scan_b" in os.fspath(path):
            raise OSError(28, "No space left on device", os.fspath(path))
        real_save(img, path)

    monkeypatch.setattr(nib, "save", disk_full)  # forked workers inherit it
    with pytest.raises(InputError, match=rf"^output {out}/images/scan_b\.nii\.gz: cannot write .*No space left"):
        prepare(str(src), str(out), num_workers=2, min_slices=4)
    monkeypatch.undo()
    # the images folder's name taken by a file: no output can be written there, whoever runs it (root too)
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "images").write_text("not a folder")
    with pytest.raises(InputError, match=rf"^output {blocked}/images/scan_a\.nii\.gz: cannot write"):
        prepare(str(src), str(blocked), num_workers=0, min_slices=4)


def test_a_file_name_that_is_not_utf8_is_converted_and_shown_readably_in_the_report(tmp_path):
    src, out = tmp_path / "raw", tmp_path / "out"
    odd = os.path.join(os.fsencode(src), b"scan_\xff.nii.gz")
    volume = write_nifti(os.fsdecode(odd), 1)
    write_nifti(src / "scan.nii.gz", 2)  # the same sanitised name as the odd one
    summary = prepare(str(src), str(out), num_workers=0, min_slices=4)
    rows = {os.path.basename(r["source"]): r for r in report_rows(summary)}
    row = rows["scan_\ufffd.nii.gz"]
    assert row["status"] == "kept" and "file name is not valid UTF-8" in row["note"], row
    np.testing.assert_array_equal(voxels(out / row["output"]), volume)
    assert summary["kept"] == 2 and len(datalist(summary)["training"] + datalist(summary)["validation"]) == 2


def descendants(pid: int) -> set:
    """Every process below ``pid``, from /proc/<pid>/task/*/children."""
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    children = {int(c) for c in f.read().split()}
            except OSError:
                continue
            todo += list(children - found)
            found |= children
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie (a reaped or exited process is not running)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow  # a fresh interpreter imports MONAI and torch
@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="finds the worker processes through /proc")
def test_terminating_prepare_ends_its_worker_processes(tmp_path):
    src = tmp_path / "raw"
    for seed in range(60):  # enough work that the workers are busy when the signal comes
        write_nifti(src / f"scan_{seed:02d}.nii.gz", seed, shape=(64, 64, 24))
    cmd = [sys.executable, "-m", "scripts.tools.prepare", str(src), str(tmp_path / "out"), "--num_workers", "2"]
    log = open(tmp_path / "log.txt", "w")
    proc = subprocess.Popen(cmd + ["--min_slices", "4"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    workers = set()
    try:
        deadline = time.time() + 60
        while len(workers) < 2 and proc.poll() is None and time.time() < deadline:
            workers |= descendants(proc.pid)
            time.sleep(0.05)
        assert len(workers) >= 2, (tmp_path / "log.txt").read_text()[-2000:]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) != 0
        deadline = time.time() + 10
        while any(running(pid) for pid in workers) and time.time() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in workers if running(pid)], "worker processes outlived the terminated prepare"
    finally:
        for pid in workers | {proc.pid}:  # only the processes this test started
            if running(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
        log.close()


def test_an_unreadable_metaimage_is_skipped_with_the_file_and_simpleitks_reason(tmp_path):
    sitk = pytest.importorskip("SimpleITK", reason="MetaImage files are read with SimpleITK")
    src = tmp_path / "raw"
    src.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(hu_volume((6, 8, 10), seed=1)), str(src / "good.mha"))
    whole = (src / "good.mha").read_bytes()
    (src / "cut.mha").write_bytes(whole[:-300])  # the header intact, the voxels cut short
    (src / "garbage.mha").write_bytes(b"not a MetaImage header\n")
    summary = prepare(str(src), str(tmp_path / "out"), num_workers=0, min_slices=4)
    rows = {os.path.basename(r["source"]): r for r in report_rows(summary)}
    assert rows["good.mha"]["status"] == "kept"
    garbage = rows["garbage.mha"]["reason"]
    assert garbage == f'unreadable: {src / "garbage.mha"}: Unable to determine ImageIO reader for "{src}/garbage.mha"'
    cut = rows["cut.mha"]["reason"]
    assert cut.startswith(f"unreadable: {src / 'cut.mha'}: File cannot be read: ") and "cxx" not in cut, cut


def test_a_series_with_blanked_uids_and_a_damaged_file_are_reported_not_lost(tmp_path):
    import pydicom

    volume = hu_volume(seed=11)
    anon = write_series(tmp_path / "in" / "anon", volume)
    for path in anon["paths"]:  # an anonymiser that blanks UIDs
        ds = pydicom.dcmread(path)
        del ds.SeriesInstanceUID, ds.SOPInstanceUID
        ds.file_meta.MediaStorageSOPInstanceUID = ""
        ds.save_as(path)
    cut = write_series(tmp_path / "in" / "cut", hu_volume(seed=12))["paths"][1]
    with open(cut, "r+b") as f:  # an interrupted download: the header itself is cut
        f.truncate(200)
    summary = prepare(str(tmp_path / "in"), str(tmp_path / "out"), num_workers=1, min_slices=4)
    with open(summary["report"]) as f:
        rows = {r["source"]: r for r in csv.DictReader(f)}
    kept = rows[str(tmp_path / "in" / "anon")]
    assert kept["status"] == "kept"
    assert np.array_equal(nib.load(tmp_path / "out" / kept["output"]).get_fdata(), volume)
    assert rows[cut]["status"] == "skipped" and rows[cut]["reason"] == "damaged DICOM file: truncated or corrupt header"


def test_bit_flipped_dicom_headers_are_skipped_and_the_report_is_written(tmp_path):
    import random

    good = hu_volume(seed=13)
    write_series(tmp_path / "in" / "good", good)
    rng = random.Random(1)
    for path in write_series(tmp_path / "in" / "flipped", hu_volume(seed=14))["paths"]:
        data = bytearray(open(path, "rb").read())
        for _ in range(3):  # a failing disk or a bad copy
            data[rng.randrange(132, 900)] = rng.randrange(256)
        open(path, "wb").write(bytes(data))
    summary = prepare(str(tmp_path / "in"), str(tmp_path / "out"), num_workers=2, min_slices=4)
    with open(summary["report"]) as f:
        rows = list(csv.DictReader(f))
    kept = [r for r in rows if r["status"] == "kept"]
    assert [r["source"] for r in kept] == [str(tmp_path / "in" / "good")]
    assert np.array_equal(nib.load(tmp_path / "out" / kept[0]["output"]).get_fdata(), good)
    assert all(r["status"] == "skipped" and r["reason"] for r in rows if r not in kept)

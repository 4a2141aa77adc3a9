"""Behaviour only as a command: misspelled ids stop the run, the one-line error hook, configs from any folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import nibabel as nib
import pytest

from scripts.cli import check_command_line, unknown_ids
from scripts.errors import ConfigError, install_error_hook

from conftest import ROOT, configs


def argv(*names, **ids) -> list[str]:
    out = ["run", "--config_file", str(configs(*names))]
    for key, value in ids.items():
        out += [f"--{key}", str(value)]
    return out


def test_a_misspelled_id_is_named_with_the_closest_known_one():
    with pytest.raises(ConfigError, match=r"unknown id 'dataset_dri' \(did you mean 'dataset_dir'\?\)"):
        check_command_line(argv("inference.json", dataset_dri="/data/x"))
    assert unknown_ids(argv("train.json", datalsit="x")) == ["unknown id 'datalsit' (did you mean 'datalist'?)"]
    assert unknown_ids(argv("train.json", zzz=1)) == ["unknown id 'zzz'"]


@pytest.mark.parametrize(
    "config, old, new",
    [
        ("train.json", "num_classes", "out_channels"),
        ("train.json", "checkpoint_dir", "state_dir"),
        ("pretrain.json", "checkpoint_dir", "state_dir"),
        ("inference.json", "batch", "cases"),
    ],
)
def test_an_id_of_an_earlier_version_is_refused_naming_its_new_name(config, old, new):
    """An old command line must not add an unused id and run with the default: it is refused, pointing on."""
    with pytest.raises(ConfigError, match=f"id '{old}' is now called '{new}'"):
        check_command_line(argv(config, **{old: 2}))
    assert unknown_ids(argv(config, **{new: 2})) == []


def test_ids_of_every_given_config_and_of_monai_bundle_run_are_known():
    known = {"dataset_dir": "/d", "meta_file": "m.json", "logging_file": "l.conf", "validate#inferer#progress": 0}
    assert unknown_ids(argv("train.json", "evaluate.json", ckpt_path="m.pt", **known)) == []
    assert unknown_ids(argv("train.json", ckpt_path="m.pt")) == ["unknown id 'ckpt_path'"]  # evaluate.json's id
    assert unknown_ids(["run", "--config_file=" + configs("pretrain.json")[0], "--max_iterations=3"]) == []


def test_nothing_is_checked_or_hooked_when_the_configs_are_imported():
    """Inside another program (MONAI Label's server, this test run) its ids and its excepthook are its own."""
    hook = sys.excepthook
    install_error_hook()
    check_command_line()  # sys.argv is pytest's
    assert sys.excepthook is hook


def run_elsewhere(cwd, *args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", "run", *args]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**env, "PYTHONWARNINGS": "ignore"})


@pytest.mark.slow
def test_from_another_folder_a_typo_stops_the_command_before_any_work_with_one_line(tmp_path):
    """Run where 'scripts' cannot be imported: the check itself lives in scripts.cli, so its message also shows
    that --bundle_root made the bundle's modules importable (docs/architecture.md)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = configs("inference.json")[0]
    out = tmp_path / "seg"
    proc = run_elsewhere(
        elsewhere, "--config_file", config, "--bundle_root", str(ROOT), "--output_dir", str(out), "--dataset_dri", "x"
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ERROR: unknown id 'dataset_dri' (did you mean 'dataset_dir'?)"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not out.exists() and os.listdir(elsewhere) == []


@pytest.mark.slow
def test_from_another_folder_inference_segments_with_bundle_root(tmp_path, phantoms, random_model):
    """The whole workflow, not only its first steps, finds the bundle's modules from any working folder."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "seg"
    proc = run_elsewhere(
        elsewhere,
        "--config_file",
        str(configs("inference.json", "small.json")),
        "--bundle_root",
        str(ROOT),
        "--dataset_dir",
        str(phantoms / "imagesTs"),
        "--ckpt_dir",
        str(random_model),
        "--output_dir",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (seg,) = out.glob("*_seg.nii.gz")
    (image,) = (phantoms / "imagesTs").glob("*.nii.gz")
    assert nib.load(str(seg)).shape == nib.load(str(image)).shape
    assert os.listdir(elsewhere) == []  # nothing written where the command was run


def test_false_and_null_words_are_refused_naming_the_python_literal_to_write():
    """MONAI's command line keeps them as strings: 'false' would count as true, 'null' is not None."""
    with pytest.raises(
        ConfigError, match=r"--dicom_seg false is the string 'false', not False: write --dicom_seg False"
    ):
        check_command_line(argv("inference.json", dicom_seg="false"))
    with pytest.raises(ConfigError, match=r"--fold null is the string 'null', not None: write --fold None"):
        check_command_line(argv("train.json", fold="null"))
    check_command_line(argv("train.json", fold="None", resume="True", class_weights="None"))


@pytest.mark.parametrize(
    "name, value, wanted",
    [
        ("pixdim", "[1.5,1.5]", "three positive spacings in mm"),
        ("feature_size", "13", "a positive multiple of 12"),
        ("num_workers", "-1", "0 or more worker processes"),
        ("roi_size", "[96,96,100]", "three multiples of 32"),
        ("max_epochs", "ten", "a positive integer"),
        ("sw_overlap", "1.0", "a fraction in [0, 1)"),
    ],
)
def test_common_ids_out_of_type_or_range_stop_in_one_line(name, value, wanted):
    with pytest.raises(ConfigError, match=rf"^--{name} {re.escape(value)}: {re.escape(wanted)}"):
        check_command_line(argv("train.json", **{name: value}))
    check_command_line(
        argv("train.json", pixdim="[1.5,1.5,2.0]", feature_size=24, num_workers=0, roi_size="[64,64,96]")
    )
    check_command_line(argv("train.json", roi_size="$[96] * 3", pixdim="@pixdim"))  # resolved by the config


def test_a_misspelled_nested_id_is_named_with_its_closest_sibling():
    with pytest.raises(
        ConfigError, match=r"unknown id 'network_def#feature_sise' \(did you mean 'network_def#feature_size'\?\)"
    ):
        check_command_line(argv("inference.json", **{"network_def#feature_sise": 12}))
    check_command_line(argv("train.json", **{"train#trainer#max_epochs": 1, "validate#inferer#progress": 0}))


def test_an_overlay_with_a_misspelled_key_is_refused_like_a_command_line_typo(tmp_path):
    preset = tmp_path / "my_task.json"
    preset.write_text('{"out_channels": 3, "pixdmi": [1.0, 1.0, 1.0]}')
    with pytest.raises(
        ConfigError, match=rf"{re.escape(str(preset))}: unknown id 'pixdmi' \(did you mean 'pixdim'\?\)"
    ):
        check_command_line(["run", "--config_file", str([*configs("train.json"), str(preset)])])
    for task in sorted((ROOT / "configs" / "tasks").glob("*.json")):  # every shipped preset is clean
        check_command_line(["run", "--config_file", str([*configs("train.json", "small.json"), str(task)])])

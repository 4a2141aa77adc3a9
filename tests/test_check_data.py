"""Data check CLI: finds every planted problem of a mixed datalist in one pass, and nothing in a clean one."""

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from conftest import ROOT


def save(path, array):
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)


def run_check(*args):
    return subprocess.run(
        [sys.executable, "-m", "scripts.tools.check_data", *args], cwd=ROOT, capture_output=True, text=True
    )


def ct(shape=(24, 24, 12)):
    vol = np.full(shape, -1000, np.int16)
    vol[4:-4, 4:-4, 2:-2] = 40
    vol[10:14, 10:14, :] = 700  # bone
    return vol


def test_every_planted_problem_is_reported_with_counts(tmp_path):
    save(tmp_path / "good.nii.gz", ct())
    save(tmp_path / "good_label.nii.gz", np.zeros((24, 24, 12), np.uint8))
    planted = {  # image of the entry: (file the message names, problem)
        "missing.nii.gz": ("missing.nii.gz", "file not found"),
        "flat.nii.gz": ("flat.nii.gz", "2-D image"),
        "nan.nii.gz": ("nan.nii.gz", "non-finite voxels"),
        "corrupt.nii.gz": ("corrupt.nii.gz", "unreadable or corrupt"),
        "shape.nii.gz": ("shape_label.nii.gz", "differs from image"),
        "values.nii.gz": ("values_label.nii.gz", "outside the task's classes"),
    }
    save(tmp_path / "flat.nii.gz", ct()[:, :, 0])
    nan = ct().astype(np.float32)
    nan[0, 0, 0] = np.nan
    save(tmp_path / "nan.nii.gz", nan)
    save(tmp_path / "corrupt.nii.gz", ct())
    raw = (tmp_path / "corrupt.nii.gz").read_bytes()
    (tmp_path / "corrupt.nii.gz").write_bytes(raw[: len(raw) // 2])
    save(tmp_path / "shape.nii.gz", ct())
    save(tmp_path / "shape_label.nii.gz", np.zeros((24, 24, 10), np.uint8))
    save(tmp_path / "values.nii.gz", ct())
    save(tmp_path / "values_label.nii.gz", np.full((24, 24, 12), 20, np.uint8))
    save(tmp_path / "normalised.nii.gz", (ct() + 1000) / 1700.0)
    labelled = {
        "shape.nii.gz": "shape_label.nii.gz",
        "values.nii.gz": "values_label.nii.gz",
        "good.nii.gz": "good_label.nii.gz",
    }
    entries = [
        {"image": name, **({"label": labelled[name]} if name in labelled else {})}
        for name in ["good.nii.gz", *planted, "normalised.nii.gz"]
    ]
    (tmp_path / "list.json").write_text(json.dumps({"training": entries[:5], "validation": entries[5:]}))
    proc = run_check("--datalist", str(tmp_path / "list.json"), "--label_values", "14", "--labels", "False")
    assert proc.returncode == 1
    errors = [line for line in proc.stdout.splitlines() if line.startswith("ERROR")]
    assert len(errors) == len(planted)
    for named, problem in planted.values():
        assert any(f"/{named}" in line and problem in line for line in errors), (named, proc.stdout)
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "normalised.nii.gz" in warnings[0] and "do not look like CT" in warnings[0]
    assert f"checked {len(entries)} cases (labels optional, values 0..13, 1 channel(s) of CT): " in proc.stdout
    assert f": {len(planted)} with errors, 1 warnings" in proc.stdout


def test_a_clean_dataset_reports_nothing_and_applies_the_rules_its_datalist_declares(phantoms):
    """The phantoms' dataset.json has labelled entries and declares BTCV's 14 labels and one CT channel."""
    proc = run_check("--datalist", str(phantoms / "dataset.json"))
    assert proc.returncode == 0, proc.stdout
    assert "ERROR" not in proc.stdout and "WARNING" not in proc.stdout
    assert "checked 6 cases (labels required, values 0..13, 1 channel(s) of CT): 0 with errors" in proc.stdout


@pytest.mark.slow  # command-line subprocesses
def test_without_flags_a_fine_tuning_list_with_an_unlabelled_entry_is_an_error(tmp_path):
    """Forgetting --labels must not let a training entry without its label through: any labelled entry makes
    labels required; a pre-training list (no labels anywhere) passes."""
    save(tmp_path / "a.nii.gz", ct())
    save(tmp_path / "a_label.nii.gz", np.zeros((24, 24, 12), np.uint8))
    save(tmp_path / "b.nii.gz", ct())
    mixed = {"training": [{"image": "a.nii.gz", "label": "a_label.nii.gz"}, {"image": "b.nii.gz"}]}
    (tmp_path / "mixed.json").write_text(json.dumps(mixed))
    proc = run_check("--datalist", str(tmp_path / "mixed.json"))
    assert proc.returncode == 1 and "training[1]: no 'label' given" in proc.stdout, proc.stdout
    (tmp_path / "ssl.json").write_text(json.dumps({"training": [{"image": "a.nii.gz"}, {"image": "b.nii.gz"}]}))
    proc = run_check("--datalist", str(tmp_path / "ssl.json"))
    assert proc.returncode == 0 and "(labels optional, any label values, 1 channel(s) of CT)" in proc.stdout


MALFORMED = {
    "training": [
        {"image": "a.nii.gz", "label": "a_label.nii.gz"},
        {"image": ["t1.nii.gz", "t2.nii.gz"], "label": "b_label.nii.gz"},
        {"image": None, "label": "c_label.nii.gz"},
        {"image": 7, "label": "d_label.nii.gz"},
        {"label": "e_label.nii.gz"},
        "f.nii.gz",
    ],
    "validation": [{"image": "g.nii.gz"}],
    "test": [],
}
EXPECTED = [  # (list[index], problem) of every malformed entry, with --labels
    ("training[1]", "'image' is a list"),
    ("training[2]", "'image' is null, expected a file path"),
    ("training[3]", "'image' is int 7, expected a file path"),
    ("training[4]", "no 'image' given"),
    ("training[5]", "str 'f.nii.gz', expected an object with an 'image' path"),
    ("validation[0]", "no 'label' given"),
]


def test_every_malformed_datalist_entry_is_one_line_with_its_list_and_index(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps(MALFORMED))
    proc = run_check("--datalist", str(tmp_path / "list.json"), "--labels")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stdout.splitlines() if line.startswith("ERROR")]
    assert len(errors) == len(EXPECTED)
    for (where, problem), line in zip(EXPECTED, errors):
        assert f"{where}: {problem}" in line, line


def test_the_fine_tuning_workflow_applies_the_same_rules_before_reading_any_image(tmp_path):
    from scripts.errors import InputError
    from scripts.inputs import read_datalist

    (tmp_path / "list.json").write_text(json.dumps(MALFORMED))
    with pytest.raises(InputError) as training:
        read_datalist(str(tmp_path / "list.json"), "training", str(tmp_path))
    with pytest.raises(InputError) as validation:
        read_datalist(str(tmp_path / "list.json"), "validation", str(tmp_path))
    lines = str(training.value).splitlines()[1:] + str(validation.value).splitlines()[1:]
    assert len(lines) == len(EXPECTED)
    assert all(line.strip().startswith(f"{where}: {problem}") for (where, problem), line in zip(EXPECTED, lines))
    assert read_datalist(str(tmp_path / "list.json"), "test", str(tmp_path)) == []  # empty, no IndexError


def test_a_datalist_with_a_json_syntax_error_is_named_with_the_line(tmp_path):
    (tmp_path / "list.json").write_text('{"training": [\n  {"image": "a.nii.gz",}\n]}')
    proc = run_check("--datalist", str(tmp_path / "list.json"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "not valid JSON (line 2, column" in proc.stdout

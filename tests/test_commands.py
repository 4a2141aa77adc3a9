"""Every command line tool: a missing input or an unusable output is one line naming it, with exit code 1; no tool
writes into the bundle's own folders unless that is its job; file names never collide silently."""

import json
import subprocess
import sys

import pytest

from scripts.errors import ConfigError
from scripts.tasks.presets import write_task_bundle_configs
from scripts.tasks.splits import write_splits

from conftest import ROOT


def command(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *map(str, args)], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["scripts.tools.prepare", "{missing}", "{tmp}/out"], "ERROR: input_dir {missing}: folder not found"),
        (["scripts.tools.prepare", ROOT.parent / "shared", "{file}"], "ERROR: output_dir {file}: is a file"),
        (["scripts.tasks.splits", "--datalist", "{missing}", "--out_dir", "{tmp}"], "ERROR: datalist {missing}: file"),
        (["scripts.tasks.presets", "--task", "task09_spleen", "--out_dir", "{file}"], "ERROR: {file}: File exists"),
        (["scripts.tools.benchmark", "--tasks", "nonsense"], "ERROR: tasks: unknown ['nonsense']"),
        (["scripts.tools.download", "--bundle_path", "{missing}"], "ERROR: {missing}/large_files.yml: No such file"),
        (["scripts.tools.gpu_check", "--dry_run", "True", "--out_dir", "{file}"], "ERROR: {file}: File exists"),
        (["scripts.tools.weights_info", "{missing}"], "ERROR: {missing}: weight file not found"),
        (["scripts.tools.convert_weights", "to_bundle", "{missing}", "{tmp}/x.pt"], "ERROR: {missing}: weight file"),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else "",
)
def test_a_missing_input_or_unusable_output_is_one_line_with_exit_code_1(args, message, tmp_path):
    names = {"missing": tmp_path / "nothing_here", "tmp": tmp_path, "file": tmp_path / "a_file"}
    names["file"].write_text("")
    proc = command(*(str(a).format(**names) for a in args))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(message.format(**names)), proc.stderr[-500:]


@pytest.mark.parametrize("folder", [".", "configs", "models", "configs/tasks"])
def test_tools_refuse_to_write_into_the_bundle_itself(folder, tmp_path):
    before = {p: p.read_bytes() for p in (ROOT / "configs").glob("*.json")}
    data = tmp_path / "dataset.json"
    data.write_text(json.dumps({"training": [{"image": f"i{k}.nii.gz", "label": f"l{k}.nii.gz"} for k in range(10)]}))
    with pytest.raises(ConfigError, match="is the bundle's own folder"):
        write_task_bundle_configs("task09_spleen", str(ROOT / folder))
    with pytest.raises(ConfigError, match="is the bundle's own folder"):
        write_splits(str(data), str(ROOT / folder))
    from scripts.tools.gpu_check import gpu_check

    with pytest.raises(ConfigError, match="is the bundle's own folder"):
        gpu_check(out_dir=str(ROOT / folder), dry_run=True)
    assert {p: p.read_bytes() for p in (ROOT / "configs").glob("*.json")} == before


def test_label_fractions_never_share_a_file_name_and_replacing_one_is_said(tmp_path, capsys):
    data = tmp_path / "dataset.json"
    data.write_text(json.dumps({"training": [{"image": f"i{k}.nii.gz", "label": f"l{k}.nii.gz"} for k in range(40)]}))
    paths = write_splits(str(data), str(tmp_path / "splits"), fractions=(0.101, 0.104, 0.25))
    assert [p.rsplit("/", 1)[1] for p in paths] == [f"dataset_fold0_frac{f}.json" for f in ("10.1", "10.4", "25")]
    assert "replaced" not in capsys.readouterr().out
    write_splits(str(data), str(tmp_path / "splits"), fractions=(0.25,))
    assert "dataset_fold0_frac25.json: 8 training, 8 validation (replaced an existing file)" in capsys.readouterr().out

"""The packages: requirements.txt installs beside MONAI Label 0.8.5 (pydicom < 3 for its pydicom-seg), the DICOM
tools live in requirements-dicom.txt, metadata.json lists exactly what the workflows import, DICOM series read
alike with pydicom 2.4 and 3, and a missing DICOM extra is one line naming the file to install."""

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from dicom_data import hu_volume, write_series
from packaging.version import Version
from test_bundle import pins

from scripts.dicom.extras import require
from scripts.errors import ConfigError

from conftest import ROOT

WORKFLOW_CONFIGS = ["train.json", "inference.json", "pretrain.json", "evaluate.json"]
DICOM_EXTRAS = ["pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle", "pyjpegls", "simpleitk"]
# their import names, blocked below to show that the workflows run without them
EXTRA_MODULES = ["highdicom", "SimpleITK", "pylibjpeg", "libjpeg", "openjpeg", "rle", "jpeg_ls"]
PYDICOM2 = ROOT / ".venv" / "pydicom2"  # bin/setup_env.sh installs pydicom 2.4 there


def test_core_requirements_install_beside_monai_label_and_the_dicom_tools_apart():
    core, dicom = pins("requirements.txt"), pins("requirements-dicom.txt")
    assert Version(core["pydicom"]) < Version("3")  # MONAI Label 0.8.5 imports pydicom-seg, which needs pydicom < 3
    assert Version(dicom["pydicom"]) >= Version("3.0.1")  # highdicom 0.28 needs it
    assert "highdicom" in dicom and not any(name in core for name in ["highdicom", *DICOM_EXTRAS])


IMPORTS = """
import importlib, importlib.metadata as md, json, re, sys
for name in {blocked}:
    sys.modules[name] = None  # import raises ImportError, as when requirements-dicom.txt is not installed
text = "".join(open("configs/" + c).read() for c in {configs})
for name in sorted(set(re.findall(r"scripts(?:\\.\\w+)+", text))):  # the modules the configs name, deepest first
    parts = name.split(".")
    for i in range(len(parts), 1, -1):
        try:
            importlib.import_module(".".join(parts[:i]))
            break
        except ModuleNotFoundError as e:
            if e.name != ".".join(parts[:i]):
                raise
import monai.bundle, monai.handlers, monai.engines, monai.metrics, monai.networks.nets.swin_unetr
import torch.utils.tensorboard  # what TensorBoardStatsHandler imports when it runs
import fire  # python -m monai.bundle
dists = md.packages_distributions()
print(json.dumps(sorted({{d.lower() for m in list(sys.modules) for d in dists.get(m.split(".")[0], [])}})))
"""


def test_metadata_lists_exactly_the_packages_the_workflows_import_and_none_needs_the_dicom_extras():
    code = IMPORTS.format(blocked=EXTRA_MODULES, configs=WORKFLOW_CONFIGS)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = set(json.loads(proc.stdout.splitlines()[-1]))
    meta = json.loads((ROOT / "configs" / "metadata.json").read_text())
    listed = {name.lower() for name in meta["required_packages_version"]}
    # optional: installed by requirements.txt, imported only when used (the CPU engine falls back without it)
    optional = {name.lower() for name in meta["optional_packages_version"]}
    core = set(pins("requirements.txt")) - {"torch", "monai", "numpy"} - optional
    assert listed == core
    assert listed <= imported, f"listed but not imported by the workflows: {sorted(listed - imported)}"


READ_SERIES = """
import sys, pydicom
from scripts.dicom.series import series_to_nifti
series_to_nifti(sys.argv[1], sys.argv[2])
print(pydicom.__version__)
"""


@pytest.mark.slow  # command-line subprocesses
@pytest.mark.skipif(not PYDICOM2.is_dir(), reason=f"pydicom 2.4 not installed at {PYDICOM2} (bin/setup_env.sh)")
def test_dicom_series_read_alike_with_pydicom_2_4_and_3(tmp_path):
    volume = hu_volume((10, 8, 20))
    write_series(tmp_path / "CT", volume)
    out = {}
    for name, path in (("2", str(PYDICOM2)), ("3", "")):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (path, str(ROOT)) if p)}
        target = tmp_path / f"pydicom{name}.nii.gz"
        proc = subprocess.run(
            [sys.executable, "-c", READ_SERIES, str(tmp_path / "CT"), str(target)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.split()[-1].startswith({"2": "2.4", "3": "3."}[name])
        out[name] = nib.load(target)
    assert np.array_equal(out["2"].get_fdata(), volume) and np.array_equal(out["3"].get_fdata(), volume)
    assert np.allclose(out["2"].affine, out["3"].affine)


def test_a_missing_dicom_extra_names_the_requirements_file(monkeypatch):
    monkeypatch.setitem(sys.modules, "highdicom", None)
    with pytest.raises(ConfigError, match=r"^DICOM SEG output needs highdicom .*pip install -r requirements-dicom.txt"):
        require("highdicom", "DICOM SEG output")

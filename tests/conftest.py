"""Shared fixtures: small phantom datasets and one short training run reused by several tests."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from scripts.tools.phantoms import write_phantoms

ROOT = Path(__file__).resolve().parents[1]
# the CPU overlays' Swin window: networks built here must match it to load into runs with configs/small*.json
SMALL_WINDOW = json.loads((ROOT / "configs" / "small.json").read_text())["window_size"]
SHARED = ROOT.parent / "shared"
REAL_CT = SHARED / "data" / "real_ct"

if os.environ.get("CONFIG_MUTANT"):  # tests/mutants.py --kind config: one defect in every config read
    from config_mutants import install

    install(os.environ["CONFIG_MUTANT"])

# CPU-sized settings on top of configs/small.json, so the suite stays within minutes on 2 cores
FAST = {"num_workers": 0, "cache_rate": 1.0}

if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N: the cores are shared out, one thread per worker
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # inherited by the workflows the tests start
        os.environ[name] = os.environ.get("TEST_THREADS", "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(items):
    """One test needing the shared training run first, one needing the pre-training run second, then the tests
    needing neither, then the rest: ``pytest -n 2`` hands the first tests out in turn, so each worker starts by
    building one of the two runs and goes on with other tests while they are built, instead of waiting on the
    other worker's lock."""
    needs = {
        id(item): next((f for f in ("trained", "pretrained") if f in getattr(item, "fixturenames", ())), None)
        for item in items
    }
    first = [next((i for i in items if needs[id(i)] == f), None) for f in ("trained", "pretrained")]
    first = [i for i in first if i is not None]
    rest = [i for i in items if not any(i is f for f in first)]
    items[:] = first + [i for i in rest if needs[id(i)] is None] + [i for i in rest if needs[id(i)] is not None]


def built_once(tmp_path_factory, name: str, build):
    """``build(folder)`` run once per test run, its result shared. Under ``pytest -n`` every worker has its own
    session, so a session fixture would be built by each: here the first worker to need it builds it in the run's
    common base folder while any other waits on a file lock, then all read the same result."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the controller's base folder, removed by it when every test passed
    done = root / f"{name}.pkl"
    with FileLock(str(root / f"{name}.lock")):
        if not done.is_file():
            folder = root / name
            shutil.rmtree(folder, ignore_errors=True)  # a build another worker started and failed
            folder.mkdir()
            done.write_bytes(pickle.dumps(build(folder)))
    return pickle.loads(done.read_bytes())


def configs(*names: str) -> list[str]:
    return [str(ROOT / "configs" / n) for n in names]


# On a CPU, inference and evaluation first convert the network to OpenVINO (about 30 s per model at one thread).
# Tests of other behaviour run PyTorch's windows, which give the same labels (tests/test_cpu_engine.py); the
# engine's own tests and the real-CT inference test run the default.
TORCH_WINDOWS = {"cpu_engine": "torch"}


def bundle_run(config_names, overrides: dict, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle run`` from the bundle root, the way the README does (inference and evaluation
    with PyTorch's windows unless ``cpu_engine`` is given)."""
    if {"inference.json", "evaluate.json"} & set(config_names):
        overrides = {**TORCH_WINDOWS, **overrides}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(configs(*config_names))]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


@pytest.fixture(scope="session")
def phantoms(tmp_path_factory) -> Path:
    """Four training, one validation and one test phantom (one folder for all workers, so that the runs built
    once below name the same data as the tests reading them)."""

    def build(out):
        write_phantoms(str(out), num_train=4, num_val=1, num_test=1, seed=7)
        return out

    return built_once(tmp_path_factory, "phantoms", build)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, phantoms):
    """A short training run on the phantoms (two epochs, a checkpoint after each)."""
    return built_once(tmp_path_factory, "train", lambda out: _train(out, phantoms))


def _train(out: Path, phantoms: Path) -> dict:
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(
        config_file=configs("train.json", "small.json"),
        workflow_type="train",
        bundle_root=str(ROOT),
        dataset_dir=str(phantoms),
        output_dir=str(out / "runs"),
        ckpt_dir=str(out / "models"),
        max_epochs=TRAIN_EPOCHS,
        val_interval=TRAIN_EPOCHS,
        ckpt_interval=1,
        **FAST,
    )
    wf.initialize()
    wf.run()
    trainer = wf.parser.get_parsed_content("train#trainer")
    state = {
        "iteration": trainer.state.iteration,
        "epoch": trainer.state.epoch,
        "epoch_length": trainer.state.epoch_length,
    }
    wf.finalize()
    return {"dir": out, "state": state}


TRAIN_EPOCHS = 16


@pytest.fixture(scope="session")
def random_model(tmp_path_factory) -> Path:
    """models/model.pt of an untrained small network, for tests that only need a loadable checkpoint."""
    from monai.networks.nets import SwinUNETR

    out = tmp_path_factory.mktemp("random_model")
    torch.manual_seed(0)
    torch.save(
        SwinUNETR(in_channels=1, out_channels=14, feature_size=12, window_size=SMALL_WINDOW).state_dict(),
        out / "model.pt",
    )
    return out


def requires_real_ct():
    return pytest.mark.skipif(
        not REAL_CT.is_dir(), reason=f"real CT data not found at {REAL_CT} (only in the project's CI)"
    )


PRETRAIN_ITERATIONS = 24


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory, phantoms):
    """A short pre-training run on the phantoms (and the unlabelled real CT when present), with two broken
    volumes among them, as in any large public collection."""
    return built_once(tmp_path_factory, "pretrain", lambda out: _pretrain(out, phantoms))


def _pretrain(out: Path, phantoms: Path) -> dict:
    from monai.bundle import ConfigWorkflow

    broken = out / "broken"
    broken.mkdir()
    (broken / "empty.nii.gz").write_bytes(b"")
    (broken / "truncated.nii.gz").write_bytes((phantoms / "imagesTr" / "phantom_000.nii.gz").read_bytes()[:5000])
    sources = [str(phantoms / "dataset.json"), str(broken / "*.nii.gz")]
    sources += [str(REAL_CT / "*_ct.nii.gz")] if REAL_CT.is_dir() else []
    wf = ConfigWorkflow(
        config_file=configs("pretrain.json", "small_pretrain.json"),
        workflow_type="train",
        bundle_root=str(ROOT),
        dataset_dir=str(phantoms),
        train_sources=sources,
        output_dir=str(out / "runs"),
        ckpt_dir=str(out / "models"),
        max_iterations=PRETRAIN_ITERATIONS,
        ckpt_interval=PRETRAIN_ITERATIONS // 2,
        val_interval=PRETRAIN_ITERATIONS,
        image_interval=PRETRAIN_ITERATIONS // 2,
        max_skipped_fraction=0.4,
        **FAST,
    )
    wf.initialize()
    wf.run()
    metrics = dict(wf.parser.get_parsed_content("validate#evaluator").state.metrics)
    wf.finalize()
    return {
        "dir": out,
        "metrics": metrics,
        "iterations": PRETRAIN_ITERATIONS,
        "sources": sources,
        "broken": sorted(str(p) for p in broken.iterdir()),
    }


@pytest.fixture
def seeded():
    """Random draws of the test reproducible (seed 0), and the global state released afterwards."""
    from monai.utils import set_determinism

    set_determinism(seed=0)
    yield
    set_determinism(seed=None)

"""Guards for long runs: a non-finite loss stops training without saving; checkpoint writes are atomic."""

import json
import math
import os
import stat
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events

from scripts.training.checkpoints import AtomicCheckpointSaver
from scripts.training.guards import NonFiniteLossError, StopOnNonFiniteLoss

from conftest import bundle_run


@pytest.mark.parametrize("decollated", [False, True])
def test_a_non_finite_loss_stops_the_run_naming_the_iteration(decollated):
    losses = [1.0, 0.5, float("nan"), 0.2]

    def output(it):
        return {"loss": torch.tensor(losses[it - 1])}

    trainer = Engine(
        lambda engine, batch: [output(engine.state.iteration)] * 2 if decollated else output(engine.state.iteration)
    )
    StopOnNonFiniteLoss().attach(trainer)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at iteration 3"):
        trainer.run(range(4), max_epochs=1)
    assert trainer.state.iteration == 3


def test_an_interrupted_checkpoint_write_leaves_the_previous_checkpoint_and_no_partial_file(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 2)
    trainer = Engine(lambda engine, batch: None)
    AtomicCheckpointSaver(
        save_dir=str(tmp_path), save_dict={"model": model}, save_interval=1, epoch_level=True, n_saved=2
    ).attach(trainer)
    real_save = torch.save

    def dies_halfway(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # stands for a kill during the write

    @trainer.on(Events.EPOCH_COMPLETED(once=1))
    def break_saving(engine):  # runs after the first checkpoint was written
        monkeypatch.setattr(torch, "save", dies_halfway)

    with pytest.raises(KeyboardInterrupt):
        trainer.run(range(2), max_epochs=3)
    monkeypatch.setattr(torch, "save", real_save)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["model_epoch=1.pt"]
    state = torch.load(tmp_path / "model_epoch=1.pt", weights_only=True)
    assert torch.equal(state["weight"], model.weight.detach())


@pytest.mark.slow
def test_pretraining_on_a_corrupt_batch_stops_with_an_error_and_keeps_finite_checkpoints(phantoms, tmp_path):
    # from the fifth training crop on (iteration 3 of 2 volumes x 1 crop), every batch turns to NaN after loading
    # (the input checks only see the files)
    corrupt = (
        "$monai.transforms.Lambdad('image', lambda x, seen=__import__('itertools').count(): "
        "x * float('nan') if next(seen) >= 4 else x)"
    )
    proc = bundle_run(
        ["pretrain.json", "small_pretrain.json"],
        {
            "dataset_dir": phantoms,
            "output_dir": tmp_path / "runs",
            "ckpt_dir": tmp_path / "models",
            "max_iterations": 4,
            "ckpt_interval": 2,
            "val_interval": 2,
            "image_interval": 2,
            "num_samples": 1,
            "train#random_transforms#1": corrupt,
        },
        check=False,
    )
    assert proc.returncode != 0
    assert "ERROR: non-finite loss (nan) at iteration 3" in proc.stderr
    checkpoints = sorted((tmp_path / "runs" / "checkpoints").glob("checkpoint*.pt"))
    assert checkpoints, "the checkpoint written before the NaN must still be there"
    for path in checkpoints:
        model = torch.load(path, map_location="cpu", weights_only=True)["model"]
        assert all(torch.isfinite(v).all() for v in model.values()), path.name
        assert torch.load(path, map_location="cpu", weights_only=True)["trainer"]["iteration"] == 2
    assert math.isfinite(
        float(
            torch.load(tmp_path / "models" / "ssl_encoder.pt", weights_only=True)[
                "swinViT.patch_embed.proj.weight"
            ].sum()
        )
    )


# Runs a training workflow in a child process; when KILL_IN_WRITE is set, the child stops for good in the middle
# of writing its first checkpoint into the checkpoint folder, so the parent can SIGKILL it there.
CHILD = """
import os, sys, time, torch
marker, config_files, overrides = sys.argv[1], eval(sys.argv[2]), eval(sys.argv[3])
real_save = torch.save
def save(obj, f, *args, **kwargs):
    name = getattr(f, "name", str(f))
    if os.environ.get("KILL_IN_WRITE") and os.path.dirname(str(name)) == overrides["output_dir"] + "/checkpoints":
        f.write(b"half a checkpoint"); f.flush(); open(marker, "w").close(); time.sleep(600)
    return real_save(obj, f, *args, **kwargs)
torch.save = save
from monai.bundle.scripts import run
run(config_file=config_files, **overrides)
"""


def run_and_kill(tmp_path, config_names, overrides, until, kill_in_write=False):
    """Start a training workflow and SIGKILL it as soon as ``until()`` holds; returns the exit code."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT, configs

    marker = tmp_path / "in_write"
    marker.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **({"KILL_IN_WRITE": "1"} if kill_in_write else {})}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(marker), repr(configs(*config_names)), repr(overrides)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not until(marker) and child.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    child.send_signal(signal.SIGKILL)
    return child.wait()


@pytest.mark.slow
def test_pretraining_killed_at_any_moment_resumes_to_the_right_iteration(phantoms, tmp_path):
    runs = tmp_path / "runs"
    overrides = {
        "dataset_dir": str(phantoms),
        "output_dir": str(runs),
        "ckpt_dir": str(tmp_path / "models"),
        "max_iterations": 2,
        "ckpt_interval": 1,
        "val_interval": 2,
        "image_interval": 2,
        "num_samples": 1,
    }
    final = kill_twice_and_resume(tmp_path, ["pretrain.json", "small_pretrain.json"], overrides)
    assert final["trainer"]["iteration"] == 2
    assert set(torch.load(tmp_path / "models" / "ssl_encoder.pt", weights_only=True)) == {
        k for k in final["model"] if k.startswith("swinViT.")
    }


@pytest.mark.slow
def test_fine_tuning_killed_at_any_moment_resumes_to_the_right_iteration(phantoms, tmp_path):
    data = json.loads((phantoms / "dataset.json").read_text())
    data["training"] = data["training"][:1]
    (tmp_path / "dataset.json").write_text(json.dumps(data))
    overrides = {
        "dataset_dir": str(phantoms),
        "datalist": str(tmp_path / "dataset.json"),
        "output_dir": str(tmp_path / "runs"),
        "ckpt_dir": str(tmp_path / "models"),
        "max_epochs": 2,
        "ckpt_interval": 1,
        "val_interval": 2,
        "num_workers": 0,
    }
    final = kill_twice_and_resume(tmp_path, ["train.json", "small.json"], overrides)
    assert final["trainer"]["iteration"] == 2  # 2 epochs of 1 training phantom
    best = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert set(best) == set(final["model"]) and all(torch.isfinite(v).all() for v in best.values())


def kill_twice_and_resume(tmp_path, config_names, overrides) -> dict:
    """Kill a run in the middle of its first checkpoint write, then again after its first checkpoint,
    resume it, and return its final checkpoint (asserted finite)."""
    checkpoints = tmp_path / "runs" / "checkpoints"
    # 1: killed in the middle of its first checkpoint write: no checkpoint file at all, only a temporary one
    assert run_and_kill(tmp_path, config_names, overrides, lambda marker: marker.exists(), kill_in_write=True) == -9
    assert not list(checkpoints.glob("checkpoint*.pt")) and list(checkpoints.glob("tmp*"))
    # 2: killed between checkpoints, after the first complete one
    first = checkpoints / "checkpoint_epoch=1.pt"
    assert run_and_kill(tmp_path, config_names, overrides, lambda marker: first.exists()) == -9
    # 3: resumed, it finishes with loadable, finite weights
    bundle_run(config_names, {**overrides, "resume": True})
    final = torch.load(checkpoints / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v).all() for v in final["model"].values())
    return final


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_outputs_and_checkpoints_get_the_file_mode_of_the_umask(tmp_path, umask, mode):
    """Temporary files are private (0600); what is left behind is readable as any file written here."""
    from scripts.atomic_files import atomic_path

    old = os.umask(umask)
    try:
        with atomic_path(str(tmp_path / "table.csv")) as tmp:
            Path(tmp).write_text("a,b\n")
        model = torch.nn.Linear(2, 2)
        trainer = Engine(lambda engine, batch: None)
        AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict={"model": model}, save_interval=1).attach(trainer)
        trainer.run([0], max_epochs=1)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "table.csv").stat().st_mode) == mode
    checkpoints = list(tmp_path.glob("*.pt"))
    assert checkpoints and all(stat.S_IMODE(p.stat().st_mode) == mode for p in checkpoints)

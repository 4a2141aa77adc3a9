"""Guards for long runs: a non-finite loss stops training without saving; checkpoint writes are atomic."""

import math

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events

from conftest import bundle_run
from scripts.training_guards import AtomicCheckpointSaver, NonFiniteLossError, StopOnNonFiniteLoss


@pytest.mark.parametrize("decollated", [False, True])
def test_a_non_finite_loss_stops_the_run_naming_the_iteration(decollated):
    losses = [1.0, 0.5, float("nan"), 0.2]
    output = lambda it: {"loss": torch.tensor(losses[it - 1])}
    trainer = Engine(lambda engine, batch: [output(engine.state.iteration)] * 2 if decollated else output(engine.state.iteration))
    StopOnNonFiniteLoss().attach(trainer)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at iteration 3"):
        trainer.run(range(4), max_epochs=1)
    assert trainer.state.iteration == 3


def test_an_interrupted_checkpoint_write_leaves_the_previous_checkpoint_and_no_partial_file(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 2)
    trainer = Engine(lambda engine, batch: None)
    AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict={"model": model}, save_interval=1, epoch_level=True,
                          n_saved=2).attach(trainer)
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


def test_pretraining_on_a_corrupt_batch_stops_with_an_error_and_keeps_finite_checkpoints(phantoms, tmp_path):
    bad = tmp_path / "nan_ct.nii.gz"
    data = np.full((40, 40, 40), 40.0, np.float32)
    data[10:20, 10:20, 10:20] = np.nan
    nib.save(nib.Nifti1Image(data, np.diag([4.0, 4.0, 4.0, 1.0])), bad)
    common = {"dataset_dir": phantoms, "output_dir": tmp_path / "runs", "ckpt_dir": tmp_path / "models",
              "max_iterations": 4, "ckpt_interval": 2, "val_interval": 2, "image_interval": 2, "num_samples": 1}
    bundle_run(["pretrain.json", "small_pretrain.json"], {**common, "train#trainer#max_epochs": 1})
    proc = bundle_run(["pretrain.json", "small_pretrain.json"], {**common, "resume": True, "train_sources": [str(bad)]},
                      check=False)
    assert proc.returncode != 0
    assert "ERROR: non-finite loss (nan) at iteration 3" in proc.stderr
    checkpoints = sorted((tmp_path / "runs" / "checkpoints").glob("checkpoint*.pt"))
    assert checkpoints, "the first run's checkpoints must still be there"
    for path in checkpoints:
        model = torch.load(path, map_location="cpu", weights_only=True)["model"]
        assert all(torch.isfinite(v).all() for v in model.values()), path.name
        assert torch.load(path, map_location="cpu", weights_only=True)["trainer"]["iteration"] == 2
    assert math.isfinite(float(torch.load(tmp_path / "models" / "ssl_encoder.pt", weights_only=True)[
        "swinViT.patch_embed.proj.weight"].sum()))

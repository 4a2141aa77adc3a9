"""Fine-tuning: a short run learns, writes a flat best model, and resumes from full-state checkpoints."""

import os
import shutil
import time

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.metrics import DiceMetric
from monai.networks.nets import SwinUNETR

from conftest import FAST, ROOT, SMALL_WINDOW, TRAIN_EPOCHS, configs

# Mean Dice (13 organs) on training phantoms must beat the untrained network by at least this much.
LEARNING_MARGIN = 0.10


def mean_dice_on(network, items) -> float:
    """Sliding-window mean organ Dice of ``network`` on datalist ``items``, as the validator computes it."""
    parser = ConfigParser()
    parser.read_config(configs("train.json", "small.json"))
    parser.update({"bundle_root": str(ROOT)})
    preprocessing = parser.get_parsed_content("validate#preprocessing")
    inferer = parser.get_parsed_content("validate#inferer")
    metric = DiceMetric(include_background=False, reduction="mean", ignore_empty=True)
    network.eval()
    with torch.no_grad():
        for item in items:
            data = preprocessing(item)
            pred = inferer(data["image"][None], network).argmax(1)

            def onehot(x):
                return torch.nn.functional.one_hot(x.long(), 14).permute(0, 4, 1, 2, 3)

            metric(onehot(pred), onehot(data["label"][None, 0]))
    return float(metric.aggregate())


@pytest.mark.slow
def test_training_writes_flat_best_model(trained):
    state = torch.load(trained["dir"] / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    net = SwinUNETR(in_channels=1, out_channels=14, feature_size=12, window_size=SMALL_WINDOW)
    net.load_state_dict(state)  # strict: every key of the fine-tuning network, nothing else
    assert trained["state"]["epoch"] == TRAIN_EPOCHS
    assert trained["state"]["iteration"] == TRAIN_EPOCHS * trained["state"]["epoch_length"]


@pytest.mark.slow
def test_full_state_checkpoints_hold_everything_needed_to_resume(trained):
    path = trained["dir"] / "runs" / "checkpoints" / "checkpoint_final.pt"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "lr_scheduler", "trainer", "best_model"} <= set(ckpt)
    assert ckpt["trainer"]["iteration"] == trained["state"]["iteration"]


@pytest.mark.slow
def test_network_learns_on_training_phantoms(trained, phantoms):
    from monai.data import load_decathlon_datalist

    items = load_decathlon_datalist(str(phantoms / "dataset.json"), True, "training", base_dir=str(phantoms))[:2]
    torch.manual_seed(0)
    untrained = SwinUNETR(in_channels=1, out_channels=14, feature_size=12, window_size=SMALL_WINDOW)
    net = SwinUNETR(in_channels=1, out_channels=14, feature_size=12, window_size=SMALL_WINDOW)
    net.load_state_dict(torch.load(trained["dir"] / "models" / "model.pt", map_location="cpu", weights_only=True))
    before, after = mean_dice_on(untrained, items), mean_dice_on(net, items)
    print(f"mean organ Dice on training phantoms: untrained {before:.3f}, trained {after:.3f}")
    assert after > before + LEARNING_MARGIN


@pytest.mark.slow
def test_resume_continues_from_last_checkpoint(trained, phantoms, tmp_path):
    """Drop the newest checkpoints as if the run had been killed: resume from the epoch before."""
    runs = tmp_path / "runs"
    shutil.copytree(trained["dir"] / "runs" / "checkpoints", runs / "checkpoints")
    (runs / "checkpoints" / "checkpoint_final.pt").unlink()
    (runs / "checkpoints" / f"checkpoint_epoch={TRAIN_EPOCHS}.pt").unlink()
    assert (runs / "checkpoints" / f"checkpoint_epoch={TRAIN_EPOCHS - 1}.pt").exists()

    wf = ConfigWorkflow(
        config_file=configs("train.json", "small.json"),
        workflow_type="train",
        bundle_root=str(ROOT),
        dataset_dir=str(phantoms),
        output_dir=str(runs),
        ckpt_dir=str(tmp_path / "models"),
        max_epochs=TRAIN_EPOCHS,
        val_interval=TRAIN_EPOCHS,
        ckpt_interval=1,
        resume=True,
        **FAST,
    )
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    seen = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.iteration))
    wf.run()
    length = trained["state"]["epoch_length"]
    assert seen == list(range((TRAIN_EPOCHS - 1) * length + 1, TRAIN_EPOCHS * length + 1))
    assert trainer.state.epoch == TRAIN_EPOCHS
    wf.finalize()


def full_state_file(path, iteration, model=None):
    model = model or torch.nn.Linear(2, 2)
    torch.save({"model": model.state_dict(), "trainer": {"iteration": iteration, "epoch": iteration}}, path)
    return path


def test_resume_continues_from_the_most_progress_not_from_the_newest_file(tmp_path):
    from scripts.training.checkpoints import resume_path

    ahead = full_state_file(tmp_path / "checkpoint_epoch=2.pt", 20)
    behind = full_state_file(tmp_path / "checkpoint_epoch=1.pt", 10)
    os.utime(behind, (time.time() + 60, time.time() + 60))  # copied or touched: the newest file, less progress
    assert resume_path(str(tmp_path), True, torch.nn.Linear(2, 2)) == str(ahead)
    assert resume_path(str(tmp_path), "true") == str(ahead)  # as given on the command line
    assert resume_path(str(tmp_path), False) is None


def test_a_truncated_newest_checkpoint_is_reported_and_the_complete_one_used(tmp_path, caplog):
    from scripts.training.checkpoints import resume_path

    complete = full_state_file(tmp_path / "checkpoint_epoch=1.pt", 10)
    newest = full_state_file(tmp_path / "checkpoint_epoch=2.pt", 20)
    newest.write_bytes(newest.read_bytes()[:200])
    assert resume_path(str(tmp_path), True) == str(complete)
    assert "checkpoint_epoch=2.pt: unreadable" in caplog.text


def test_resume_true_with_nothing_to_resume_stops_and_auto_starts_afresh(tmp_path):
    from scripts.training.checkpoints import ResumeError, resume_path

    with pytest.raises(ResumeError, match="--resume true but no complete checkpoint.*--resume auto"):
        resume_path(str(tmp_path), True)
    assert resume_path(str(tmp_path), "auto") is None
    with pytest.raises(ValueError, match="resume 'maybe' is not a valid choice: use one of False, True, 'auto'"):
        resume_path(str(tmp_path), "maybe")


def test_a_checkpoint_of_another_network_stops_in_one_line(tmp_path):
    from scripts.training.checkpoints import ResumeError, resume_path

    full_state_file(tmp_path / "checkpoint_epoch=1.pt", 10, torch.nn.Linear(2, 2))
    with pytest.raises(ResumeError, match=r"another network .*weight is \(2, 2\) there, \(3, 3\) here"):
        resume_path(str(tmp_path), True, torch.nn.Linear(3, 3))


class Payload:
    """Any pickled object: loading it could run code."""


def test_a_checkpoint_holding_pickled_objects_is_refused_before_anything_loads(tmp_path):
    from scripts.training.checkpoints import ResumeError, resume_path

    torch.save({"trainer": {"iteration": 3}, "extra": Payload()}, tmp_path / "checkpoint_epoch=1.pt")
    with pytest.raises(ResumeError, match="refused to load: the file holds pickled Python objects.*Move it out"):
        resume_path(str(tmp_path), True)

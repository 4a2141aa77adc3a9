"""Weights that carry their settings (scripts.weights.record and .writing): what each written file records, that
it stays a plain state_dict, the paper's patch-merging order travelling from its encoder to inference and MONAI
Label without a flag, loading checks, no silent overwrite, the weights_info command, option values checked one way."""

import json
import logging
import subprocess
import sys

import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.nets import SwinUNETR
from test_weights import encoder_of, research_layout, small_net

from scripts.errors import ConfigError
from scripts.options import choice, flag
from scripts.weights.formats import WeightsError, record_of
from scripts.weights.legacy_merging import LegacyPatchMerging
from scripts.weights.loading import load_pretrained
from scripts.weights.writing import WeightsRecord, refuse_overwrite

from conftest import FAST, PRETRAIN_ITERATIONS, ROOT, SMALL_WINDOW, TRAIN_EPOCHS, bundle_run, configs

SMALL_NETWORK = {
    "feature_size": 12,
    "window_size": SMALL_WINDOW,
    "depths": [2, 2, 2, 2],
    "num_heads": [3, 6, 12, 24],
    "in_channels": 1,
}


def record_in(path) -> dict:
    return record_of(torch.load(path, map_location="cpu", weights_only=True))


@pytest.mark.slow
def test_a_fine_tuned_model_records_network_data_settings_run_and_progress(trained):
    path = trained["dir"] / "models" / "model.pt"
    record = record_in(path)
    assert record["kind"] == "model" and record["bundle"]["version"]
    assert record["network"] == {**SMALL_NETWORK, "out_channels": 14, "patch_merging": "merging"}
    data = record["data"]
    assert data["spacing"] == [4.0, 4.0, 4.0] and data["orientation"] == "RAS" and data["modality"] == "CT"
    assert data["intensity"]["a_min"] == -175 and data["intensity"]["a_max"] == 250
    assert len(data["class_names"]) == 14 and data["class_names"][6] == "liver"
    assert record["run"]["output_dir"] == str(trained["dir"] / "runs")
    assert record["progress"]["epoch"] == TRAIN_EPOCHS and "val_mean_dice" in record["progress"]["metrics"]
    assert record["source"] is None  # trained from scratch
    # still a plain state_dict: the model zoo's and MONAI Label's strict load of a bare SwinUNETR
    net = SwinUNETR(in_channels=1, out_channels=14, feature_size=12, window_size=SMALL_WINDOW)
    net.load_state_dict(torch.load(path, weights_only=True), strict=True)


@pytest.mark.slow
def test_the_pre_trained_encoder_records_its_own_intensity_window_and_no_classes(pretrained):
    path = pretrained["dir"] / "models" / "ssl_encoder.pt"
    state = torch.load(path, weights_only=True)
    assert all(k.startswith("swinViT.") for k in state)
    record = record_of(state)
    assert record["kind"] == "encoder"
    assert record["network"] == {**SMALL_NETWORK, "out_channels": None, "patch_merging": "merging"}
    assert record["data"]["intensity"]["a_min"] == -1000 and record["data"]["intensity"]["a_max"] == 1000
    assert record["progress"]["iteration"] == PRETRAIN_ITERATIONS
    assert "val_reconstruction_l1" in record["progress"]["metrics"]


def monai_label_network(ckpt_dir, overrides: dict) -> torch.nn.Module:
    """What MONAI Label 0.8.5 does to run a bundle model (BundleInferTask + BasicInferTask._get_network): build
    ``network_def`` from configs/inference.json with only bundle_root set, then torch.load + strict load of
    models/model.pt. ``ckpt_dir`` stands for the bundle's models folder; ``overrides`` are the app's top-level
    ids (as run_check.sh sets them in the copy's inference.json)."""
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "inference.json"))
    parser.config.update({"bundle_root": str(ROOT), "ckpt_dir": str(ckpt_dir), **overrides})
    network = parser.get_parsed_content("network_def", instantiate=True)
    checkpoint = torch.load(
        ckpt_dir / "model.pt", map_location="cpu", weights_only=True
    )  # torch's default, as MONAI Label gets it
    network.load_state_dict(checkpoint.get("model", checkpoint), strict=True)
    return network.eval()


@pytest.mark.slow
def test_the_paper_merging_order_travels_from_its_encoder_to_inference_and_monai_label(tmp_path, phantoms, caplog):
    paper = tmp_path / "model_swinvit.pt"
    torch.save(research_layout(encoder_of(small_net(1, window_size=SMALL_WINDOW).state_dict())), paper)
    models = tmp_path / "models"
    common = {"dataset_dir": phantoms, "ckpt_dir": models, **FAST}
    one_volume = {"max_epochs": 1, "val_interval": 1, "label_fraction": 0.25}  # the record matters, not the training
    bundle_run(
        ["train.json", "small.json"],
        {**common, "output_dir": tmp_path / "runs", **one_volume, "pretrained_encoder": paper},
    )
    record = record_in(models / "model.pt")
    assert record["network"]["patch_merging"] == "legacy"
    assert record["source"]["path"] == str(paper) and record["source"]["format"] == "research"

    # inference.json with no flag builds the legacy order from the record (its network is compared below)
    infer = {"dataset_dir": phantoms / "imagesTs", "ckpt_dir": models, "output_dir": tmp_path / "auto"}
    segmented = bundle_run(["inference.json", "small.json"], infer)
    assert f"pre-1.5 3-D patch merging order for {models / 'model.pt'} (recorded in the file)" in (
        segmented.stdout + segmented.stderr
    )
    assert len(list((tmp_path / "auto").glob("*_seg.nii.gz"))) == 1

    # evaluation too: its network follows the record without a flag
    scored = bundle_run(["train.json", "evaluate.json", "small.json"], {**common, "output_dir": tmp_path / "eval"})
    assert "pre-1.5 3-D patch merging order for " + str(models / "model.pt") + " (recorded in the file)" in (
        scored.stdout + scored.stderr
    )

    # MONAI Label's own loading builds the legacy-order network from the record alone
    small = json.loads((ROOT / "configs" / "small.json").read_text())
    network = monai_label_network(models, {k: small[k] for k in ("feature_size", "window_size", "roi_size")})
    state = torch.load(models / "model.pt", weights_only=True)
    expected, current = (
        SwinUNETR(1, 14, feature_size=12, window_size=SMALL_WINDOW, use_flash_attention=True, downsample=d).eval()
        for d in (LegacyPatchMerging, "merging")  # built as inference.json builds it, but for the merging order
    )
    expected.load_state_dict(state), current.load_state_dict(state)
    x = torch.rand(1, 1, 64, 64, 64)
    with torch.no_grad():
        assert torch.equal(network(x), expected(x)) and not torch.allclose(network(x), current(x), atol=1e-4)

    # MONAI Label's training continues from models/model.pt through a CheckpointLoader it puts first in
    # train#handlers: the network follows the file's order, and the run may replace the file it started from
    parser = ConfigParser()
    parser.read_config(configs("train.json", "small.json"))
    handlers = parser.get("train#handlers")
    handlers.insert(
        0,
        {"_target_": "CheckpointLoader", "load_path": str(models / "model.pt"), "load_dict": {"model": "@network"}},
    )
    parser.update({"bundle_root": str(ROOT), "output_dir": str(tmp_path / "monailabel"), "train#handlers": handlers})
    parser.update({"dataset_dir": str(phantoms), "ckpt_dir": str(models), **FAST})
    parser.update(one_volume)
    for step in ("initialize", "run", "finalize"):
        parser.get_parsed_content(step)
    continued = record_in(models / "model.pt")
    assert continued["network"]["patch_merging"] == "legacy"
    assert continued["run"]["output_dir"] == str(tmp_path / "monailabel")
    assert continued["source"]["path"] == str(models / "model.pt")


def recorded_model(tmp_path, order="merging", **data) -> tuple:
    """A model.pt written through WeightsRecord, as the training configs write it."""
    net = small_net(0, window_size=SMALL_WINDOW, downsample=LegacyPatchMerging if order == "legacy" else "merging")
    settings = {"spacing": [1.5, 1.5, 2.0], "orientation": "RAS", "modality": "CT", **data}
    WeightsRecord(net, settings, output_dir=str(tmp_path / "runs"))
    torch.save(net.state_dict(), tmp_path / "model.pt")
    return str(tmp_path / "model.pt"), net


@pytest.mark.parametrize(
    "network, message",
    [
        ({"feature_size": 24}, "feature_size 12 there, 24 here (--feature_size 12)"),
        ({"out_channels": 3}, "out_channels 14 there, 3 here (--out_channels 14)"),
        ({"window_size": 7}, f"window_size {SMALL_WINDOW} there, 7 here (--window_size {SMALL_WINDOW})"),
        ({"downsample": LegacyPatchMerging}, 'patch_merging merging there, legacy here (--patch_merging "merging")'),
    ],
)
def test_weights_that_do_not_fit_the_network_stop_in_one_line_naming_both_values_and_the_id(tmp_path, network, message):
    path, _ = recorded_model(tmp_path)
    sizes = {"in_channels": 1, "out_channels": 14, "feature_size": 12, "window_size": SMALL_WINDOW, **network}
    with pytest.raises(WeightsError) as error:
        load_pretrained(SwinUNETR(**sizes), path, part="all")
    assert str(error.value) == f"{path}: recorded network differs from this one: {message}"


def test_data_settings_that_differ_warn_and_an_encoder_hand_over_ignores_intensity_and_modality(tmp_path, caplog):
    ct_window = {"transform": "ScaleIntensityRanged", "a_min": -1000, "a_max": 1000}
    path, _ = recorded_model(tmp_path, intensity=ct_window)
    expect = {
        "spacing": [4.0, 4.0, 4.0],
        "orientation": "RAS",
        "modality": "MRI",
        "intensity": {"transform": "ScaleIntensityRanged", "a_min": -175, "a_max": 250},
    }
    with caplog.at_level(logging.WARNING):
        load_pretrained(small_net(1, window_size=SMALL_WINDOW), path, part="all", expect=expect)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("trained with spacing [1.5, 1.5, 2.0], this run uses [4.0, 4.0, 4.0] (--pixdim)" in w for w in warned)
    assert any("(--intensity)" in w for w in warned) and any('modality "CT"' in w for w in warned)
    assert not any("orientation" in w for w in warned)
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # the paper pre-trains on [-1000, 1000] and fine-tunes on [-175, 250]
        load_pretrained(small_net(1, window_size=SMALL_WINDOW), path, part="encoder", expect=expect)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "(--pixdim)" in warned[0]


def test_a_run_replaces_only_weights_of_its_own_run_family_or_those_it_started_from(tmp_path):
    runs = str(tmp_path / "runs")
    downloaded = tmp_path / "downloaded.pt"
    torch.save(small_net(0).state_dict(), downloaded)  # a model-zoo file: no record
    with pytest.raises(ConfigError, match=r"downloaded.pt exists and was not written by this bundle's training"):
        refuse_overwrite([str(downloaded)], runs)
    path, _ = recorded_model(tmp_path, task="MSD Task03_Liver")
    with pytest.raises(ConfigError) as error:
        refuse_overwrite([path], str(tmp_path / "other_run"))
    assert f"was written by the run in {runs} (MSD Task03_Liver): give --overwrite true" in str(error.value)
    refuse_overwrite([path], runs)  # a rerun or a resumed run of the same family
    refuse_overwrite([path], str(tmp_path / "other_run"), starts=[path])  # fine-tuning that file further
    refuse_overwrite([str(downloaded), path], str(tmp_path / "other_run"), overwrite=True)
    refuse_overwrite([str(tmp_path / "missing.pt")], runs)


@pytest.mark.slow
def test_training_does_not_replace_a_downloaded_model_unless_asked(tmp_path, phantoms):
    models = tmp_path / "models"
    models.mkdir()
    torch.save(small_net(0, window_size=SMALL_WINDOW).state_dict(), models / "model.pt")
    before = (models / "model.pt").read_bytes()
    run = {"dataset_dir": phantoms, "ckpt_dir": models, "output_dir": tmp_path / "runs", "max_epochs": 1, **FAST}
    refused = bundle_run(["train.json", "small.json"], run, check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert f"ERROR: {models / 'model.pt'} exists and was not written by this bundle's training" in refused.stderr
    assert (models / "model.pt").read_bytes() == before
    bundle_run(["train.json", "small.json"], {**run, "val_interval": 1, "overwrite": "true"})
    assert record_in(models / "model.pt")["run"]["output_dir"] == str(tmp_path / "runs")


def test_pre_training_guards_its_encoder_file_the_same_way():
    parser = ConfigParser()
    parser.read_config(configs("pretrain.json"))
    assert parser["weights_record"]["targets"] == ["$@ckpt_dir + '/ssl_encoder.pt'"]
    assert parser["overwrite"] is False and parser["weights_record"]["kind"] == "encoder"


def weights_info(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scripts.tools.weights_info", *map(str, args)], cwd=ROOT, capture_output=True, text=True
    )


@pytest.mark.slow  # command-line subprocesses
def test_weights_info_prints_the_record_or_what_the_tensors_tell(tmp_path):
    paper = tmp_path / "model_swinvit.pt"
    torch.save(research_layout(encoder_of(small_net(1, window_size=SMALL_WINDOW).state_dict())), paper)
    out = weights_info(paper).stdout
    assert "format: research" in out and "patch merging: legacy (the research layout was released before" in out
    assert "record: none" in out and f"feature_size 12, window_size {SMALL_WINDOW}, depths [2, 2, 2, 2]" in out
    path, _ = recorded_model(tmp_path, task="BTCV")
    info = json.loads(weights_info(path, "--as_json", "true").stdout)
    assert info["patch_merging"] == "merging" and info["patch_merging_reason"] == "recorded in the file"
    assert info["record"]["data"]["task"] == "BTCV" and info["inferred_network"]["out_channels"] == 14
    missing = weights_info(tmp_path / "nothing.pt")
    assert (
        missing.returncode == 1 and missing.stderr.strip() == f"ERROR: {tmp_path / 'nothing.pt'}: weight file not found"
    )


def test_option_values_are_checked_one_way_with_the_closest_valid_value():
    with pytest.raises(ConfigError, match=r"patch_merging 'legacyy' is not a valid choice: .*did you mean 'legacy'"):
        choice("patch_merging", "legacyy", ("auto", "merging", "legacy"))
    with pytest.raises(ConfigError, match=r"attention 'xyz' is not a valid choice: use one of 'sdpa', 'monai'$"):
        choice("attention", "xyz", ("sdpa", "monai"))
    assert flag("overwrite", "false") is False and flag("overwrite", "True") is True and flag("x", False) is False
    with pytest.raises(ConfigError, match="overwrite 'maybe' is not a valid choice: use true or false"):
        flag("overwrite", "maybe")


@pytest.mark.slow
@pytest.mark.parametrize("option, value, hint", [("patch_merging", "legacyy", "did you mean 'legacy'")])
def test_a_misspelled_option_value_is_one_line_from_the_command(option, value, hint, tmp_path, phantoms, random_model):
    proc = bundle_run(
        ["inference.json", "small.json"],
        {"dataset_dir": phantoms / "imagesTs", "ckpt_dir": random_model, "output_dir": tmp_path, option: value},
        check=False,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"ERROR: {option} '{value}' is not a valid choice" in proc.stderr and hint in proc.stderr

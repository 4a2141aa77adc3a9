"""The repository is a valid MONAI bundle: configs parse, standard properties exist, metadata verifies."""

import json
import re
import shutil

import pytest
from monai.bundle import ConfigParser, ConfigWorkflow, verify_metadata, verify_net_in_out

from conftest import ROOT, SHARED, SMALL_WINDOW, configs


def pins(path):
    out = {}
    for line in (ROOT / path).read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", line.strip())
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


def test_every_config_is_valid_json_and_metadata_link_points_to_canonical_file():
    for path in (ROOT / "configs").glob("*.json"):
        json.loads(path.read_text())
    link = ROOT / "metadata.json"
    assert link.is_symlink() and link.resolve() == (ROOT / "configs" / "metadata.json").resolve()


def test_metadata_versions_match_requirements():
    meta = json.loads((ROOT / "configs" / "metadata.json").read_text())
    req = pins("requirements.txt")
    assert meta["monai_version"] == req["monai"]
    assert meta["pytorch_version"] == req["torch"]
    assert meta["numpy_version"] == req["numpy"]
    for name, version in {**meta["required_packages_version"], **meta.get("optional_packages_version", {})}.items():
        assert req[name.lower()] == version, name
    names = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert len(names) == 14 and names["10"] == "portal vein and splenic vein" and names["13"] == "left adrenal gland"


@pytest.mark.skipif(not (SHARED / "schema").is_dir(), reason=f"schema copy not found at {SHARED / 'schema'}")
def test_verify_metadata_against_shared_schema(tmp_path):
    schema = tmp_path / "schema.json"
    shutil.copy(SHARED / "schema" / "meta_schema_20240725.json", schema)
    verify_metadata(meta_file=str(ROOT / "configs" / "metadata.json"), filepath=str(schema))


def test_verify_net_in_out():
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(ROOT / "configs" / "metadata.json"),
        config_file=str(ROOT / "configs" / "inference.json"),
        device="cpu",
        n=2,
        feature_size=12,
    )


def test_fine_tuning_defaults_without_img_size():
    parser = ConfigParser()
    parser.read_config(configs("train.json"))
    net = parser.get("network_def")
    assert "img_size" not in net and net["_target_"] == "SwinUNETR" and parser.get("feature_size") == 48
    assert parser.get("roi_size") == [96, 96, 96] and parser.get("pixdim") == [1.5, 1.5, 2.0]
    assert (parser.get("a_min"), parser.get("a_max")) == (-175, 250)
    assert parser.get("validate#inferer#mode") == "gaussian" and parser.get("sw_overlap") == 0.5


@pytest.mark.parametrize("base", [("train.json",), ("train.json", "evaluate.json"), ("inference.json",)])
def test_small_overlay_shrinks_every_workflow(base):
    parser = ConfigParser()
    parser.read_config(configs(*base, "small.json"))
    parser.update({"bundle_root": str(ROOT)})
    net = parser.get_parsed_content("network_def")
    assert net.swinViT.embed_dim == 12
    assert parser.get_parsed_content("roi_size") == [64, 64, 64]


def test_train_workflow_properties(phantoms, tmp_path):
    wf = ConfigWorkflow(
        config_file=configs("train.json", "small.json"),
        workflow_type="train",
        bundle_root=str(ROOT),
        dataset_dir=str(phantoms),
        output_dir=str(tmp_path / "runs"),  # initialize() takes the run lock of its output_dir
        num_workers=0,
    )
    wf.initialize()
    assert wf.check_properties() == []


def test_infer_workflow_properties(phantoms, random_model):
    wf = ConfigWorkflow(
        config_file=configs("inference.json", "small.json"),
        workflow_type="infer",
        bundle_root=str(ROOT),
        dataset_dir=str(phantoms / "imagesTs"),
        ckpt_dir=str(random_model),
    )
    wf.initialize()
    assert wf.check_properties() == []


def test_cpu_defaults_no_amp_and_switchable_gradient_checkpointing():
    parser = ConfigParser()
    parser.read_config(configs("train.json", "small.json"))
    parser.update({"bundle_root": str(ROOT), "use_checkpoint": True, "device": "$torch.device('cpu')"})
    assert parser.get_parsed_content("amp") is False
    net = parser.get_parsed_content("network_def")
    assert net.swinViT.layers1[0].use_checkpoint is True


def test_tensorboard_handlers_are_skipped_with_a_notice_when_tensorboard_is_missing(monkeypatch, caplog, phantoms):
    import importlib.util

    import scripts.tensorboard as tb

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    monkeypatch.setattr(tb, "_notified", False)
    parser = ConfigParser()
    parser.read_config(configs("train.json", "small.json"))
    parser.update({"bundle_root": str(ROOT), "dataset_dir": str(phantoms), "num_workers": 0})
    handlers = parser.get_parsed_content("train#handlers", lazy=False)
    assert not any(type(h).__name__ == "TensorBoardStatsHandler" for h in handlers)
    assert any(type(h).__name__ == "StatsHandler" for h in handlers)
    assert "tensorboard is not installed" in caplog.text


def test_ckpt_export_traces_the_network_for_torchscript(random_model, tmp_path):
    import torch
    from monai.bundle import ckpt_export
    from monai.networks.nets import SwinUNETR

    ckpt_export(
        net_id="network_def",
        filepath=str(tmp_path / "model.ts"),
        ckpt_file=str(random_model / "model.pt"),
        meta_file=str(ROOT / "configs" / "metadata.json"),
        config_file=configs("inference.json", "small.json"),
        use_trace=True,
        input_shape=[1, 1, 64, 64, 64],
        bundle_root=str(ROOT),
    )
    traced = torch.jit.load(str(tmp_path / "model.ts"))
    net = SwinUNETR(in_channels=1, out_channels=14, feature_size=12, window_size=SMALL_WINDOW).eval()
    net.load_state_dict(torch.load(random_model / "model.pt", weights_only=True))
    x = torch.rand(1, 1, 64, 64, 64)
    with torch.no_grad():
        assert torch.allclose(traced(x), net(x), atol=1e-4)


def test_pretraining_defaults_are_the_reference_codes():
    parser = ConfigParser()
    parser.read_config(configs("pretrain.json"))
    expected = {
        "feature_size": 48,
        "roi_size": [96, 96, 96],
        "num_samples": 2,
        "batch_size": 2,
        "a_min": -1000,
        "a_max": 1000,
        "pixdim": [1.5, 1.5, 2.0],
        "learning_rate": 4e-4,
        "weight_decay": 0.1,
        "warmup_iterations": 500,
        "max_iterations": 100000,
        "temperature": 0.5,
        "proj_dim": 512,
        "rotation_weight": 1.0,
        "contrastive_weight": 1.0,
        "reconstruction_weight": 1.0,
        "mask_fraction": 0.3,
        "mask_min_side": 0.05,
        "mask_max_side": 0.25,
    }
    assert {k: parser.get(k) for k in expected} == expected
    # the heads and the views' turns deviate on purpose (docs/defaults.md); the reference's stay one id away
    assert (parser.get("proxy_heads"), parser.get("view_rotation")) == ("pooled_mlp", "independent")
    assert parser.get("train#trainer#_target_") == "SupervisedTrainer"
    assert parser.get("lr_scheduler#_target_") == "monai.optimizers.WarmupCosineSchedule"


def test_pretrain_workflow_properties_and_no_anomaly_detection(phantoms, tmp_path):
    import torch

    wf = ConfigWorkflow(
        config_file=configs("pretrain.json", "small_pretrain.json"),
        workflow_type="train",
        bundle_root=str(ROOT),
        dataset_dir=str(phantoms),
        output_dir=str(tmp_path / "runs"),  # initialize() takes the run lock of its output_dir
        num_workers=0,
    )
    wf.initialize()
    assert wf.check_properties() == []
    assert not torch.is_anomaly_enabled()
    net = wf.parser.get_parsed_content("network")
    assert net.swinViT.embed_dim == 12

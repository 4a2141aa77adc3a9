"""Pre-trained weights: every known layout loads completely (or fails with the names), legacy patch
merging reproduces the old order, conversion round-trips exactly, pickled code is refused."""

import logging

import pytest
import torch
from monai.networks.nets import SwinUNETR
from monai.networks.nets.swin_unetr import PatchMerging, PatchMergingV2

from scripts.network.pretraining import SSLHead
from scripts.weights.conversion import to_bundle, to_research
from scripts.weights.formats import read_checkpoint
from scripts.weights.legacy_merging import LegacyPatchMerging
from scripts.weights.loading import load_encoder, load_pretrained, patch_merging


def small_net(seed, in_channels=1, **kwargs):
    torch.manual_seed(seed)
    return SwinUNETR(in_channels=in_channels, out_channels=14, feature_size=12, **kwargs)


def encoder_of(state):
    return {k: v for k, v in state.items() if k.startswith("swinViT.")}


def research_layout(encoder):
    """The paper's model_swinvit.pt layout, written independently of the code under test."""
    out = {
        "module." + k[len("swinViT.") :].replace("mlp.linear1", "mlp.fc1").replace("mlp.linear2", "mlp.fc2"): v
        for k, v in encoder.items()
    }
    out["module.norm.weight"], out["module.norm.bias"] = torch.ones(192), torch.zeros(192)
    return {"state_dict": out}


def monai_ssl_layout(encoder):
    """MONAI's ssl_pretrained_weights.pth layout: encoder.* keys with an extra level under layersN.0."""
    out = {}
    for k, v in encoder.items():
        rest = k[len("swinViT.") :]
        out["encoder." + (rest if rest.startswith("patch_embed") else rest[:10] + "0." + rest[10:])] = v
    out["encoder.mask_token"], out["out.conv.conv.weight"] = torch.zeros(1, 1, 12), torch.zeros(1, 12, 1, 1, 1)
    return {"model": out}


SOURCE = small_net(1).state_dict()
ENCODER = encoder_of(SOURCE)
LAYOUTS = {
    "bundle encoder file": ENCODER,
    "pre-training checkpoint": {
        "model": {**ENCODER, "rotation_head.weight": torch.zeros(4, 192)},
        "optimizer": {"state": {}, "param_groups": []},
        "trainer": {"iteration": 5},
    },
    "DDP checkpoint with module. prefixes": {"state_dict": {"module." + k: v for k, v in SOURCE.items()}},
    "research model_swinvit.pt": research_layout(ENCODER),
    "MONAI ssl_pretrained_weights.pth": monai_ssl_layout(ENCODER),
    "research BTCV checkpoint": {"epoch": 10, "best_acc": 0.8, "state_dict": SOURCE},
    "model-zoo model.pt": SOURCE,
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_format_loads_every_encoder_tensor(layout, tmp_path, caplog):
    torch.save(LAYOUTS[layout], tmp_path / "w.pt")
    target = small_net(2)
    with caplog.at_level(logging.INFO):
        assert load_encoder(target, str(tmp_path / "w.pt")) == len(ENCODER)
    assert f"loaded {len(ENCODER)} of {len(ENCODER)} encoder tensors" in caplog.text
    for key, value in encoder_of(target.state_dict()).items():
        assert torch.equal(value, ENCODER[key]), key


@pytest.mark.parametrize("layout", ["research BTCV checkpoint", "model-zoo model.pt"])
def test_whole_fine_tuned_networks_load_with_part_all(layout, tmp_path):
    torch.save(LAYOUTS[layout], tmp_path / "w.pt")
    target = small_net(2)
    assert load_pretrained(target, str(tmp_path / "w.pt"), part="all") == len(SOURCE)
    assert all(torch.equal(v, SOURCE[k]) for k, v in target.state_dict().items())


def test_wrong_prefix_fails_with_the_missing_names(tmp_path):
    torch.save({k.replace("swinViT.", "backbone.swinViT."): v for k, v in ENCODER.items()}, tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"w.pt: unknown weight layout \(first keys: \['backbone.swinViT"):
        load_encoder(small_net(2), str(tmp_path / "w.pt"))
    with pytest.raises(ValueError, match=r"only 0 of \d+ encoder tensors match.*missing: \['swinViT\.layers1"):
        load_encoder(small_net(2), str(tmp_path / "w.pt"), fmt="bundle")


def test_wrong_size_fails_with_the_mismatched_names(tmp_path):
    torch.save(encoder_of(SwinUNETR(in_channels=1, out_channels=14, feature_size=24).state_dict()), tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"shape mismatch: \['swinViT"):
        load_encoder(small_net(2), str(tmp_path / "w.pt"))


def test_weights_of_another_swin_window_name_the_window_to_set(tmp_path):
    # the CPU overlays use window 4, the paper and every published encoder window 7
    torch.save(encoder_of(small_net(1, window_size=7).state_dict()), tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"weights use Swin window 7, the network 4: set --window_size 7"):
        load_encoder(small_net(2, window_size=4), str(tmp_path / "w.pt"))
    torch.save(encoder_of(small_net(1, window_size=4).state_dict()), tmp_path / "w4.pt")
    with pytest.raises(ValueError, match=r"weights use Swin window 4, the network 7: set --window_size 4"):
        load_encoder(small_net(2, window_size=7), str(tmp_path / "w4.pt"))


def test_a_lower_required_fraction_loads_the_rest_and_names_what_was_skipped(tmp_path, caplog):
    partial = {k: v for k, v in ENCODER.items() if not k.startswith("swinViT.layers4")}
    torch.save(partial, tmp_path / "w.pt")
    with pytest.raises(ValueError, match="below the required 100%"):
        load_encoder(small_net(2), str(tmp_path / "w.pt"))
    with caplog.at_level(logging.INFO):
        assert load_encoder(small_net(2), str(tmp_path / "w.pt"), min_fraction=0.5) == len(partial)
    assert "missing: ['swinViT.layers4" in caplog.text


def test_one_channel_weights_adapt_to_a_four_channel_network(tmp_path):
    torch.save(ENCODER, tmp_path / "w.pt")
    four = small_net(2, in_channels=4)
    load_encoder(four, str(tmp_path / "w.pt"))
    one = small_net(3)
    load_encoder(one, str(tmp_path / "w.pt"))
    x = torch.rand(1, 1, 64, 64, 64)
    with torch.no_grad():  # identical channels give the 1-channel network's features
        assert torch.allclose(four.swinViT(x.repeat(1, 4, 1, 1, 1))[4], one.swinViT(x)[4], atol=1e-5)


class OldOrderMerging(PatchMergingV2):
    """MONAI < 1.5 3-D PatchMerging, written out slice by slice as it was."""

    def forward(self, x):
        x0 = x[:, 0::2, 0::2, 0::2, :]
        x1 = x[:, 1::2, 0::2, 0::2, :]
        x2 = x[:, 0::2, 1::2, 0::2, :]
        x3 = x[:, 0::2, 0::2, 1::2, :]
        x4 = x[:, 1::2, 0::2, 1::2, :]
        x5 = x[:, 0::2, 1::2, 0::2, :]
        x6 = x[:, 0::2, 0::2, 1::2, :]
        x7 = x[:, 1::2, 1::2, 1::2, :]
        return self.reduction(self.norm(torch.cat([x0, x1, x2, x3, x4, x5, x6, x7], -1)))


def test_legacy_merging_reproduces_the_old_order_and_differs_from_the_current_one():
    torch.manual_seed(0)
    legacy, old, current = (
        LegacyPatchMerging(dim=6, spatial_dims=3),
        OldOrderMerging(dim=6, spatial_dims=3),
        PatchMerging(dim=6, spatial_dims=3),
    )
    old.load_state_dict(legacy.state_dict())
    current.load_state_dict(legacy.state_dict())
    x = torch.rand(2, 4, 6, 8, 6)
    assert torch.equal(legacy(x), old(x))
    assert not torch.allclose(legacy(x), current(x))


def test_legacy_weights_compute_what_they_computed_under_the_old_order(tmp_path):
    torch.save(research_layout(ENCODER), tmp_path / "model_swinvit.pt")
    path = str(tmp_path / "model_swinvit.pt")
    assert patch_merging(path) is LegacyPatchMerging  # recognised as a 2022 release
    ours = small_net(2, downsample=patch_merging(path))
    load_encoder(ours, path)
    reference = small_net(3, downsample=OldOrderMerging)
    reference.load_from(torch.load(path, weights_only=True))  # MONAI's own reader of this layout
    x = torch.rand(1, 1, 64, 64, 64)
    with torch.no_grad():
        for a, b in zip(ours.swinViT(x), reference.swinViT(x)):
            assert torch.equal(a, b)


def test_research_btcv_checkpoints_are_recognised_as_legacy(tmp_path):
    torch.save(LAYOUTS["research BTCV checkpoint"], tmp_path / "btcv.pt")
    assert patch_merging(str(tmp_path / "btcv.pt")) is LegacyPatchMerging


def test_bundle_files_keep_the_current_merging_unless_told(tmp_path):
    torch.save(ENCODER, tmp_path / "enc.pt")
    assert patch_merging(str(tmp_path / "enc.pt")) == "merging" and patch_merging("") == "merging"
    assert patch_merging(str(tmp_path / "enc.pt"), order="legacy") is LegacyPatchMerging


def test_conversion_to_research_and_back_is_exact_and_readable_by_load_from(tmp_path):
    ssl = SSLHead(feature_size=12)
    torch.save({k: v for k, v in ssl.state_dict().items() if k.startswith("swinViT.")}, tmp_path / "enc.pt")
    to_research(str(tmp_path / "enc.pt"), str(tmp_path / "research.pt"))
    to_bundle(str(tmp_path / "research.pt"), str(tmp_path / "back.pt"))
    original, back = (
        torch.load(tmp_path / "enc.pt", weights_only=True),
        torch.load(tmp_path / "back.pt", weights_only=True),
    )
    assert set(original) == set(back) and all(torch.equal(original[k], back[k]) for k in original)
    net = small_net(5)
    net.load_from(torch.load(tmp_path / "research.pt", weights_only=True))
    assert all(torch.equal(v, original[k]) for k, v in encoder_of(net.state_dict()).items())


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create the marker file when unpickled


def test_checkpoints_carrying_pickled_code_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": Payload(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="refused to load: the file holds pickled Python objects"):
        read_checkpoint(str(tmp_path / "evil.pt"))
    with pytest.raises(ValueError, match="refused to load"):
        load_encoder(small_net(2), str(tmp_path / "evil.pt"))
    assert not marker.exists()


@pytest.mark.parametrize("names", [("train.json", "small.json"), ("pretrain.json", "small_pretrain.json")])
def test_training_configs_load_research_weights_with_legacy_merging(names, tmp_path, phantoms):
    from monai.bundle import ConfigParser

    from conftest import ROOT, configs

    torch.save(research_layout(ENCODER), tmp_path / "model_swinvit.pt")
    parser = ConfigParser()
    parser.read_config(configs(*names))
    parser.update(
        {
            "bundle_root": str(ROOT),
            "dataset_dir": str(phantoms),
            "device": "$torch.device('cpu')",
            "pretrained_encoder": str(tmp_path / "model_swinvit.pt"),
            "window_size": 7,  # the research code's window, whatever the CPU overlay picks
            "output_dir": str(tmp_path / "runs"),  # initialize takes the run lock of its output_dir
        }
    )
    parser.get_parsed_content("initialize")
    net = parser.get_parsed_content("network")
    assert isinstance(net.swinViT.layers1[0].downsample, LegacyPatchMerging)
    assert all(torch.equal(v, ENCODER[k]) for k, v in encoder_of(net.state_dict()).items())


@pytest.mark.slow
def test_inference_runs_a_research_btcv_checkpoint(tmp_path, phantoms):
    from conftest import bundle_run

    (tmp_path / "models").mkdir()
    torch.save(LAYOUTS["research BTCV checkpoint"], tmp_path / "models" / "model.pt")
    proc = bundle_run(
        ["inference.json", "small.json"],
        {
            "dataset_dir": phantoms / "imagesTs",
            "ckpt_dir": tmp_path / "models",
            "output_dir": tmp_path / "out",
            "window_size": 7,  # the research code's window, whatever the CPU overlay picks
        },
    )
    assert f"loaded {len(SOURCE)} of {len(SOURCE)} network tensors" in proc.stdout + proc.stderr
    assert "(research_btcv)" in proc.stdout + proc.stderr and "pre-1.5 3-D patch merging" in proc.stdout + proc.stderr
    assert len(list((tmp_path / "out").glob("*_seg.nii.gz"))) == 1

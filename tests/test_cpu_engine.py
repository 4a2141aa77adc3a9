"""The CPU inference engine: OpenVINO must give PyTorch's labels, convert once per weights, and be what inference and
evaluation run on a CPU."""

from __future__ import annotations

import copy
import logging
import os

import pytest
import torch
from monai.bundle import ConfigParser
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import SwinUNETR

from scripts.errors import ConfigError
from scripts.inference import cpu_engine
from scripts.inference.cpu_engine import CompiledNetwork, EngineSlidingWindowInferer, resolve_engine, weights_key

from conftest import configs

pytest.importorskip("openvino", reason="pip install -r requirements.txt")

ROI, CLASSES = (64, 64, 64), 3
# 3 x 2 x 1 windows at overlap 0.5: with 4 windows per call the second call has 2, so padding a short batch is checked
VOLUME = (1, 1, 96, 72, 64)


def small_network(window=4) -> SwinUNETR:
    torch.manual_seed(0)
    return SwinUNETR(1, CLASSES, feature_size=12, window_size=window, use_flash_attention=True).eval()


def smooth_volume() -> torch.Tensor:
    """Blobs rather than voxel noise, so each class is a region and Dice means what it means on a CT."""
    torch.manual_seed(1)
    return torch.nn.functional.avg_pool3d(torch.rand(VOLUME), 9, stride=1, padding=4) * 4 - 1.5


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The small network, a volume, PyTorch's scores of it and OpenVINO's (one conversion for the module)."""
    network, x = small_network(), smooth_volume()
    cache = tmp_path_factory.mktemp("openvino")
    windows = dict(roi_size=ROI, sw_batch_size=4, overlap=0.5, mode="gaussian")
    with torch.inference_mode():
        plain = SlidingWindowInferer(**windows)(x, network)
        engine = EngineSlidingWindowInferer(**windows, engine="openvino", cache_dir=cache)
        fast = engine(x, network)
    return {"network": network, "x": x, "cache": cache, "plain": plain, "fast": fast, "engine": engine}


@pytest.mark.slow
def test_openvino_windows_give_pytorch_scores_and_labels(converted):
    plain, fast = converted["plain"], converted["fast"]
    assert fast.shape == plain.shape == (1, CLASSES, *VOLUME[2:])
    assert (fast - plain).abs().max() <= 1e-3 * plain.abs().max()
    labels_plain, labels_fast = plain.argmax(1), fast.argmax(1)
    present = [c for c in range(CLASSES) if (labels_plain == c).sum() > 1000]
    assert len(present) >= 2  # a comparison of one class everywhere would prove nothing
    for c in present:
        a, b = labels_plain == c, labels_fast == c
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.99, c
    models = list(converted["cache"].glob("*.xml"))
    assert len(models) == 1 and models[0].with_suffix(".bin").stat().st_size > 4 * 1_000_000  # float32 weights
    assert converted["engine"].ran_on(converted["network"]) == "openvino"


class NearTie(torch.nn.Module):
    """Two classes a hair apart everywhere: PyTorch's label is class 0."""

    def forward(self, x):
        return torch.cat([torch.ones_like(x), torch.ones_like(x) - 1e-4, torch.zeros_like(x)], dim=1)


def test_the_first_window_check_refuses_changed_labels_even_when_the_scores_are_close(tmp_path):
    compiled = CompiledNetwork(NearTie(), tmp_path, batch_size=1)
    window = torch.rand((1, 1, 8, 8, 8))
    expected = NearTie()(window)
    flipped = expected.clone()
    flipped[:, 1] += 2e-4  # class 1 wins everywhere: 2e-4 of the scale, far within the score tolerance
    with pytest.raises(cpu_engine.ConversionError, match=r"labels equal PyTorch's on 0.00% of the first window"):
        compiled._check(window, flipped)
    one_voxel = expected.clone()
    one_voxel[0, 1, 0, 0, 0] += 2e-4  # 1 of 512 voxels (0.2%) changes its label: accepted
    compiled._check(window, one_voxel)
    with pytest.raises(cpu_engine.ConversionError, match="differs from PyTorch's on the first window by 0.5"):
        compiled._check(window, expected * 0.5)


@pytest.mark.slow
def test_the_converted_model_is_reused_until_the_weights_change(converted, monkeypatch, caplog):
    network, cache = converted["network"], converted["cache"]
    (model,) = cache.glob("*.xml")
    stamp = model.stat().st_mtime_ns
    again = CompiledNetwork(network, cache, batch_size=4)
    with caplog.at_level(logging.INFO), torch.inference_mode():
        out = again(converted["x"][..., :64, :64, :64])
    assert out.shape == (1, CLASSES, *ROI)
    assert "converted the network" not in caplog.text and model.stat().st_mtime_ns == stamp

    asked = []

    def convert(key, shape):
        asked.append(key)
        raise RuntimeError("stop before converting")

    monkeypatch.setattr(again, "_converted", convert)
    with torch.no_grad():
        next(network.parameters()).add_(1e-3)  # new weights, as after loading another checkpoint
    try:
        with pytest.raises(RuntimeError, match="stop before converting"):
            again(converted["x"][..., :64, :64, :64])
    finally:
        with torch.no_grad():
            next(network.parameters()).sub_(1e-3)
    assert asked and asked[0] != model.stem


def test_the_cache_key_follows_weights_architecture_and_shape():
    network = small_network()
    key = weights_key(network, (4, 1, *ROI))
    assert weights_key(copy.deepcopy(network), (4, 1, *ROI)) == key
    changed = copy.deepcopy(network)
    with torch.no_grad():
        changed.out.conv.conv.bias[0] += 1e-4  # one number of the last layer
    assert weights_key(changed, (4, 1, *ROI)) != key
    assert weights_key(small_network(window=7), (4, 1, *ROI)) != key  # same tensor shapes, other graph
    assert weights_key(network, (2, 1, *ROI)) != key


def test_the_cache_keeps_the_newest_converted_models(tmp_path):
    for age, name in enumerate("abcde"):
        for suffix in (".xml", ".bin"):
            path = tmp_path / f"{name}{suffix}"
            path.write_text(name)
            os.utime(path, (1000 + age, 1000 + age))  # e newest
    cpu_engine._prune(tmp_path, keep=tmp_path / "a.xml")  # the model just converted, whatever its time
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "a.xml", "d.bin", "d.xml", "e.bin", "e.xml"]


def test_an_unwritable_cache_folder_falls_back_to_a_temporary_one(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.WARNING):
        folder = cpu_engine._writable(blocker / "openvino")
    assert folder.is_dir() and folder != blocker / "openvino"
    assert "cannot write the converted model" in caplog.text and str(blocker / "openvino") in caplog.text


def test_auto_takes_openvino_on_a_cpu_only(monkeypatch):
    assert resolve_engine("auto", "cpu") == "openvino"
    assert resolve_engine("auto", torch.device("cuda:0")) == "torch"
    assert resolve_engine("openvino", "cuda") == "torch"  # OpenVINO here runs on CPUs only
    assert resolve_engine("torch", "cpu") == "torch"
    with pytest.raises(ConfigError, match="did you mean 'openvino'"):
        resolve_engine("openvno", "cpu")
    monkeypatch.setattr(cpu_engine, "openvino_available", lambda: False)
    assert resolve_engine("auto", "cpu") == "torch"
    with pytest.raises(ConfigError, match="openvino package is not installed"):
        resolve_engine("openvino", "cpu")


def test_the_torch_engine_runs_the_network_as_given():
    network, x = small_network(), smooth_volume()[..., :64, :64, :64]
    windows = dict(roi_size=ROI, sw_batch_size=2, overlap=0.5)
    with torch.inference_mode():
        plain = SlidingWindowInferer(**windows)(x, network)
        torch_engine = EngineSlidingWindowInferer(**windows, engine="torch")(x, network)
    assert torch.equal(plain, torch_engine)


@pytest.mark.parametrize("files", [["inference.json"], ["train.json", "evaluate.json"]])
def test_inference_and_evaluation_run_their_windows_on_the_engine_with_the_cache_beside_the_weights(files, tmp_path):
    parser = ConfigParser()
    parser.read_config(configs(*files))
    parser["ckpt_path"] = str(tmp_path / "weights" / "model.pt")
    key = "inferer" if files == ["inference.json"] else "validate#inferer"
    inferer = parser.get_parsed_content(key, instantiate=True)
    assert isinstance(inferer, EngineSlidingWindowInferer)
    assert inferer.engine == parser["cpu_engine"] == "auto" and inferer.precision == "f32"
    assert str(inferer.cache_dir) == str(tmp_path / "weights" / "openvino")


def test_validation_during_training_stays_on_pytorch():
    """The weights change at every validation: converting them each time would cost more than it saves."""
    parser = ConfigParser()
    parser.read_config(configs("train.json"))
    assert parser["validate#inferer"]["_target_"] == "SlidingWindowInferer"


class LabelLookup(torch.nn.Module):
    """A stand-in network whose class comes from the data through a Python number: tracing (which conversion uses)
    bakes the example input's class in as a constant, without an error."""

    def forward(self, x):
        scores = torch.zeros((x.shape[0], CLASSES, *x.shape[2:]))
        scores[:, int(x.flatten()[0].item() * 10) % CLASSES] = 1.0
        return scores


class Histogram(torch.nn.Module):
    """A network with an operation OpenVINO's converter lacks (``torch.histc``)."""

    def forward(self, x):
        return torch.cat([x, x * torch.histc(x, bins=4)[0]] + [x] * (CLASSES - 2), dim=1)


@pytest.mark.parametrize("network", [LabelLookup(), Histogram()], ids=["traced wrong", "not convertible"])
def test_a_network_openvino_cannot_run_right_runs_on_pytorch_with_a_warning(network, tmp_path, caplog):
    x = torch.full((1, 1, 64, 64, 64), 0.25)
    windows = dict(roi_size=ROI, sw_batch_size=2, overlap=0.5)
    inferer = EngineSlidingWindowInferer(**windows, engine="openvino", cache_dir=tmp_path)
    with caplog.at_level(logging.WARNING), torch.inference_mode():
        out = inferer(x, network)
        again = inferer(x, network)
        assert logging.getLogger().level == logging.WARNING  # a failed conversion leaves the root logger as it was
    assert torch.equal(out, SlidingWindowInferer(**windows)(x, network)) and torch.equal(again, out)
    assert caplog.text.count("OpenVINO cannot run this network") == 1  # tried once, then PyTorch
    assert "PyTorch runs it instead" in caplog.text
    assert inferer.ran_on(network) == "torch"  # what the benchmark reports for this network

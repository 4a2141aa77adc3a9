"""Fast paths must compute what MONAI's Swin computes: same outputs, same gradients, same weights."""

from __future__ import annotations

import copy
import json
import logging
import os
import subprocess
import sys

import pytest
import torch
from monai.networks.nets import SwinUNETR
from monai.networks.nets.swin_unetr import WindowAttention, compute_mask

from scripts.errors import ConfigError
from scripts.network.speed import SDPAWindowAttention, compile_network, use_attention

from conftest import ROOT, configs


def _pair(window=(4, 4, 4), dim=24, heads=3):
    torch.manual_seed(0)
    plain = WindowAttention(dim, heads, window, qkv_bias=True)
    with torch.no_grad():  # a non-zero learned bias, so a kernel that drops it fails
        plain.relative_position_bias_table.normal_(0, 1.0)
    fast = copy.deepcopy(plain)
    fast.__class__ = SDPAWindowAttention
    return plain, fast


@pytest.mark.parametrize("shifted", [False, True])
def test_sdpa_window_attention_equals_monai_in_output_and_gradients(shifted):
    plain, fast = _pair()
    window, n = (4, 4, 4), 64
    # two volumes of 8 windows each; the shift mask is MONAI's own (-100 between regions)
    mask = compute_mask([8, 8, 8], window, [2, 2, 2], "cpu") if shifted else None
    assert mask is None or (mask.shape == (8, n, n) and (mask < 0).any())
    x = torch.randn(16, n, 24, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y_plain, y_fast = plain(x, mask), fast(x2, mask)
    assert torch.allclose(y_plain, y_fast, atol=1e-5, rtol=1e-5)
    target = torch.randn_like(y_plain)
    (y_plain * target).sum().backward()
    (y_fast * target).sum().backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-5, rtol=1e-4)
    for (name, p), (_, q) in zip(plain.named_parameters(), fast.named_parameters()):
        scale = p.grad.abs().max()
        assert scale > 0, name
        assert (p.grad - q.grad).abs().max() <= 1e-4 * scale, name


def test_the_shift_mask_reaches_each_window_of_each_volume():
    # windows are ordered volume-major: a mask applied to the wrong window (or only to the first volume)
    # changes the output of the windows that straddle regions
    plain, fast = _pair()
    mask = compute_mask([8, 8, 8], (4, 4, 4), [2, 2, 2], "cpu")
    x = torch.randn(16, 64, 24)
    with torch.no_grad():
        unmasked = fast(x, None)
        masked = fast(x, mask)
        assert not torch.allclose(unmasked, masked, atol=1e-3)
        assert torch.allclose(masked, plain(x, mask), atol=1e-5)


@pytest.mark.parametrize("window", [4, 7])
def test_whole_network_with_sdpa_matches_monai_and_shares_its_weights(window):
    torch.manual_seed(0)
    # on 32^3 the stages 16 and 8 use shifted windows for both windows
    plain = SwinUNETR(in_channels=1, out_channels=3, feature_size=12, window_size=window)
    fast = use_attention(copy.deepcopy(plain), "sdpa")
    assert sum(isinstance(m, SDPAWindowAttention) for m in fast.modules()) == 8
    # the same parameter names and shapes: weights load both ways, strictly
    assert plain.state_dict().keys() == fast.state_dict().keys()
    SwinUNETR(in_channels=1, out_channels=3, feature_size=12, window_size=window).load_state_dict(fast.state_dict())
    # the attention lives in the encoder: compare its five hidden states (the decoder's norms need 64^3)
    x = torch.randn(1, 1, 32, 32, 32)
    h_plain, h_fast = plain.swinViT(x), fast.swinViT(x)
    for a, b in zip(h_plain, h_fast):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    sum(h.square().mean() for h in h_plain).backward()
    sum(h.square().mean() for h in h_fast).backward()
    for (name, p), (_, q) in zip(plain.swinViT.named_parameters(), fast.swinViT.named_parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6 + 1e-4 * p.grad.abs().max()), name


def test_fused_inference_path_equals_plain_monai():
    torch.manual_seed(0)
    plain = SwinUNETR(in_channels=1, out_channels=3, feature_size=12, window_size=4).eval()
    fused = SwinUNETR(in_channels=1, out_channels=3, feature_size=12, window_size=4, use_flash_attention=True).eval()
    fused.load_state_dict(plain.state_dict())
    x = torch.randn(1, 1, 64, 64, 64)
    with torch.inference_mode():
        expected = plain(x)
        assert torch.allclose(expected, fused(x), atol=1e-5)
        assert torch.allclose(expected, use_attention(fused, "sdpa")(x), atol=1e-5)


def test_the_kernel_is_picked_by_id_and_logged(caplog):
    net = SwinUNETR(in_channels=1, out_channels=3, feature_size=12, window_size=4, use_flash_attention=True)
    with caplog.at_level(logging.INFO, logger="scripts.network.speed"):
        use_attention(net, "sdpa")
        assert all(type(m) is SDPAWindowAttention for m in net.modules() if isinstance(m, WindowAttention))
        use_attention(net, "monai")
        assert all(type(m) is WindowAttention for m in net.modules() if isinstance(m, WindowAttention))
    assert "window attention: sdpa (torch scaled_dot_product_attention" in caplog.text
    assert "window attention: monai (MONAI's matrix path with gradients, scaled_dot_product_attention without)" in (
        caplog.text
    )
    with pytest.raises(ConfigError, match="attention .* is not a valid choice"):
        use_attention(net, "flash")


def test_compiling_keeps_the_checkpoint_names():
    net = SwinUNETR(in_channels=1, out_channels=3, feature_size=12, window_size=4)
    names = list(net.state_dict())
    assert compile_network(net, enabled=True) is net
    assert list(net.state_dict()) == names  # no "_orig_mod." prefix: checkpoints stay loadable


@pytest.mark.parametrize("workflow", ["train.json", "inference.json", "pretrain.json"])
def test_every_workflow_builds_its_network_with_the_chosen_kernel(workflow, phantoms):
    from monai.bundle import ConfigParser

    for kernel, expected in (("sdpa", SDPAWindowAttention), ("monai", WindowAttention)):
        parser = ConfigParser()
        overlay = "small_pretrain.json" if workflow == "pretrain.json" else "small.json"
        parser.read_config(configs(workflow, overlay))
        device = "$torch.device('cpu')"
        parser.update({"bundle_root": str(ROOT), "dataset_dir": str(phantoms), "device": device, "attention": kernel})
        net = parser.get_parsed_content("network")
        attention = [m for m in net.modules() if isinstance(m, WindowAttention)]
        assert attention and all(type(m) is expected for m in attention)
        assert all(m.window_size == (4, 4, 4) for m in attention)  # the CPU overlay's window
        assert all(m.use_flash_attention for m in attention)  # MONAI's fused path whenever no gradient


def test_amp_dtype_reaches_the_pre_training_step():
    from types import SimpleNamespace

    from scripts.pretraining.steps import SSLTrainStep

    seen = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
            n = x.shape[0]
            return {
                "rotation": self.w * torch.ones(n, 4),
                "projection": self.w * torch.randn(n, 8),
                "reconstruction": self.w * x,
            }

    def loss(outputs, targets):
        return {"total": outputs["rotation"].sum() * 0 + outputs["reconstruction"].mean()}

    net = Probe()
    engine = SimpleNamespace(
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        loss_function=loss,
        amp=True,
        amp_kwargs={"dtype": torch.bfloat16},
        scaler=None,
        state=SimpleNamespace(device=torch.device("cpu")),
    )
    SSLTrainStep(max_grad_norm=None)(engine, {"image": torch.rand(2, 1, 16, 16, 16)})
    assert seen == [torch.bfloat16]


def test_benchmark_refuses_sizes_the_network_cannot_take():
    from scripts.tools.benchmark import run

    with pytest.raises(ConfigError, match="roi must be one int or three ints, each a multiple of 32"):
        run(roi=50, out=None)
    with pytest.raises(ConfigError, match=r"variants: unknown \['fast'\]"):
        run(variants="plain,fast", out=None)


def test_gpu_check_fails_without_a_gpu_and_says_so(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the check would run for real")
    result = subprocess.run(
        ["bash", str(ROOT / "bin" / "gpu_check.sh"), "--out_dir", str(tmp_path)],
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "FAIL [device] no CUDA device (use --dry_run on a CPU)" in result.stdout
    assert json.loads((tmp_path / "summary.json").read_text())["failures"] == [
        "device: no CUDA device (use --dry_run on a CPU)"
    ]


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_step_cpu_sized(tmp_path):
    result = subprocess.run(
        ["bash", str(ROOT / "bin" / "gpu_check.sh"), "--dry-run", "--out_dir", str(tmp_path)],
        env={
            "PYTHON": sys.executable,
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            **{k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},  # the worker's
        },
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["failures"] == []
    bench = json.loads((tmp_path / "benchmark.json").read_text())["tasks"]
    assert set(bench) == {"pretrain", "finetune", "infer"}
    assert all(bench[t][v]["median_s"] > 0 for t in bench for v in ("plain", "bundle"))
    assert set(summary["loop"]) == {"process", "thread"}  # the loop step ran the bundle's pre-training per loader
    assert all(0 < r["busy_fraction"] <= 1 and r["loop_s"] > 0 for r in summary["loop"].values())
    assert (tmp_path / "loop.json").is_file()
    assert summary["pretrain"]["iterations"] == 2
    assert 0.0 <= summary["pretrain"]["val_rotation_accuracy"] <= 1.0
    assert (tmp_path / "models" / "ssl_encoder.pt").is_file() and (tmp_path / "models" / "model.pt").is_file()
    assert summary["infer"]["labels_found"][0] == 0
    assert "# GPU check (dry run): PASS" in (tmp_path / "summary.md").read_text()


@pytest.mark.parametrize("workflow", ["train.json", "inference.json", "pretrain.json"])
def test_the_default_kernel_is_sdpa_on_cuda_and_monai_on_cpu(workflow):
    # measured: on CUDA the fused kernel saves a quarter of the memory; on CPU it falls back to the math kernel,
    # 4-13% slower than MONAI's matrix path in training (docs/speed.md)
    from monai.bundle import ConfigParser

    for device, expected in (("cuda:0", "sdpa"), ("cpu", "monai"), ("$torch.device('cuda', 1)", "sdpa")):
        parser = ConfigParser()
        parser.read_config(configs(workflow))
        parser.update({"device": device})
        assert parser.get_parsed_content("attention") == expected


def test_regional_compilation_compiles_each_swin_block_and_nothing_else():
    from monai.networks.nets.swin_unetr import SwinTransformerBlock

    net = SwinUNETR(in_channels=1, out_channels=2, feature_size=12, window_size=4)
    names = list(net.state_dict())
    assert compile_network(net, enabled="regional") is net
    blocks = [m for m in net.modules() if isinstance(m, SwinTransformerBlock)]
    assert len(blocks) == 8  # depths 2/2/2/2
    assert all(b._compiled_call_impl is not None for b in blocks)
    others = [m for m in net.modules() if not isinstance(m, SwinTransformerBlock) and m not in blocks]
    assert all(getattr(m, "_compiled_call_impl", None) is None for m in others if m is not net)
    assert net._compiled_call_impl is None and list(net.state_dict()) == names
    # 4 stages x (shifted, unshifted) graphs per input shape: training and validation batches need more than 8
    assert torch._dynamo.config.recompile_limit >= 32
    with pytest.raises(ConfigError, match="did you mean 'regional'"):
        compile_network(net, enabled="regionl")


def test_compile_from_the_command_line_means_what_it_says():
    from scripts.network.speed import prepare_network

    net = SwinUNETR(in_channels=1, out_channels=2, feature_size=12)
    assert prepare_network(net, "cpu", "monai", "false")._compiled_call_impl is None  # the string, not truthy
    assert prepare_network(net, "cpu", "monai", "true")._compiled_call_impl is not None  # compiled at first call

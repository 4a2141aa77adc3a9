"""The MONAI model-zoo CI checks, with their default arguments: metadata against the schema, the network's input and
output shapes, TorchScript and ONNX export, and the train / infer / eval workflow properties.

feature_size 12 (an override every check accepts) keeps them CPU-sized; shapes and names do not depend on it.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from monai.bundle import create_workflow, onnx_export, verify_metadata, verify_net_in_out

from conftest import ROOT, SHARED, SMALL_WINDOW, configs

SCHEMA = SHARED / "schema" / "meta_schema_20240725.json"
META = str(ROOT / "configs" / "metadata.json")
# docs/README.md (Commands) traces at roi_size, [1, 1, 96, 96, 96]: ckpt_export with it was checked by hand (see
# there), as tracing takes minutes on 2 CPU cores. The suite exports to ONNX, which traces the same way, at the
# smallest valid window
TRACE_SHAPE = [1, 1, 64, 64, 64]


@pytest.mark.skipif(not SCHEMA.is_file(), reason=f"metadata schema not found at {SCHEMA} (in the project's shared/)")
def test_verify_metadata_against_the_schema_it_names(tmp_path):
    schema = tmp_path / "schema.json"
    shutil.copy(SCHEMA, schema)  # verify_metadata downloads the schema unless a file is already there
    verify_metadata(meta_file=META, filepath=str(schema))


@pytest.mark.slow
def test_verify_net_in_out_with_default_arguments():
    """n=1 must give a valid input: 32 * n + 32 = 64 (32^3 leaves a 1x1x1 bottleneck that instance norm refuses)."""
    verify_net_in_out(net_id="network_def", meta_file=META, config_file=configs("inference.json"), feature_size=12)


def export(command, out, model: str) -> None:
    """``onnx_export`` (or ``ckpt_export``) as docs/README.md runs them, by tracing at TRACE_SHAPE."""
    command(
        net_id="network_def",
        filepath=str(out),
        ckpt_file=model,
        meta_file=META,
        config_file=configs("inference.json"),
        use_trace=True,
        input_shape=TRACE_SHAPE,
        feature_size=12,
        window_size=SMALL_WINDOW,  # random_model's window
        ckpt_path=model,
    )


def legacy_model(folder) -> str:
    """A model.pt fine-tuned with the paper's (pre-1.5) merging order, which it records."""
    from monai.networks.nets import SwinUNETR

    from scripts.weights.legacy_merging import LegacyPatchMerging
    from scripts.weights.writing import WeightsRecord

    torch.manual_seed(1)
    net = SwinUNETR(1, 14, feature_size=12, window_size=SMALL_WINDOW, downsample=LegacyPatchMerging)
    WeightsRecord(net, {}, output_dir=str(folder))
    torch.save(net.state_dict(), folder / "model.pt")
    return str(folder / "model.pt")


def test_the_export_checks_build_the_network_in_the_recorded_merging_order(tmp_path):
    """ckpt_export, onnx_export and verify_net_in_out build network_def of inference.json with ckpt_path set."""
    from monai.bundle import ConfigParser

    from scripts.weights.legacy_merging import LegacyPatchMerging

    model = legacy_model(tmp_path)
    parser = ConfigParser()
    parser.read_config(configs("inference.json"))
    parser.update({"bundle_root": str(ROOT), "ckpt_path": model, "feature_size": 12, "window_size": SMALL_WINDOW})
    network = parser.get_parsed_content("network_def")
    layers = (network.swinViT.layers1, network.swinViT.layers2, network.swinViT.layers3, network.swinViT.layers4)
    assert all(isinstance(layer[0].downsample, LegacyPatchMerging) for layer in layers)
    network.load_state_dict(torch.load(model, weights_only=True), strict=True)


@pytest.mark.slow
@pytest.mark.parametrize("order", ["merging"])
def test_onnx_export_runs_in_onnx_runtime_like_pytorch_in_the_recorded_merging_order(tmp_path, random_model, order):
    ort = pytest.importorskip("onnxruntime", reason="pip install -r requirements-onnx.txt")
    from monai.networks.nets import SwinUNETR

    from scripts.weights.legacy_merging import LegacyPatchMerging

    model = str(random_model / "model.pt") if order == "merging" else legacy_model(tmp_path)
    out = tmp_path / "model.onnx"
    shape = TRACE_SHAPE
    export(onnx_export, out, model)  # no merging flag: the file's record decides
    net, other = (
        SwinUNETR(1, 14, feature_size=12, window_size=SMALL_WINDOW, downsample=d).eval()
        for d in ((LegacyPatchMerging, "merging") if order == "legacy" else ("merging", LegacyPatchMerging))
    )
    net.load_state_dict(torch.load(model, weights_only=True))
    other.load_state_dict(torch.load(model, weights_only=True))
    x = torch.rand(*shape)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (result,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected, wrong = net(x).numpy(), other(x).numpy()
    assert result.shape == expected.shape == (1, 14, 64, 64, 64)
    np.testing.assert_allclose(result, expected, rtol=1e-3, atol=1e-3)
    assert not np.allclose(result, wrong, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(
    "names, workflow_type",
    [(["train.json"], "train"), (["inference.json"], "infer"), (["train.json", "evaluate.json"], "eval")],
    ids=["train", "infer", "eval"],
)
def test_check_properties_finds_every_required_and_optional_id(tmp_path, phantoms, random_model, names, workflow_type):
    data = str(phantoms / "imagesTs") if workflow_type == "infer" else str(phantoms)
    workflow = create_workflow(
        config_file=configs(*names),
        workflow_type=workflow_type,
        meta_file=META,
        output_dir=str(tmp_path / "out"),
        ckpt_path=str(random_model / "model.pt"),
        feature_size=12,
        window_size=SMALL_WINDOW,
        dataset_dir=data,
        num_workers=0,
    )
    assert workflow.check_properties() == []
    workflow.finalize()

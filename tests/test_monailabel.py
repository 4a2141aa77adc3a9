"""The bundle inside MONAI Label 0.8.5 (sample app ``monaibundle``), without installing MONAI Label: these tests make
the calls its ``monailabel/tasks/infer/bundle.py`` and ``monailabel/tasks/train/bundle.py`` make, with its overrides:
``device`` as a string, ``train#trainer#max_epochs`` as the only length, its own datalists, a ``CheckpointLoader``
with ``strict=False`` for ``models/model.pt``, the bundle's writer dropped and ``data["image_path"]`` a string.
The real server is checked by ``../shared/tools/monailabel/run_check.sh`` (docs/monailabel.md).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys

import monai.bundle
import numpy as np
import pytest
import torch
from monai.bundle import ConfigItem, ConfigParser
from monai.handlers import CheckpointLoader
from monai.transforms import Compose, SaveImaged

from conftest import ROOT

# what run_check.sh's OVERRIDES sets in the copy's configs, plus CPU-sized crops and spacing
SMALL = {"feature_size": 12, "roi_size": [64, 64, 64], "pixdim": [4.0, 4.0, 4.0], "num_samples": 1, "sw_batch_size": 2}


@pytest.fixture
def bundle(tmp_path, phantoms):
    """The bundle as MONAI Label holds it: a copy in the app's model folder with random weights at models/model.pt."""
    root = tmp_path / "apps" / "monaibundle" / "model" / "swin_unetr_btcv_segmentation"
    for part in ("configs", "scripts"):
        shutil.copytree(ROOT / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "models").mkdir()
    for name in ("inference.json", "train.json"):
        path = root / "configs" / name
        config = json.loads(path.read_text())
        config.update({k: v for k, v in SMALL.items() if k in config})
        config["num_workers"] = 0  # the test process, not the default's CPU count
        path.write_text(json.dumps(config, indent=4))
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser["bundle_root"] = str(root)
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), root / "models" / "model.pt")
    return root


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def infer_like_monailabel(root, image: str) -> dict:
    """BundleInferTask: parse inference.json with bundle_root set, build network_def, set device to the request's
    string, run preprocessing (on a dict with image_path), inferer, postprocessing without SaveImaged."""
    sys.path.insert(0, str(root))
    try:
        parser = ConfigParser()
        parser.read_config(str(root / "configs" / "inference.json"))
        parser.config.update({"bundle_root": str(root)})
        network = parser.get_parsed_content("network_def", instantiate=True)
        device = "cpu"  # name_to_device("cuda") on a machine without CUDA
        parser.config.update({"device": device})
        if parser.ref_resolver.items.get("device"):
            parser.ref_resolver.items["device"] = ConfigItem(config=device, id="device")
        pre = parser.get_parsed_content("preprocessing", instantiate=True)
        inferer = parser.get_parsed_content("inferer", instantiate=True)
        post = parser.get_parsed_content("postprocessing", instantiate=True)
    finally:
        sys.path.remove(str(root))
    # MONAI Label passes no weights_only; torch >= 2.6 then loads weights only, as here
    checkpoint = torch.load(root / "models" / "model.pt", map_location=device, weights_only=True)
    network.load_state_dict(checkpoint.get("model", checkpoint), strict=False)
    network.eval()
    data = {"image": image, "image_path": image, "device": device, "model": "swin_unetr_btcv_segmentation"}
    for t in list(pre.transforms) if isinstance(pre, Compose) else pre:
        data = t(data)
    with torch.no_grad():
        data["pred"] = inferer(data["image"][None].to(device), network)[0]
    for t in [t for t in (post.transforms if isinstance(post, Compose) else post) if not isinstance(t, SaveImaged)]:
        data = t(data)
    return data


def test_inference_as_monailabel_runs_it_gives_an_integer_map_on_the_input_grid(bundle, tmp_path):
    import nibabel as nib

    # a small CT-like volume (air, soft tissue, bone) in LPS with 4 mm voxels: one 64^3 window
    hu = np.full((40, 36, 20), -1000.0, dtype=np.float32)
    hu[8:32, 6:30, 2:18] = 40.0
    hu[18:22, 20:26, 2:18] = 700.0
    image = str(tmp_path / "scan.nii.gz")
    nib.save(nib.Nifti1Image(hu, np.diag([-4.0, -4.0, 4.0, 1.0])), image)
    data = infer_like_monailabel(bundle, image)
    pred = data["pred"]
    assert data["image_path"] == image  # MONAI Label's writer reads it afterwards
    assert not torch.is_floating_point(pred), pred.dtype
    values = np.unique(np.asarray(pred))
    assert values.min() >= 0 and values.max() <= 13
    assert tuple(pred.shape[1:]) == nib.load(image).shape


def train_like_monailabel(root, datalist: list, val_datalist: list, max_epochs: int = 1) -> None:
    """BundleTrainTask.__call__ / run_single_gpu with the request's device "cpu" and pretrained=True."""
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "train.json"))
    handlers = parser.get("train#handlers", [])
    model = str(root / "models" / "model.pt")
    loader = {"_target_": CheckpointLoader.__name__, "load_path": model, "load_dict": {"model": "$@network"}}
    handlers.insert(0, {**loader, "strict": False})
    overrides = {
        "bundle_root": str(root),
        "train#trainer#max_epochs": max_epochs,
        "train#dataset#data": datalist,
        "device": "cpu",
        "train#handlers": handlers,
        "validate#dataset#data": val_datalist,
    }
    sys.path.insert(0, str(root))
    try:
        monai.bundle.run(
            run_id="run",
            init_id=None,
            final_id=None,
            meta_file=str(root / "configs" / "metadata.json"),
            config_file=str(root / "configs" / "train.json"),
            **overrides,
        )
    finally:
        sys.path.remove(str(root))


def labelled(phantoms, n: int) -> list:
    images = sorted((phantoms / "imagesTr").iterdir())[:n]
    return [{"image": str(p), "label": str(phantoms / "labelsTr" / p.name)} for p in images]


def assert_flat_strict_model(root, before: str) -> None:
    path = root / "models" / "model.pt"
    assert md5(path) != before, "models/model.pt was not rewritten by the training"
    state = torch.load(path, weights_only=True)
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser["bundle_root"] = str(root)
    parser.get_parsed_content("network_def").load_state_dict(state, strict=True)  # flat, every tensor


@pytest.mark.slow
def test_one_epoch_training_as_monailabel_runs_it_on_one_image_writes_a_flat_model(bundle, phantoms):
    """Its default val_split 0.2 leaves no validation image for one or two labelled images (partition_dataset);
    with validation images, ValidationOrFinalModel validates after the last epoch (tests below)."""
    hook = sys.excepthook
    before = md5(bundle / "models" / "model.pt")
    train_like_monailabel(bundle, labelled(phantoms, 1), [])
    assert_flat_strict_model(bundle, before)
    assert sys.excepthook is hook  # the server keeps its own error handling
    assert not (bundle / "runs" / "train" / ".run.lock").exists()


class FakeValidator:
    def __init__(self, n: int):
        self.data_loader = list(range(n))
        self.epochs = []

    def run(self, epoch):
        self.epochs.append(epoch)


def short_run(validator, interval: int, max_epochs: int, tmp_path):
    from ignite.engine import Engine

    from scripts.training.validation import ValidationOrFinalModel

    network = torch.nn.Linear(2, 3)
    handler = ValidationOrFinalModel(validator, interval, network, str(tmp_path / "models" / "model.pt"))
    engine = Engine(lambda engine, batch: None)
    handler.attach(engine)
    engine.run([0, 1], max_epochs=max_epochs)
    return network


@pytest.mark.parametrize(
    "interval, max_epochs, expected",
    [(100, 1, [1]), (100, 50, [50]), (2, 5, [2, 4, 5]), (2, 4, [2, 4])],
    ids=["monailabel_1", "monailabel_default_50", "last_epoch_too", "no_double_at_the_end"],
)
def test_validation_runs_every_interval_and_after_the_last_epoch(tmp_path, interval, max_epochs, expected):
    validator = FakeValidator(1)
    short_run(validator, interval, max_epochs, tmp_path)
    assert validator.epochs == expected
    assert not (tmp_path / "models" / "model.pt").exists()  # the best-model saver's file, not this handler's


def test_without_validation_data_the_final_weights_become_the_model(tmp_path):
    validator = FakeValidator(0)
    network = short_run(validator, 100, 3, tmp_path)
    assert validator.epochs == []
    saved = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert saved.keys() == network.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in network.state_dict().items())


def test_the_schedule_follows_the_trainer_max_epochs_monailabel_sets():
    """MONAI Label overrides only train#trainer#max_epochs: warm-up and cosine decay must shrink with it."""
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "train.json"))
    parser["train#dataloader"] = list(range(10))  # 10 iterations per epoch
    parser["train#trainer#max_epochs"] = 1
    parser["optimizer#params"] = "$torch.nn.Linear(2, 2).parameters()"
    schedule = parser.get_parsed_content("lr_scheduler")
    assert schedule.t_total == 10
    assert schedule.warmup_steps == 0  # 50 of 5000 epochs is 1%: no warm-up in a 1-epoch run
    assert schedule.get_last_lr()[0] > 0  # the first step already trains
    parser["train#trainer#max_epochs"] = "@max_epochs"  # the command line's run: the reference schedule
    parser.parse(reset=True)
    schedule = parser.get_parsed_content("lr_scheduler")
    assert (schedule.warmup_steps, schedule.t_total) == (500, 50000)

"""Pre-training iterations and inputs: views, clipping (also under AMP), deterministic validation,
merged image lists."""

import csv
import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from scripts.errors import InputError
from scripts.pretraining.data import image_list, usable_images
from scripts.pretraining.loss import SSLLoss
from scripts.pretraining.steps import CropAverage, SSLEvalStep, SSLTrainStep
from scripts.pretraining.views import make_views

pytestmark = pytest.mark.usefixtures("seeded")


class TinySSL(nn.Module):
    """Stand-in with the SSL head's interface, fast enough for step tests."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 4, 3, padding=1)
        self.rotation = nn.Linear(4, 4)
        self.projection = nn.Linear(4, 8)
        self.out = nn.Conv3d(4, 1, 1)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        pooled = h.mean((2, 3, 4))
        return {"rotation": self.rotation(pooled), "projection": self.projection(pooled), "reconstruction": self.out(h)}


def engine(network, scaler=None, lr=1.0):
    return SimpleNamespace(
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=lr),
        loss_function=SSLLoss(),
        scaler=scaler,
        amp=scaler is not None,
        state=SimpleNamespace(device=torch.device("cpu"), iteration=3),
    )


def test_views_are_rotated_crops_masked_independently():
    x = torch.rand(3, 1, 16, 16, 16)
    inputs, k, target = make_views(x)
    assert inputs.shape == target.shape == (6, 1, 16, 16, 16) and k.shape == (6,)
    for i in range(6):  # the target is the unmasked crop, rotated by the view's own k
        assert torch.equal(target[i], x[i % 3].rot90(int(k[i]), dims=(2, 3)))
    assert not torch.equal(inputs, target)  # masked somewhere
    assert not torch.equal(inputs[:3], inputs[3:])  # the two views differ


@pytest.mark.parametrize("use_scaler", [False, True])
def test_gradient_clipping_bounds_each_update_also_under_a_grad_scaler(use_scaler):
    net = TinySSL()
    before = torch.cat([p.detach().flatten().clone() for p in net.parameters()])
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12) if use_scaler else None
    step = SSLTrainStep(max_grad_norm=1e-3)
    e = engine(net, scaler)
    out = step(e, {"image": torch.rand(2, 1, 16, 16, 16)})
    after = torch.cat([p.detach().flatten() for p in net.parameters()])
    # SGD with lr 1: the update is the clipped gradient, whatever the loss scale was
    assert 0 < (after - before).norm() <= 1e-3 * 1.001
    assert set(out["terms"]) == {"rotation", "contrastive", "reconstruction", "total", "lr"}
    assert out["image"].shape == out["masked"].shape == out["pred"].shape == (1, 1, 16, 16, 16)


def test_without_clipping_the_update_is_the_full_gradient():
    net = TinySSL()
    before = torch.cat([p.detach().flatten().clone() for p in net.parameters()])
    SSLTrainStep(max_grad_norm=None)(engine(net), {"image": torch.rand(2, 1, 16, 16, 16)})
    after = torch.cat([p.detach().flatten() for p in net.parameters()])
    assert (after - before).norm() > 1e-2


def test_validation_views_are_deterministic_and_leave_the_global_random_state_alone():
    net, batch = TinySSL(), {"image": torch.rand(4, 1, 16, 16, 16)}
    step = SSLEvalStep(seed=5)
    state = torch.random.get_rng_state()
    first, second = step(engine(net), batch), step(engine(net), batch)
    assert torch.equal(torch.random.get_rng_state(), state)
    for key in ("reconstruction_l1", "rotation_accuracy", "contrastive_top1"):
        assert first[key].shape == (8,)
        assert torch.equal(first[key], second[key])


def test_crop_average_weights_every_crop_equally():
    from ignite.engine import Engine

    batches = [torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0.0])]
    evaluator = Engine(lambda engine, batch: {"score": batch})
    CropAverage("score").attach(evaluator, "mean_score")
    assert evaluator.run(batches).metrics["mean_score"] == pytest.approx(0.75)


def write_nifti(path):
    import nibabel as nib
    import numpy as np

    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), path)


def test_image_list_merges_datalists_and_globs_once_each(tmp_path):
    for name in ("a", "b", "c"):
        write_nifti(tmp_path / f"{name}.nii.gz")
    (tmp_path / "list.json").write_text(
        json.dumps(
            {
                "training": [{"image": "a.nii.gz", "label": "ignored.nii.gz"}, {"image": "b.nii.gz"}],
                "validation": [{"image": "c.nii.gz"}],
            }
        )
    )
    items = image_list([str(tmp_path / "list.json"), str(tmp_path / "*.nii.gz")], "training")
    assert [i["image"] for i in items] == [str(tmp_path / f"{n}.nii.gz") for n in "abc"]
    assert all(set(i) == {"image"} for i in items)  # labels are not used
    assert image_list({"datalist": str(tmp_path / "list.json"), "key": "validation"}) == [
        {"image": str(tmp_path / "c.nii.gz")}
    ]


def test_image_list_names_a_source_with_no_images_or_none_that_exists(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps({"training": [{"image": "gone.nii.gz"}]}))
    with pytest.raises(InputError, match="list.json.*none of its 1 files exists, e.g. .*gone.nii.gz"):
        image_list(str(tmp_path / "list.json"))
    with pytest.raises(InputError, match="no images found"):
        image_list(str(tmp_path / "nothing" / "*.nii.gz"))


def write_broken(folder, count):
    """``count`` unusable volumes: truncated, empty, NaN-filled, 2-D, in turn."""
    import nibabel as nib
    import numpy as np

    paths = []
    for i in range(count):
        path = folder / f"broken_{i}.nii.gz"
        kind = i % 4
        if kind == 0:
            write_nifti(path)
            path.write_bytes(path.read_bytes()[:40])
        elif kind == 1:
            path.write_bytes(b"")
        elif kind == 2:
            nib.save(nib.Nifti1Image(np.full((4, 4, 4), np.nan, np.float32), np.eye(4)), path)
        else:
            nib.save(nib.Nifti1Image(np.zeros((4, 4), np.int16), np.eye(4)), path)
        paths.append(str(path))
    return paths


def test_unusable_volumes_are_skipped_with_a_running_count_and_listed(tmp_path, caplog):
    good = []
    for i in range(8):
        write_nifti(tmp_path / f"ct_{i}.nii.gz")
        good.append(str(tmp_path / f"ct_{i}.nii.gz"))
    broken = write_broken(tmp_path, 4)
    items = [{"image": p} for p in good[:4] + broken + good[4:]]
    with caplog.at_level("WARNING"):
        kept = usable_images(items, max_skipped_fraction=0.4, num_threads=2, report=str(tmp_path / "skipped.csv"))
    assert kept == [{"image": p} for p in good]
    skips = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped")]
    assert [m.rsplit("(", 1)[1] for m in skips] == [f"{k} skipped of {4 + k} read, 12 listed)" for k in range(1, 5)]
    assert "unreadable or corrupt" in skips[0] and "file is empty" in skips[1]
    assert "non-finite voxels" in skips[2] and "2-D image" in skips[3]
    assert "pre-training on 8 of 12 volumes: 4 skipped" in caplog.text
    with open(tmp_path / "skipped.csv") as f:
        assert [row["image"] for row in csv.DictReader(f)] == broken


def test_too_many_unusable_volumes_stop_the_run_at_once(tmp_path):
    write_nifti(tmp_path / "ct.nii.gz")
    items = [{"image": p} for p in write_broken(tmp_path, 2) + [str(tmp_path / "ct.nii.gz")] * 7]
    with pytest.raises(
        InputError, match=r"2 of 9 pre-training volumes are unusable \(more than max_skipped_fraction=0.2"
    ):
        usable_images(items, max_skipped_fraction=0.2)
    assert len(usable_images(items, max_skipped_fraction=0.25)) == 7


def test_links_to_nothing_and_folders_named_like_images_are_skipped_not_fatal(tmp_path, phantoms):
    good = [tmp_path / f"good_{i}.nii.gz" for i in range(8)]
    for path in good:
        path.symlink_to(phantoms / "imagesTr" / "phantom_000.nii.gz")
    (tmp_path / "dangling.nii.gz").symlink_to(tmp_path / "nowhere.nii.gz")
    (tmp_path / "loop_a.nii.gz").symlink_to(tmp_path / "loop_b.nii.gz")
    (tmp_path / "loop_b.nii.gz").symlink_to(tmp_path / "loop_a.nii.gz")
    (tmp_path / "folder.nii.gz").mkdir()
    items = image_list(str(tmp_path / "*.nii.gz"))
    assert len(items) == 12
    kept = usable_images(items, max_skipped_fraction=0.5, num_threads=1, report=str(tmp_path / "skipped.csv"))
    assert sorted(item["image"] for item in kept) == sorted(str(p) for p in good)
    with open(tmp_path / "skipped.csv") as f:
        problems = {row["image"].rsplit("/", 1)[1]: row["problem"] for row in csv.DictReader(f)}
    assert "broken or looping symbolic link" in problems["dangling.nii.gz"]
    assert "broken or looping symbolic link" in problems["loop_a.nii.gz"] and "loop_b.nii.gz" in problems
    assert "is a folder" in problems["folder.nii.gz"]


def exploding_transform():
    """A deterministic transform that fails for images named 'bad*', as an unforeseen loading error would."""
    from monai.transforms import Compose, Lambdad

    def load(name):
        if name.startswith("bad"):
            raise MemoryError(f"cannot allocate for {name}")
        return torch.full((1, 2, 2, 2), float(ord(name[0])))

    return Compose([Lambdad("image", load)])


@pytest.mark.parametrize("cache_rate", [1.0, 0.0])
def test_a_volume_failing_to_load_is_skipped_counted_and_replaced_by_the_next(tmp_path, caplog, cache_rate):
    from scripts.pretraining.data import SkippingCacheDataset

    data = [{"image": "a"}, {"image": "bad_1"}, {"image": "c"}, {"image": "d"}]
    report = tmp_path / "skipped.csv"
    dataset = SkippingCacheDataset(
        data, exploding_transform(), cache_rate=cache_rate, num_workers=1, max_skipped_fraction=0.5, report=str(report)
    )
    drawn = [float(dataset[i]["image"][0, 0, 0, 0]) for i in range(4)]
    assert drawn == [ord("a"), ord("c"), ord("c"), ord("d")]  # the failed one is replaced by the next usable one
    assert "skipped image bad_1: failed to load (MemoryError: cannot allocate for bad_1)" in caplog.text
    with open(report) as f:
        assert [row["image"] for row in csv.DictReader(f)] == ["bad_1"]


def test_too_many_volumes_failing_to_load_stop_the_run():
    from scripts.pretraining.data import SkippingCacheDataset

    data = [{"image": "a"}, {"image": "bad_1"}, {"image": "bad_2"}]
    with pytest.raises(InputError, match=r"2 of 3 pre-training volumes failed to load \(more than max_skipped"):
        SkippingCacheDataset(data, exploding_transform(), cache_rate=1.0, num_workers=1, max_skipped_fraction=0.5)

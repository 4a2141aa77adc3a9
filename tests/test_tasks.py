"""Task presets (configs/tasks/): every MSD task and BTCV builds, reads its inputs, and runs its workflows."""

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, verify_metadata
from monai.data import MetaTensor

from scripts.errors import ConfigError, InputError
from scripts.inputs import Geometry, check_case, checked_datalist, task_mismatch
from scripts.tasks.presets import preset_names, task_metadata, write_task_bundle_configs
from scripts.tasks.splits import Split, write_splits
from scripts.tools.task_phantoms import generate_case, write_task_phantoms
from scripts.transforms import LabelToRegionsd

from conftest import ROOT, SHARED, TORCH_WINDOWS, configs

PRESETS = preset_names()
MSD = {  # the MSD dataset.json channels and label names every preset must carry
    "task01_brain_tumour": (["FLAIR", "T1w", "t1gd", "T2w"], ["tumour core", "whole tumour", "enhancing tumour"]),
    "task02_heart": (["MRI"], ["background", "left atrium"]),
    "task03_liver": (["CT"], ["background", "liver", "cancer"]),
    "task04_hippocampus": (["MRI"], ["background", "anterior", "posterior"]),
    "task05_prostate": (["T2", "ADC"], ["background", "peripheral zone", "transition zone"]),
    "task06_lung": (["CT"], ["background", "cancer"]),
    "task07_pancreas": (["CT"], ["background", "pancreas", "cancer"]),
    "task08_hepatic_vessel": (["CT"], ["background", "vessel", "tumour"]),
    "task09_spleen": (["CT"], ["background", "spleen"]),
    "task10_colon": (["CT"], ["background", "colon cancer primaries"]),
}
# CPU-sized run settings: the smallest crop Swin UNETR trains on (its bottleneck needs > 1 voxel)
TINY = {"feature_size": 12, "roi_size": [64, 32, 32], "sw_batch_size": 2, "num_workers": 0}
TRAIN = {**TINY, "num_samples": 1, "cache_rate": 1.0, "class_weights": None, "max_epochs": 1, "val_interval": 1}


LISTS = ("training", "validation", "test")


def parsed(task, *base, **overrides):
    parser = ConfigParser()
    parser.read_config(configs(*base, f"tasks/{task}.json"))
    parser.update({"bundle_root": str(ROOT), "feature_size": 12, **overrides})
    return parser


def test_there_is_a_preset_for_btcv_and_each_of_the_ten_msd_tasks():
    assert PRESETS == ["btcv", *sorted(MSD)]


@pytest.fixture(scope="module")
def data_by_channels(tmp_path_factory):
    """A one-case dataset per input channel count (1: CT, 2: prostate MRI, 4: brain MRI), shared by the presets
    of that count: its datalist does not declare a task (no ``labels`` / ``modality``), as a hand-made list."""
    out = {}
    for channels, phantom in ((1, "spleen"), (2, "prostate"), (4, "brain_tumour")):
        out[channels] = tmp_path_factory.mktemp(phantom)
        write_task_phantoms(str(out[channels]), phantom, num_train=1, num_val=1, num_test=1)
        datalist = json.loads((out[channels] / "dataset.json").read_text())
        (out[channels] / "dataset.json").write_text(json.dumps({k: datalist[k] for k in LISTS if k in datalist}))
    return out


@pytest.mark.slow  # about 2 s a preset
@pytest.mark.parametrize("task", PRESETS)
def test_every_preset_builds_its_network_and_passes_the_workflow_property_checks(task, tmp_path, data_by_channels):
    channels, classes = MSD.get(task, (["CT"], None))
    data = data_by_channels[len(channels)]
    common = {"bundle_root": str(ROOT), "output_dir": str(tmp_path / "out"), "feature_size": 12, "num_workers": 0}
    train = ConfigWorkflow(
        config_file=configs("train.json", f"tasks/{task}.json"),
        workflow_type="train",
        dataset_dir=str(data),
        cache_rate=0.0,
        **common,
    )
    train.initialize()
    assert train.check_properties() == [], task
    net = train.parser.get_parsed_content("network")
    torch.save(net.state_dict(), tmp_path / "model.pt")
    train.finalize()
    assert net.swinViT.patch_embed.proj.in_channels == len(channels) == train.parser.get("in_channels")
    assert net.out.conv.conv.out_channels == train.parser.get("out_channels") == len(train.parser.get("class_names"))
    assert train.parser.get("channel_names") == channels and all(s % 32 == 0 for s in train.parser.get("roi_size"))
    if classes:
        assert train.parser.get("class_names") == classes
    infer = ConfigWorkflow(
        config_file=configs("inference.json", f"tasks/{task}.json"),
        workflow_type="infer",
        dataset_dir=str(data / "imagesTs"),
        ckpt_dir=str(tmp_path),
        **common,
    )
    infer.initialize()  # loads model.pt: the inference network has the fine-tuning network's shapes
    assert infer.check_properties() == [], task
    for key in ("in_channels", "out_channels", "pixdim", "roi_size", "intensity", "multi_label", "label_regions"):
        assert infer.parser.get(key) == train.parser.get(key), key


def test_ct_presets_window_hounsfield_units_and_mri_presets_z_score_each_channel_over_non_zero_voxels():
    spleen = parsed("task09_spleen", "train.json").get_parsed_content("intensity")
    hu = {"image": torch.tensor([[-1000.0, -57.0, 53.5, 164.0, 2000.0]])}
    assert torch.allclose(torch.as_tensor(spleen(hu)["image"]), torch.tensor([[0.0, 0.0, 0.5, 1.0, 1.0]]))
    prostate = parsed("task05_prostate", "inference.json").get_parsed_content("intensity")
    image = torch.tensor([[0.0, 10.0, 20.0, 30.0], [0.0, 1000.0, 3000.0, 5000.0]])
    out = torch.as_tensor(prostate({"image": image})["image"])
    assert torch.all(out[:, 0] == 0)  # background stays zero: the foreground crop keeps the brain
    assert torch.allclose(out[:, 1:].mean(1), torch.zeros(2), atol=1e-5)
    assert torch.allclose(out[:, 1:].std(1, unbiased=False), torch.ones(2), atol=1e-4)
    fg = parsed("task05_prostate", "train.json").get_parsed_content("foreground")
    assert fg(torch.tensor([-1.0, 0.0, 2.0])).tolist() == [True, False, True]  # z-scores below the mean count


def test_region_preset_trains_and_scores_sigmoid_channels_and_multi_class_presets_softmax():
    brain = parsed("task01_brain_tumour", "train.json", device="$torch.device('cpu')")
    loss = brain.get_parsed_content("loss")
    assert loss.dice.sigmoid and not loss.dice.softmax and not loss.dice.to_onehot_y
    post = brain.get_parsed_content("validate#postprocessing")
    logits = torch.tensor([3.0, 3.0, -3.0]).reshape(3, 1, 1, 1)  # core and whole tumour, not enhancing
    out = post({"pred": logits, "label": torch.tensor([1.0, 1.0, 0.0]).reshape(3, 1, 1, 1)})
    assert out["pred"].flatten().tolist() == [1.0, 1.0, 0.0]  # overlapping channels, no argmax
    assert brain.get_parsed_content("validate#key_metric#val_mean_dice#include_background") is True
    spleen = parsed("task09_spleen", "train.json", device="$torch.device('cpu')")
    loss = spleen.get_parsed_content("loss")
    assert loss.dice.softmax and loss.dice.to_onehot_y and not loss.dice.sigmoid
    out = spleen.get_parsed_content("validate#postprocessing")(
        {"pred": torch.tensor([1.0, 2.0]).reshape(2, 1, 1, 1), "label": torch.ones(1, 1, 1, 1)}
    )
    assert out["pred"].flatten().tolist() == [0.0, 1.0] and out["label"].flatten().tolist() == [0.0, 1.0]


def test_brain_tumour_labels_become_nested_regions_with_msd_ids():
    label = MetaTensor(
        torch.tensor([0, 1, 2, 3]).reshape(1, 4, 1, 1).float(), affine=torch.diag(torch.tensor([2.0] * 3 + [1.0]))
    )
    regions = parsed("task01_brain_tumour", "train.json").get("label_regions")
    out = LabelToRegionsd("label", regions)({"label": label})["label"]
    # tumour core = non-enhancing (2) + enhancing (3); whole tumour adds edema (1); enhancing = 3 only
    assert out[:, :, 0, 0].tolist() == [[0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 0, 1]]
    assert torch.equal(out.affine, label.affine)  # HD95 in mm reads the spacing from it
    assert LabelToRegionsd("label", None)({"label": label})["label"] is label  # multi-class tasks: unchanged
    assert LabelToRegionsd("label", regions)({"image": label}) == {"image": label}  # inference: no label


def test_multi_channel_images_are_read_as_their_task_expects(tmp_path):
    image, label, affine = generate_case("brain_tumour", 0)
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "img.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), tmp_path / "lbl.nii.gz")
    item = {"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lbl.nii.gz")}
    warnings = []
    check_case(item, ("image", "label"), 4, warnings, Geometry(channels=4, modality="MRI"))
    assert warnings == []  # MRI is not warned about for not looking like CT
    with pytest.raises(InputError, match=r"img.nii.gz: 4-D image of shape \(40, 30, 28, 4\) \(4 volumes or channels\)"):
        check_case(item, ("image",), geometry=Geometry())
    with pytest.raises(InputError, match=r"expected 2 channels"):
        check_case(item, ("image",), geometry=Geometry(channels=2, modality="MRI"))
    with pytest.raises(InputError, match=r"values \[3\] outside the task's classes 0..2"):
        check_case(item, ("image", "label"), 3, geometry=Geometry(channels=4, modality="MRI"))


def test_a_blank_volume_or_sequence_is_refused_up_front_naming_the_file(tmp_path):
    """A constant channel would stop training in the crop sampler (no foreground) or divide by a zero spread."""
    image, label, affine = generate_case("brain_tumour", 0)
    image[..., 2] = 0  # an all-zero T1gd, as a failed export leaves it
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "blank_t1gd.nii.gz")
    with pytest.raises(
        InputError, match=r"image .*blank_t1gd.nii.gz: constant channel\(s\) \[2\] \(channel 2: every voxel 0\)"
    ):
        check_case({"image": str(tmp_path / "blank_t1gd.nii.gz")}, geometry=Geometry(channels=4, modality="MRI"))
    nib.save(nib.Nifti1Image(np.full((20, 20, 10), 7.0, np.float32), affine), tmp_path / "flat.nii.gz")
    with pytest.raises(InputError, match=r"flat.nii.gz: constant image \(every voxel 7\)"):
        check_case({"image": str(tmp_path / "flat.nii.gz")}, geometry=Geometry(modality="MRI"))
    image[..., 2] = 1 + image[..., 1]  # any spread at all is usable
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "ok.nii.gz")
    check_case({"image": str(tmp_path / "ok.nii.gz")}, geometry=Geometry(channels=4, modality="MRI"))


def test_check_data_takes_the_tasks_channels_and_modality(tmp_path, capsys):
    from scripts.tools.check_data import check

    write_task_phantoms(str(tmp_path), "prostate", num_train=1, num_val=0, num_test=0)
    args = {"datalist": str(tmp_path / "dataset.json"), "label_values": 3, "labels": True}
    assert check(**args, channels=2, modality="MRI") == 0
    assert check(**args) == 0  # by default the datalist's own modality: T2 and ADC, two MRI channels
    capsys.readouterr()
    assert check(**args, channels=1, modality="CT") == 1
    assert "(2 volumes or channels), expected a single 3-D volume" in capsys.readouterr().out


def test_k_fold_splits_partition_the_msd_training_list_and_label_fractions_are_nested(tmp_path):
    entries = [{"image": f"imagesTr/c{i}.nii.gz", "label": f"labelsTr/c{i}.nii.gz"} for i in range(20)]
    folds = [Split(fold, 5, seed=3).select(entries, "validation") for fold in range(5)]
    assert sorted(e["image"] for f in folds for e in f) == sorted(e["image"] for e in entries)  # each case once
    assert [len(f) for f in folds] == [4] * 5
    train0 = Split(0, 5, seed=3).select(entries, "training")
    assert len(train0) == 16 and not {e["image"] for e in train0} & {e["image"] for e in folds[0]}
    assert Split(0, 5, seed=3).select(entries, "validation") == folds[0]  # seeded: the same on every run
    assert Split(0, 5, seed=4).select(entries, "validation") != folds[0]
    subsets = [{e["image"] for e in Split(0, 5, f, seed=3).select(entries, "training")} for f in (0.1, 0.25, 0.5, 1.0)]
    assert [len(s) for s in subsets] == [2, 4, 8, 16]
    assert subsets[0] < subsets[1] < subsets[2] < subsets[3]  # few-label runs compare nested subsets
    assert Split(None, fraction=0.5).select(entries, "validation") == entries  # own lists: validation kept
    with pytest.raises(InputError, match="fold 5 of num_folds 5"):
        Split(5, 5)
    with pytest.raises(InputError, match="label_fraction 0"):
        Split(fraction=0)
    # the command writes the same cases the workflows select on the fly
    data = tmp_path / "dataset.json"
    data.write_text(json.dumps({"training": entries, "test": ["imagesTs/t.nii.gz"]}))
    paths = write_splits(str(data), str(tmp_path / "splits"), fold=0, num_folds=5, seed=3)
    assert [p.rsplit("/", 1)[1] for p in paths] == [f"dataset_fold0_frac{p}.json" for p in (10, 25, 50, 100)]
    written = json.loads(open(paths[1]).read())
    assert {e["image"] for e in written["training"]} == subsets[1] and written["validation"] == folds[0]
    assert written["test"] == ["imagesTs/t.nii.gz"] and written["split"]["label_fraction"] == 0.25


def test_workflows_read_a_fold_of_the_msd_training_list(tmp_path):
    write_task_phantoms(str(tmp_path), "spleen", num_train=4, num_val=0, num_test=0)
    data = json.loads((tmp_path / "dataset.json").read_text())
    del data["validation"]  # MSD's dataset.json has no validation list
    (tmp_path / "dataset.json").write_text(json.dumps(data))
    split, geometry, names = Split(1, 2, seed=0), Geometry(), ["background", "spleen"]
    args = (str(tmp_path / "dataset.json"),)
    train = checked_datalist(*args, "training", str(tmp_path), label_names=names, geometry=geometry, split=split)
    val = checked_datalist(*args, "validation", str(tmp_path), label_names=names, geometry=geometry, split=split)
    assert len(train) == len(val) == 2 and not {t["image"] for t in train} & {v["image"] for v in val}
    parser = parsed("task09_spleen", "train.json", fold=1, num_folds=2, dataset_dir=str(tmp_path))
    assert [v["image"] for v in parser.get_parsed_content("validate#data")] == [v["image"] for v in val]


@pytest.mark.parametrize("task", PRESETS)
def test_each_task_has_metadata_naming_its_channels_and_classes_for_monai_label(task, tmp_path):
    meta = task_metadata(task)
    preset = json.loads((ROOT / "configs" / "tasks" / f"{task}.json").read_text())
    image, pred = meta["network_data_format"]["inputs"]["image"], meta["network_data_format"]["outputs"]["pred"]
    assert image["channel_def"] == {str(i): n for i, n in enumerate(preset["channel_names"])}
    assert image["num_channels"] == preset["in_channels"] and image["modality"] == preset["modality"]
    assert pred["channel_def"] == {str(i): n for i, n in enumerate(preset["class_names"])}
    assert pred["num_channels"] == preset["out_channels"]
    if (SHARED / "schema").is_dir():
        (tmp_path / "meta.json").write_text(json.dumps(meta))
        verify_metadata(
            meta_file=str(tmp_path / "meta.json"), filepath=str(SHARED / "schema" / "meta_schema_20240725.json")
        )


def test_a_task_bundle_for_monai_label_holds_the_merged_inference_config_and_the_task_metadata(tmp_path):
    inference, meta = write_task_bundle_configs("task05_prostate", str(tmp_path))
    parser = ConfigParser()
    parser.read_config(inference)  # alone, as MONAI Label reads it
    parser.update({"bundle_root": str(ROOT), "feature_size": 12})
    assert parser.get_parsed_content("network_def").swinViT.patch_embed.proj.in_channels == 2
    assert parser.get("pixdim") == [0.62, 0.62, 3.6] and parser.get("intensity#_target_") == "NormalizeIntensityd"
    labels = json.loads(open(meta).read())["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert labels == {"0": "background", "1": "peripheral zone", "2": "transition zone"}


@pytest.mark.parametrize("task, channels", [("task01_brain_tumour", 4), ("task05_prostate", 2)])
def test_a_one_channel_pretrained_encoder_starts_a_multi_channel_task(task, channels, tmp_path):
    from monai.networks.nets import SwinUNETR

    torch.manual_seed(0)
    one = SwinUNETR(in_channels=1, out_channels=2, feature_size=12).state_dict()
    torch.save({k: v for k, v in one.items() if k.startswith("swinViT.")}, tmp_path / "ssl.pt")
    parser = parsed(task, "train.json", pretrained_encoder=str(tmp_path / "ssl.pt"), device="$torch.device('cpu')")
    assert parser.get_parsed_content("load_pretrained") == len([k for k in one if k.startswith("swinViT.")])
    net = parser.get_parsed_content("network")
    kernel = net.swinViT.patch_embed.proj.weight.detach()
    # the only channel-dependent tensor: the one-channel kernel spread evenly over the task's channels
    assert torch.allclose(kernel, one["swinViT.patch_embed.proj.weight"].repeat(1, channels, 1, 1, 1) / channels)
    name = "swinViT.layers1.0.blocks.0.attn.qkv.weight"
    assert torch.equal(net.state_dict()[name], one[name])


def read_table(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def run(kind, names, **overrides):
    wf = ConfigWorkflow(config_file=configs(*names), workflow_type=kind, bundle_root=str(ROOT), **overrides)
    wf.initialize()
    wf.run()
    wf.finalize()
    return wf


def fine_tune_evaluate_segment(tmp_path, phantom, task, **train_overrides):
    """One fine-tuning iteration (with its validation, which saves model.pt), evaluation, inference."""
    data = tmp_path / "data"
    write_task_phantoms(str(data), phantom, num_train=1, num_val=1, num_test=1, seed=2)
    common = {"dataset_dir": str(data), "ckpt_dir": str(tmp_path / "models")}
    run(
        "train",
        ["train.json", f"tasks/{task}.json"],
        output_dir=str(tmp_path / "runs"),
        **common,
        **TRAIN,
        **train_overrides,
    )
    run(
        "eval",
        ["train.json", "evaluate.json", f"tasks/{task}.json"],
        output_dir=str(tmp_path / "eval"),
        **common,
        **TINY,
        **TORCH_WINDOWS,
    )
    datalist = str(data / "dataset.json")
    run(
        "infer",
        ["inference.json", f"tasks/{task}.json"],
        output_dir=str(tmp_path / "inf"),
        datalist=datalist,
        **common,
        **TINY,
        **TORCH_WINDOWS,
    )
    name = f"{phantom}_002"
    image = nib.load(data / "imagesTs" / f"{name}.nii.gz")
    seg = nib.load(tmp_path / "inf" / f"{name}_seg.nii.gz")
    assert np.allclose(seg.affine, image.affine, atol=1e-4) and seg.get_data_dtype() == np.uint8
    label = nib.load(data / "labelsTr" / f"{phantom}_001.nii.gz")
    evaluated = nib.load(tmp_path / "eval" / "predictions" / f"{phantom}_001_seg.nii.gz")
    assert np.allclose(evaluated.affine, label.affine, atol=1e-4)  # scored on the label's own grid
    tables = {m: read_table(tmp_path / "eval" / f"{m}_per_case.csv") for m in ("val_mean_dice", "val_hd95_mm")}
    return image, seg, evaluated, label, tables


@pytest.mark.slow
def test_brain_tumour_regions_from_a_one_channel_pretrained_encoder(tmp_path):
    torch.manual_seed(0)
    from monai.networks.nets import SwinUNETR

    one = SwinUNETR(in_channels=1, out_channels=2, feature_size=12).state_dict()
    torch.save({k: v for k, v in one.items() if k.startswith("swinViT.")}, tmp_path / "ssl.pt")
    image, seg, evaluated, label, tables = fine_tune_evaluate_segment(
        tmp_path, "brain_tumour", "task01_brain_tumour", pretrained_encoder=str(tmp_path / "ssl.pt")
    )
    # three sigmoid regions per voxel on the input grid, written as a 4-D file like MSD's images
    assert seg.shape == image.shape[:3] + (3,) and set(np.unique(np.asarray(seg.dataobj))) <= {0, 1}
    assert evaluated.shape == label.shape + (3,)
    for rows in tables.values():
        assert list(rows[0]) == ["case", "tumour core", "whole tumour", "enhancing tumour", "mean"]
        assert [r["case"] for r in rows] == ["brain_tumour_001.nii.gz", "mean"]
    assert all(0 <= float(tables["val_mean_dice"][0][c]) <= 1 for c in ("tumour core", "whole tumour"))
    assert float(tables["val_hd95_mm"][0]["whole tumour"]) > 0


@pytest.mark.slow
def test_two_channel_prostate_mri_multi_class(tmp_path):
    image, seg, evaluated, label, tables = fine_tune_evaluate_segment(tmp_path, "prostate", "task05_prostate")
    assert image.shape[3] == 2 and seg.shape == image.shape[:3]  # one label map for the two input channels
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2} and evaluated.shape == label.shape
    for rows in tables.values():
        assert list(rows[0]) == ["case", "peripheral zone", "transition zone", "mean"]


@pytest.mark.slow
def test_spleen_ct_multi_class(tmp_path):
    image, seg, evaluated, label, tables = fine_tune_evaluate_segment(tmp_path, "spleen", "task09_spleen")
    assert seg.shape == image.shape and evaluated.shape == label.shape
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1}
    dice = tables["val_mean_dice"]
    assert list(dice[0]) == ["case", "spleen", "mean"] and 0 <= float(dice[0]["spleen"]) <= 1


@pytest.mark.parametrize(
    "task, preset, modality, declared, fits",
    [
        ("spleen", "btcv", None, "2 label values (background, spleen) but the config segments 14", "task06_lung"),
        ("brain_tumour", "btcv", None, "4 input channels (FLAIR, T1w, t1gd, T2w) but", "task01_brain_tumour"),
        ("spleen", "task09_spleen", {"0": "MRI"}, "modality MRI but the config normalises CT", "task02_heart"),
    ],
)
def test_fine_tuning_refuses_a_datalist_of_another_task_and_names_the_presets(
    tmp_path, task, preset, modality, declared, fits
):
    """The routing mistake: an MSD task's dataset.json with train.json alone trains a 14-class BTCV model with the
    CT window. The datalist's own labels / modality say which task it is: refused before any file is read."""
    write_task_phantoms(str(tmp_path), task, num_train=2, num_val=1, num_test=0)
    if modality:
        data = json.loads((tmp_path / "dataset.json").read_text())
        (tmp_path / "dataset.json").write_text(json.dumps({**data, "modality": modality}))
    parser = parsed(preset, "train.json", dataset_dir=str(tmp_path), datalist=str(tmp_path / "dataset.json"))
    with pytest.raises(RuntimeError) as error:  # MONAI wraps what a config expression raises
        parser.get_parsed_content("train#data")
    assert isinstance(error.value.__cause__, ConfigError), error.value
    message = str(error.value.__cause__)
    assert declared in message and f"presets that fit: {fits}" in message


def test_btcvs_own_datalist_with_abbreviated_organ_names_is_accepted(tmp_path):
    """BTCV's dataset_0.json names its labels rkid, lkid, ...: the counts decide, not the names."""
    names = ["background", "spleen", "rkid", "lkid", "gall", "eso", "liver", "sto", "aorta", "IVC", "veins"]
    labels = {str(i): name for i, name in enumerate([*names, "pancreas", "rad", "lad"])}
    (tmp_path / "dataset_0.json").write_text(json.dumps({"labels": labels, "modality": {"0": "CT"}}))
    config_names = parsed("btcv", "train.json").get_parsed_content("label_names")
    assert task_mismatch(str(tmp_path / "dataset_0.json"), config_names, Geometry(channels=1, modality="CT")) is None


@pytest.mark.parametrize(
    "task, preset",
    [("spleen", "task09_spleen"), ("brain_tumour", "task01_brain_tumour"), ("prostate", "task05_prostate")],
)
def test_a_datalist_of_the_presets_own_task_is_accepted(tmp_path, task, preset):
    write_task_phantoms(str(tmp_path), task, num_train=2, num_val=1, num_test=0)
    parser = parsed(preset, "train.json", dataset_dir=str(tmp_path), datalist=str(tmp_path / "dataset.json"))
    assert len(parser.get_parsed_content("train#data")) == 2


@pytest.mark.parametrize("task", sorted(p.stem for p in (ROOT / "configs" / "tasks").glob("*.json")))
def test_every_task_preset_computes_its_loss_with_the_cpu_overlay(task):
    """configs/small.json's class weights are BTCV's 14: other tasks train unweighted instead of failing."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([*configs("train.json", "small.json"), str(ROOT / "configs" / "tasks" / f"{task}.json")])
    parser.update({"bundle_root": str(ROOT), "device": "$torch.device('cpu')"})
    loss, channels = parser.get_parsed_content("loss"), parser.get_parsed_content("out_channels")
    pred = torch.rand(1, channels, 8, 8, 8)
    multi = parser.get_parsed_content("multi_label")
    label = (torch.rand(1, channels, 8, 8, 8) > 0.5).float() if multi else torch.randint(0, channels, (1, 1, 8, 8, 8))
    assert torch.isfinite(loss(pred, label))

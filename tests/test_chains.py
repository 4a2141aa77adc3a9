"""The fine-tuning, evaluation and inference chains keep what a segmentation needs, for every task preset.

Each test reads a chain from the parsed configs (``tests/chains.py``) and runs it on a tiny case built
from its own label, so a config defect that leaves every workflow running (an augmentation that moves
the image without its label, a label interpolated or windowed, inference preprocessing that differs
from training, a score or loss that is not the documented one, a sampler or schedule off) fails here,
in the fast tier, with a message naming the chain and the broken property.
"""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch
from chains import (
    PRESETS,
    ROOT,
    TINY,
    StandIn,
    config_files,
    decode_classes,
    flat,
    force_random,
    label_table,
    label_values_problem,
    levels_of,
    messages,
    misalignment,
    name,
    parse,
    raw_preset,
    run_steps,
    sampler_case_arrays,
    stated,
    write_case,
    write_dataset,
)
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.inferers import SlidingWindowInferer
from test_method_table import table_rows

from scripts.transforms import LabelToRegionsd

BTCV_TABLE = "**Fine-tuning on BTCV**"
EVERY = pytest.mark.parametrize("preset", PRESETS, ids=name)
MULTI_CLASS = [p for p in PRESETS if not raw_preset(p).get("multi_label")]


def documented(ident: str):
    """A default as the docs' BTCV table states it."""
    return table_rows(BTCV_TABLE)[ident]


def regions_of(preset):
    return label_table(preset)[1]


def deterministic(parser, workflow: str) -> list:
    """The deterministic image chain of a workflow: what validation and inference apply to a volume."""
    return flat(parser.get_parsed_content("preprocessing" if workflow == "inference" else "validate#preprocessing"))


def apply_all(transforms, data, seed=0):
    """The output of ``transforms`` on ``data`` (lists of crops item by item, as ``Compose``)."""
    out, _ = run_steps(transforms, dict(data), seed=seed)
    return out


# ---------------------------------------------------------------- 1. image and label stay together
def test_the_alignment_check_sees_an_image_flipped_without_its_label(tmp_path):
    """The property check itself: a flip of the image alone, along any axis, is reported."""
    from monai.transforms import Compose, EnsureChannelFirstd, Flipd, LoadImaged

    case = write_case(tmp_path, "case", None)
    n, regions = label_table(None)
    loaded = Compose([LoadImaged(["image", "label"], image_only=True), EnsureChannelFirstd(["image", "label"])])(case)
    assert misalignment(loaded["image"], loaded["label"], regions, n) is None
    for axis in range(3):
        flipped = Flipd("image", spatial_axis=axis)(dict(loaded))
        assert misalignment(flipped["image"], flipped["label"], regions, n), f"flip along axis {axis} not seen"
        turned = torch.rot90(loaded["image"], 1, dims=[1 + axis, 1 + (axis + 1) % 3])
        if turned.shape == loaded["image"].shape:
            assert misalignment(turned, loaded["label"], regions, n)


@EVERY
def test_train_chain_moves_image_and_label_together_through_every_transform(preset, tmp_path):
    """Every random transform forced to fire (probability 1, seeded); checked after each step."""
    case = write_case(tmp_path, "case", preset, ratio=0.6)
    transforms = flat(parse("train", preset).get_parsed_content("train#preprocessing"))
    force_random(transforms)
    n, regions = label_table(preset)
    for seed in (0, 1):
        _, failure = run_steps(
            transforms, dict(case), seed=seed, check=lambda d: misalignment(d["image"], d["label"], regions, n)
        )
        assert failure is None, (
            f"train chain ({name(preset)}): image and label no longer match after {failure[0]}: {failure[1]}"
        )


# ---------------------------------------------------------------- 2. labels stay labels
@EVERY
@pytest.mark.parametrize("chain", ["train#preprocessing", "validate#preprocessing"])
def test_labels_hold_only_values_of_the_label_table_after_every_step(preset, chain, tmp_path):
    case = write_case(tmp_path, "case", preset, ratio=0.6)
    transforms = flat(parse("train", preset).get_parsed_content(chain))
    force_random(transforms)
    n, regions = label_table(preset)
    out, failure = run_steps(transforms, dict(case), check=lambda d: label_values_problem(d["label"], regions, n))
    assert failure is None, f"{chain} ({name(preset)}): labels are no longer labels after {failure[0]}: {failure[1]}"
    channels = {tuple(d["label"].shape)[0] for d in (out if isinstance(out, list) else [out])}
    assert channels == {len(regions) if regions else 1}, f"{chain} ({name(preset)}): label channels {channels}"


@EVERY
def test_evaluation_scores_against_the_label_file_itself(preset, tmp_path):
    """Evaluation resamples only the image: the label reaches the metric on its own grid, values unchanged."""
    case = write_case(tmp_path, "case", preset, ratio=0.6)
    out = apply_all(deterministic(parse("evaluate", preset), "evaluate"), case)
    raw = np.asarray(nib.load(case["label"]).dataobj)
    n, regions = label_table(preset)
    expected = torch.as_tensor(raw)[None]
    if regions:
        expected = LabelToRegionsd("label", regions)({"label": expected})["label"]
    assert tuple(out["label"].shape) == tuple(expected.shape) and torch.equal(
        torch.as_tensor(out["label"]).float(), expected.float()
    ), f"evaluate chain ({name(preset)}): the label was changed before scoring (it must stay on its own grid)"


@EVERY
@pytest.mark.parametrize("workflow", ["train", "inference"])
def test_the_image_is_windowed_or_normalised_as_the_task_states(preset, workflow, tmp_path):
    """CT: HU window of the docs' task table to [0, 1], clipped; MRI: z-score per channel over non-zero voxels."""
    case = write_case(tmp_path, "case", preset)
    data = case if workflow == "train" else {"image": case["image"]}
    out = apply_all(deterministic(parse(workflow, preset), workflow), data)
    image, task = torch.as_tensor(out["image"]).float(), stated(preset)
    where = f"{workflow} chain ({name(preset)})"
    if task["window"]:
        a_min, a_max = task["window"]
        n, _ = label_table(preset)
        levels = a_min + (a_max - a_min) * (np.arange(n) + 1) / (n + 1)
        expected = sorted(float(v) for v in np.clip((levels - a_min) / (a_max - a_min), 0, 1))
        assert float(image.min()) >= 0 and float(image.max()) == pytest.approx(1.0), (
            f"{where}: intensities not windowed and clipped to [0, 1] (range {float(image.min())}, "
            f"{float(image.max())}; bone must clip to 1)"
        )
        seen = torch.unique((image * 1e4).round() / 1e4).tolist()
        missing = [v for v in expected if min(abs(v - s) for s in seen) > 1e-3]
        assert not missing, f"{where}: class intensities {missing} of the HU window {task['window']} are missing"
    else:
        for ch in range(image.shape[0]):
            assert (image[ch] == 0).any(), (
                f"{where}: channel {ch} is not z-scored over its non-zero voxels: air inside the body's box is not 0"
            )
            x = image[ch][image[ch] != 0]
            assert abs(float(x.mean())) < 1e-3 and abs(float(x.std(unbiased=False)) - 1) < 1e-2, (
                f"{where}: channel {ch} is not z-scored over its non-zero voxels "
                f"(mean {float(x.mean()):.3f}, std {float(x.std()):.3f})"
            )


# ---------------------------------------------------------------- 3. training and inference see the same image
@EVERY
def test_inference_preprocesses_an_image_exactly_as_training_validation_does(preset, tmp_path):
    case = write_case(tmp_path, "case", preset, ratio=0.6)
    trained = apply_all(deterministic(parse("train", preset), "train"), case)
    inferred = apply_all(deterministic(parse("inference", preset), "inference"), {"image": case["image"]})
    a, b = trained["image"], inferred["image"]
    assert a.shape == b.shape and torch.allclose(torch.as_tensor(a), torch.as_tensor(b)), (
        f"inference chain ({name(preset)}): the network sees another image than in training "
        f"(shape {tuple(b.shape)} vs {tuple(a.shape)}; orientation, spacing, window or crop differ)"
    )
    assert np.allclose(np.asarray(a.affine), np.asarray(b.affine)), (
        f"inference chain ({name(preset)}): the image lands on another grid than in training"
    )


def calibrated_network(preset, tmp_path, wrong_class: int | None = None, ratio: float = 1.0) -> StandIn:
    """A stand-in that segments the synthetic case of ``ratio`` by the levels training preprocessing gives it
    (MRI levels depend on the volume's statistics; ``wrong_class``: that label value is taken for background)."""
    case = write_case(tmp_path / "calibration", "case", preset, ratio=ratio)
    out = apply_all(deterministic(parse("train", preset), "train"), case)
    n, regions = label_table(preset)
    levels = levels_of(out["image"], out["label"], regions, n)
    if wrong_class is not None:
        levels = {v: (0 if c == wrong_class else c) for v, c in levels.items()}
    n_out = len(regions) if regions else n
    return StandIn(levels, n_out, regions)


def expected_output(label: np.ndarray, preset) -> np.ndarray:
    regions = regions_of(preset)
    if not regions:
        return label
    return np.stack([np.isin(label, r) for r in regions], -1).astype(np.uint8)


@EVERY
@pytest.mark.parametrize("ratio", [1.0, 0.6], ids=["working spacing", "finer spacing"])
def test_a_known_map_round_trips_through_inference_to_the_input_grid(preset, ratio, tmp_path):
    """A stand-in network that returns the case's own label map: the written segmentation is on the input's
    grid and affine and equals the label (exactly when no resampling is involved)."""
    case = write_case(tmp_path / "data", "case", preset, ratio=ratio)
    out_dir = tmp_path / "out"
    parser = parse(
        "inference", preset, dataset_dir=str(tmp_path / "data" / "imagesTr"), output_dir=str(out_dir), ckpt_path=""
    )
    parser["network"] = calibrated_network(preset, tmp_path, ratio=ratio)
    parser.get_parsed_content("run")
    written = nib.load(out_dir / "case_seg.nii.gz")
    label = nib.load(case["label"])
    where = f"inference chain ({name(preset)}, {ratio} x working spacing)"
    assert np.allclose(written.affine, label.affine), f"{where}: segmentation written with another affine"
    got, want = np.asarray(written.dataobj), expected_output(np.asarray(label.dataobj), preset)
    assert got.shape == want.shape, f"{where}: segmentation shape {got.shape} is not the input's {want.shape}"
    if ratio == 1.0:
        assert np.array_equal(got, want), f"{where}: the network's map did not round-trip to the input voxels"
    else:
        # boundary voxels are interpolated between levels, which the stand-in may read as a third class:
        # the map must land in place (a flip or shift gives Dice near 0), not be exact
        dice = [
            2 * np.sum((got == c) & (want == c)) / (np.sum(got == c) + np.sum(want == c)) for c in np.unique(want)[1:]
        ]
        assert np.mean(dice) > 0.8 and min(dice) > 0.6, f"{where}: classes land elsewhere (Dice {np.round(dice, 2)})"


# ---------------------------------------------------------------- 4. loss and metric mean what the docs say
def hand_loss(logits: torch.Tensor, label: torch.Tensor, regions) -> float:
    """Documented fine-tuning loss written out: soft Dice over every output channel (background included,
    smoothing 1e-5), averaged over images and channels, plus cross-entropy (softmax over classes against
    the label; region tasks: sigmoid and binary cross-entropy per region), equal weights."""
    if regions:
        p, y = torch.sigmoid(logits), label.float()
        ce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
    else:
        p = torch.softmax(logits, 1)
        y = torch.zeros_like(p).scatter_(1, label.long(), 1.0)
        ce = -(torch.log(p) * y).sum(1).mean()
    dims = tuple(range(2, logits.dim()))
    dice = 1 - (2 * (p * y).sum(dims) + 1e-5) / (p.sum(dims) + y.sum(dims) + 1e-5)
    return float(dice.mean() + ce)


@EVERY
def test_the_training_loss_is_dice_plus_cross_entropy_as_documented(preset):
    loss = parse("train", preset, class_weights=None).get_parsed_content("loss")
    n, regions = label_table(preset)
    torch.manual_seed(0)
    n_out = len(regions) if regions else n
    logits = torch.randn(2, n_out, 3, 4, 2) * 3
    raw = torch.randint(0, n, (2, 1, 3, 4, 2))
    label = (
        torch.stack([torch.stack([torch.isin(r[0], torch.tensor(g)) for g in regions]) for r in raw])
        if regions
        else raw
    )
    got = float(loss(logits, label.float()))
    assert got == pytest.approx(hand_loss(logits, label, regions), rel=1e-4), (
        f"train chain ({name(preset)}): the loss is not the documented Dice + cross-entropy "
        f"({got:.5f} vs {hand_loss(logits, label, regions):.5f})"
    )


def hand_dice(pred: np.ndarray, label: np.ndarray, preset) -> float:
    """Mean Dice over the organs (background excluded) or over the regions, as the docs state."""
    regions = regions_of(preset)
    pairs = (
        [(np.isin(pred, r), np.isin(label, r)) for r in regions]
        if regions
        else [(pred == c, label == c) for c in range(1, label_table(preset)[0])]
    )
    return float(np.mean([2 * np.sum(p & y) / (p.sum() + y.sum()) for p, y in pairs]))


@EVERY
def test_validation_during_training_scores_mean_dice_without_background(preset, tmp_path):
    """A stand-in that takes label 1 for background: the key metric equals the hand-computed mean Dice."""
    data = write_dataset(tmp_path / "data", preset)
    parser = parse(
        "train", preset, dataset_dir=str(data), output_dir=str(tmp_path / "runs"), ckpt_dir=str(tmp_path / "models")
    )
    parser["network"] = calibrated_network(preset, tmp_path, wrong_class=1)
    evaluator = parser.get_parsed_content("validate#evaluator")
    evaluator.run()
    val = apply_all(deterministic(parse("train", preset), "train"), write_case(tmp_path / "val", "v", preset))
    n, regions = label_table(preset)
    label = decode_classes(val["label"], regions, n).numpy()
    expected = hand_dice(np.where(label == 1, 0, label), label, preset)
    got = evaluator.state.metrics[evaluator.state.key_metric_name]
    assert got == pytest.approx(expected, abs=1e-4), (
        f"train chain ({name(preset)}): the validation score is not the documented mean Dice "
        f"({got:.4f} vs {expected:.4f} by hand)"
    )


@EVERY
def test_evaluation_scores_mean_dice_on_the_label_grid(preset, tmp_path):
    data = write_dataset(tmp_path / "data", preset, ratio=1.0)
    parser = parse(
        "evaluate", preset, dataset_dir=str(data), output_dir=str(tmp_path / "eval"), ckpt_dir=str(tmp_path / "models")
    )
    parser["network"] = calibrated_network(preset, tmp_path, wrong_class=1)
    try:
        parser.get_parsed_content("run")
    except Exception as e:
        raise AssertionError(f"evaluate chain ({name(preset)}): no score on the label's grid: {messages(e)}") from e
    evaluator = parser.get_parsed_content("validate#evaluator")
    label = np.asarray(nib.load(data / "labelsTr" / "case_val.nii.gz").dataobj)
    expected = hand_dice(np.where(label == 1, 0, label), label, preset)
    got = evaluator.state.metrics["val_mean_dice"]
    assert got == pytest.approx(expected, abs=1e-4), (
        f"evaluate chain ({name(preset)}): the score is not the documented mean Dice on the label's grid "
        f"({got:.4f} vs {expected:.4f} by hand)"
    )


# ---------------------------------------------------------------- 5. sampling and schedule
@EVERY
def test_the_crop_sampler_centres_half_the_crops_on_labelled_voxels_inside_the_body(preset, tmp_path):
    """Over 100 draws: crops of the crop size, num_samples per volume, half centred on a labelled voxel
    (docs: half centred on organs), the other half on unlabelled voxels inside the body, never in air."""
    case = write_case(tmp_path, "case", preset, arrays=sampler_case_arrays(preset))
    parser = parse("train", preset)
    det = apply_all(deterministic(parser, "train"), case)
    random_part = flat(parser.get_parsed_content("train#preprocessing"))[len(deterministic(parser, "train")) :]
    force_random(random_part, prob=0.0)
    roi, num_samples = parser.get_parsed_content("roi_size"), parser.get_parsed_content("num_samples")
    n, regions = label_table(preset)
    centres = []
    for seed in range(100):
        crops = apply_all(random_part, det, seed=seed)
        crops = crops if isinstance(crops, list) else [crops]
        where = f"train chain ({name(preset)})"
        assert len(crops) == num_samples, f"{where}: the sampler gives {len(crops)} crops, not num_samples"
        for crop in crops:
            assert list(crop["image"].shape[1:]) == list(roi), f"{where}: crop {crop['image'].shape} != roi_size"
            c = tuple(s // 2 for s in roi)
            centres.append((int(decode_classes(crop["label"], regions, n)[c]), float(crop["image"][(0, *c)])))
    on_labels = np.mean([cls > 0 for cls, _ in centres])
    assert abs(on_labels - 0.5) < 0.1, f"{where}: {on_labels:.0%} of crops centred on labels, documented: half"
    in_air = sum(cls == 0 and value == 0.0 for cls, value in centres)  # air: 0 after the window or z-score
    assert in_air == 0, f"{where}: {in_air} background crops centred outside the body"


@EVERY
def test_the_learning_rate_warms_up_linearly_then_follows_a_cosine_to_zero(preset):
    """Documented: warm-up for warmup_epochs of max_epochs (50 of 5000), linear from 0, then cosine decay,
    stepped every iteration, over the trainer's length."""
    parser = parse("train", preset)
    parser["network"] = torch.nn.Linear(2, 2)
    parser["train#dataloader"] = list(range(7))  # 7 iterations an epoch
    lr, epochs, warm = (documented(k) for k in ("learning_rate", "max_epochs", "warmup_epochs"))
    scheduler = parser.get_parsed_content("lr_scheduler")
    total, warmup = epochs * 7, round(warm * 7)
    rate = lambda step: scheduler.lr_lambdas[0](step) * lr  # noqa: E731
    expected = {
        0: 0.0,
        warmup // 2: lr * (warmup // 2) / warmup,
        warmup: lr,
        warmup + (total - warmup) // 2: lr * 0.5 * (1 + math.cos(math.pi * ((total - warmup) // 2) / (total - warmup))),
        total: 0.0,
    }
    for step, want in expected.items():
        assert rate(step) == pytest.approx(want, abs=1e-9), (
            f"train chain ({name(preset)}): learning rate at iteration {step} of {total} is {rate(step):.3g}, "
            f"documented {want:.3g} (warm-up {warm} of {epochs} epochs, then cosine)"
        )
    assert scheduler.optimizer.param_groups[0]["initial_lr"] == pytest.approx(lr)


@pytest.mark.parametrize("workflow", ["train", "evaluate", "inference"])
@EVERY
def test_sliding_window_inference_uses_the_documented_overlap_mode_and_crop(workflow, preset, tmp_path):
    data = write_dataset(tmp_path / "data", preset)
    folder = data / "imagesTr" if workflow == "inference" else data
    parser = parse(workflow, preset, dataset_dir=str(folder), output_dir=str(tmp_path / "o"), ckpt_path="")
    parser["network"] = torch.nn.Identity()
    evaluator = parser.get_parsed_content("evaluator" if workflow == "inference" else "validate#evaluator")
    inferer = evaluator.inferer
    where = f"{workflow} chain ({name(preset)})"
    assert isinstance(inferer, SlidingWindowInferer), f"{where}: validation is not a sliding window"
    assert inferer.overlap == documented("sw_overlap"), f"{where}: sliding-window overlap {inferer.overlap}"
    assert str(inferer.mode) == "gaussian", f"{where}: sliding-window blending {inferer.mode}, documented Gaussian"
    assert list(inferer.roi_size) == list(parser.get_parsed_content("roi_size")), f"{where}: window != roi_size"


@EVERY
def test_the_crop_and_spacing_are_the_ones_the_task_states(preset):
    parser = ConfigParser()
    parser.read_config(config_files("train", preset))
    task, where = stated(preset), f"train chain ({name(preset)})"
    assert parser.get_parsed_content("roi_size") == [task["crop"]] * 3, f"{where}: crop size is not the task's"
    assert parser.get_parsed_content("pixdim") == pytest.approx(task["pixdim"]), f"{where}: spacing is not the task's"


def encoder_file(path, preset, seed: int) -> dict:
    """A Swin UNETR of the preset's channels and classes saved at ``path``, with seeded random weights."""
    from monai.networks.nets import SwinUNETR

    torch.manual_seed(seed)
    n, regions = label_table(preset)
    net = SwinUNETR(
        in_channels=raw_preset(preset)["in_channels"],
        out_channels=len(regions) if regions else n,
        feature_size=12,
        window_size=4,
    )
    torch.save(net.state_dict(), path)
    return net.state_dict()


def other_size(path, preset) -> None:
    from monai.networks.nets import SwinUNETR

    n, regions = label_table(preset)
    channels, outputs = raw_preset(preset)["in_channels"], len(regions) if regions else n
    torch.save(SwinUNETR(in_channels=channels, out_channels=outputs, feature_size=24).state_dict(), path)


@EVERY
@pytest.mark.parametrize("workflow", ["train", "evaluate", "inference"])
def test_the_given_weights_are_the_ones_the_network_runs_with_and_foreign_files_are_refused(workflow, preset, tmp_path):
    """train: --pretrained_encoder replaces the encoder; evaluate and inference: ckpt_path is the whole
    network. A file whose tensors do not match is refused with an error naming it."""
    data = write_dataset(tmp_path / "data", preset)
    weights = encoder_file(tmp_path / "weights.pt", preset, seed=5)
    torch.save({"conv.weight": torch.zeros(3, 3)}, tmp_path / "foreign.pt")  # no known weight format
    other_size(tmp_path / "other_size.pt", preset)  # a Swin UNETR, of another size: no tensor fits
    given = {"pretrained_encoder": "{}"} if workflow == "train" else {"ckpt_path": "{}"}
    common = {
        "bundle_root": str(ROOT),
        "dataset_dir": str(data / "imagesTr" if workflow == "inference" else data),
        "output_dir": str(tmp_path / "out"),
        "ckpt_dir": str(tmp_path / "models"),
        "feature_size": 12,
        "window_size": 4,
        **TINY,
    }
    where = f"{workflow} chain ({name(preset)})"
    for path in ("weights.pt", "foreign.pt", "other_size.pt"):
        overrides = {**common, **{k: v.format(tmp_path / path) for k, v in given.items()}}
        wf = ConfigWorkflow(config_file=config_files(workflow, preset), workflow_type="infer", **overrides)
        if path != "weights.pt":
            try:
                wf.initialize()
                refusal = ""
            except Exception as e:
                refusal = messages(e)
            assert path in refusal, f"{where}: a foreign weight file ({path}) is not refused by name: {refusal[:200]}"
            continue
        wf.initialize()
        net = wf.parser.get_parsed_content("network")
        state = net.state_dict()
        part = [k for k in state if workflow != "train" or k.startswith("swinViT.")]
        wrong = [k for k in part if not torch.equal(state[k].cpu(), weights[k])]
        assert part and not wrong, f"{where}: the network does not run with the given weights ({wrong[:3]})"
        if workflow == "train":
            assert not torch.equal(state["out.conv.conv.weight"].cpu(), weights["out.conv.conv.weight"])
        wf.finalize()

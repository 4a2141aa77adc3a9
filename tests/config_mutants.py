"""Config-level mutants of the fine-tuning, evaluation and inference chains: one plausible defect each.

A mutant edits the *parsed* configs (the merged config of every ``ConfigParser.read_config`` call), found by
component type and workflow rather than by line or id, so the same mutants apply to any layout of the
configs. ``tests/mutants.py --kind config`` runs the fast tier once per mutant with ``CONFIG_MUTANT=<name>``;
``tests/conftest.py`` then calls ``install(name)``. A mutant is killed when the fast tier fails, and counted
as named when the first failure's message names the chain and the broken property (``expect``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator


def components(node, target: str) -> Iterator[dict]:
    """Every config dict whose ``_target_`` is ``target`` (or ends with ``.target``), depth first."""
    if isinstance(node, dict):
        if str(node.get("_target_", "")).split(".")[-1] == target:
            yield node
        for value in node.values():
            yield from components(value, target)
    elif isinstance(node, list):
        for value in node:
            yield from components(value, target)


def workflow(files: list[str]) -> str:
    names = [str(f).replace("\\", "/").rsplit("/", 1)[-1] for f in files]
    if "inference.json" in names:
        return "inference"
    if "evaluate.json" in names:
        return "evaluate"
    return "train" if "train.json" in names else "other"


def setting(target: str, where: tuple[str, ...] = ("train", "evaluate", "inference"), index=None, **values):
    """A mutant that sets ``values`` on the ``target`` components (all of them, or the ``index``-th) of the
    configs of the workflows ``where``."""

    def mutate(config: dict, files: list[str]) -> None:
        if workflow(files) not in where:
            return
        found = list(components(config, target))
        for comp in found if index is None else found[index : index + 1]:
            comp.update(values)

    return mutate


def removing(target: str, where: tuple[str, ...]):
    """A mutant that drops the ``target`` components from every list that holds them."""

    def drop(node) -> None:
        if isinstance(node, dict):
            for value in node.values():
                drop(value)
        elif isinstance(node, list):
            node[:] = [v for v in node if not (isinstance(v, dict) and str(v.get("_target_", "")).endswith(target))]
            for value in node:
                drop(value)

    def mutate(config: dict, files: list[str]) -> None:
        if workflow(files) in where:
            drop(config)

    return mutate


def replacing(target: str, new: str, where: tuple[str, ...]):
    """A mutant that builds ``new`` (a MONAI class) instead of ``target`` with the same arguments that
    ``new`` takes (DiceFocalLoss -> DiceCELoss: the same Dice, another cross-entropy)."""

    def mutate(config: dict, files: list[str]) -> None:
        if workflow(files) in where:
            for comp in components(config, target):
                comp["_target_"] = new
                comp.pop("gamma", None)

    return mutate


TRAIN, EVAL, INFER = ("train",), ("evaluate",), ("inference",)
ALIGN, LABELS, SAME = "image and label no longer match", "labels are no longer labels", "another image than in training"
# (name, kind, mutation, (chain named in the message, property named in the message))
ON_LABEL = {  # an image-only step applied to the label too
    "label_intensity_scaled": "RandScaleIntensityd",
    "label_intensity_shifted": "RandShiftIntensityd",
    "label_windowed": "ScaleIntensityRanged",
    "label_z_scored": "NormalizeIntensityd",
}
MUTANTS: list[tuple[str, str, Callable, tuple[str, str]]] = [
    # 1. image and label stay together
    ("flip_image_only", "together", setting("RandFlipd", TRAIN, index=0, keys="image"), ("train chain", ALIGN)),
    ("flip_label_only", "together", setting("RandFlipd", TRAIN, index=2, keys="label"), ("train chain", ALIGN)),
    ("rotate90_image_only", "together", setting("RandRotate90d", TRAIN, keys="image"), ("train chain", ALIGN)),
    ("orientation_image_only", "together", setting("Orientationd", TRAIN, keys="image"), ("train chain", ALIGN)),
    (
        "spacing_image_only",
        "together",
        setting("PathSafeSpacingd", TRAIN, keys="image", mode="bilinear"),
        ("train chain", ALIGN),
    ),
    ("body_crop_image_only", "together", setting("CropForegroundd", TRAIN, keys="image"), ("train chain", ALIGN)),
    ("pad_image_only", "together", setting("SpatialPadd", TRAIN, keys="image"), ("train chain", ALIGN)),
    # 2. labels stay labels, the image is windowed as the task states
    (
        "label_resampled_bilinear",
        "labels",
        setting("PathSafeSpacingd", TRAIN, mode=["bilinear", "bilinear"]),
        ("preprocessing", LABELS),
    ),
    *[
        (name, "labels", setting(target, TRAIN, keys=["image", "label"]), ("preprocessing", LABELS))
        for name, target in ON_LABEL.items()
    ],
    ("window_not_clipped", "labels", setting("ScaleIntensityRanged", clip=False), ("chain", "windowed and clipped")),
    (
        "window_fixed_to_btcv",
        "labels",
        setting("ScaleIntensityRanged", a_min=-175, a_max=250),
        ("chain", "of the HU window"),
    ),
    (
        "z_score_with_background",
        "labels",
        setting("NormalizeIntensityd", nonzero=False),
        ("chain", "z-scored over its non-zero voxels"),
    ),
    (
        "z_score_across_channels",
        "labels",
        setting("NormalizeIntensityd", channel_wise=False),
        ("chain", "z-scored over its non-zero voxels"),
    ),
    # 3. training and inference see the same image; the map goes back to the input's grid
    (
        "inference_window_shifted",
        "same image",
        setting("ScaleIntensityRanged", INFER, a_max="$@a_max + 50"),
        ("inference chain", "window"),
    ),
    (
        "inference_orientation_lps",
        "same image",
        setting("Orientationd", INFER, axcodes="LPS"),
        ("inference chain", SAME),
    ),
    (
        "inference_spacing_off",
        "same image",
        setting("PathSafeSpacingd", INFER, pixdim="$[1.25 * v for v in @pixdim]"),
        ("inference chain", SAME),
    ),
    (
        "inference_nearest_image",
        "same image",
        setting("PathSafeSpacingd", INFER, mode="nearest"),
        ("inference chain", SAME),
    ),
    ("inference_no_body_crop", "same image", removing("CropForegroundd", INFER), ("inference chain", SAME)),
    ("inference_not_inverted", "same image", removing("InvertedLabelsd", INFER), ("inference chain", "input")),
    ("evaluation_not_inverted", "same image", removing("InvertedLabelsd", EVAL), ("evaluate chain", "label")),
    (
        "evaluation_label_resampled",
        "same image",
        setting("Orientationd", EVAL, keys=["image", "label"]),
        ("evaluate chain", "label"),
    ),
    # 4. loss and metric mean what the docs say
    ("metric_with_background", "loss/metric", setting("MeanDice", include_background=True), ("chain", "mean Dice")),
    (
        "validation_threshold_on_logits",
        "loss/metric",
        setting("Activationsd", TRAIN + EVAL, sigmoid=False),
        ("chain", "mean Dice"),
    ),
    ("loss_without_softmax", "loss/metric", setting("DiceCELoss", TRAIN, softmax=False), ("train chain", "the loss")),
    (
        "loss_dice_without_background",
        "loss/metric",
        setting("DiceCELoss", TRAIN, include_background=False),
        ("train chain", "the loss"),
    ),
    ("loss_dice_only", "loss/metric", setting("DiceCELoss", TRAIN, lambda_ce=0.0), ("train chain", "the loss")),
    (
        "region_loss_softmax_ce",
        "loss/metric",
        replacing("DiceFocalLoss", "DiceCELoss", TRAIN),
        ("train chain", "the loss"),
    ),
    # 5. sampling, schedule, sliding window, weights
    ("sampler_three_positive", "sampling", setting("RandCropByPosNegLabeld", TRAIN, pos=3), ("train chain", "crops")),
    (
        "sampler_anywhere",
        "sampling",
        setting("RandCropByPosNegLabeld", TRAIN, image_key=None),
        ("train chain", "crops"),
    ),
    (
        "sampler_two_crops",
        "sampling",
        setting("RandCropByPosNegLabeld", TRAIN, num_samples=2),
        ("train chain", "crops"),
    ),
    (
        "warmup_dropped",
        "schedule",
        setting("WarmupCosineSchedule", TRAIN, warmup_steps=0),
        ("train chain", "learning rate"),
    ),
    (
        "schedule_in_epochs",
        "schedule",
        setting("WarmupCosineSchedule", TRAIN, t_total="$@train#trainer#max_epochs"),
        ("train chain", "learning rate"),
    ),
    ("window_overlap_quarter", "sliding window", setting("SlidingWindowInferer", overlap=0.25), ("chain", "overlap")),
    (
        "window_blend_constant",
        "sliding window",
        setting("SlidingWindowInferer", mode="constant"),
        ("chain", "blending"),
    ),
    ("encoder_not_loaded", "weights", setting("load_pretrained", TRAIN, _disabled_=True), ("train chain", "weights")),
    ("model_not_loaded", "weights", setting("load_pretrained", EVAL + INFER, _disabled_=True), ("chain", "weights")),
    ("any_file_accepted", "weights", setting("load_pretrained", min_fraction=0.0), ("chain", "weight file")),
]
for _name, _kind, _mutate, _expect in MUTANTS:  # names are the command line's handle: one each
    assert [m[0] for m in MUTANTS].count(_name) == 1, _name


def install(name: str) -> None:
    """Apply mutant ``name`` to every config this process reads from now on."""
    from monai.bundle import ConfigParser

    mutate = {m[0]: m[2] for m in MUTANTS}.get(name)
    if mutate is None:
        raise SystemExit(f"CONFIG_MUTANT={name}: no such mutant (tests/config_mutants.py lists them)")
    original = ConfigParser.read_config

    def read_config(self, f, **kwargs):
        original(self, f, **kwargs)
        mutate(self.config, f if isinstance(f, (list, tuple)) else [f])

    ConfigParser.read_config = read_config

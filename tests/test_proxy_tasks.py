"""Proxy tasks as a choice, and SimMIM-style masked image modelling (MIM) on the Swin encoder: what a selection
builds and computes, MIM's masking and loss as the method defines them, and the encoder hand-over unchanged."""

import math

import pytest
import torch
from monai.bundle import ConfigWorkflow
from monai.networks.nets import SwinUNETR

from scripts.errors import ConfigError
from scripts.network.pretraining import SSLHead
from scripts.pretraining.loss import SSLLoss
from scripts.pretraining.mim import block_mask, check_blocks, masked_l1
from scripts.pretraining.steps import SSLEvalStep, SSLTrainStep, ViewedStep
from scripts.pretraining.tasks import check_tasks, key_metric, lower_is_better, scores
from scripts.weights.loading import load_pretrained

from conftest import FAST, ROOT, SMALL_WINDOW, configs

pytestmark = pytest.mark.usefixtures("seeded")
HEADS = {"rotation": "rotation_head", "contrastive": "contrastive_head", "inpainting": "reconstruction_head"}
HEADS["mim"] = "mim_head"


def ssl(tasks, seed=0):
    torch.manual_seed(seed)
    return SSLHead(feature_size=12, window_size=SMALL_WINDOW, tasks=tasks)


def test_a_selection_is_named_tasks_in_a_fixed_order_and_mistakes_are_one_line():
    assert check_tasks(["contrastive", "mim", "inpainting"]) == ("inpainting", "contrastive", "mim")
    assert check_tasks("mim") == ("mim",)
    with pytest.raises(ConfigError, match="proxy_tasks is empty"):
        check_tasks([])
    with pytest.raises(ConfigError, match="did you mean 'rotation'"):
        check_tasks(["rotaton"])
    with pytest.raises(ConfigError, match="named twice"):
        check_tasks(["mim", "mim"])


def test_the_kept_encoder_is_chosen_by_a_score_every_selection_has():
    assert key_metric(["inpainting", "rotation", "contrastive"]) == "val_reconstruction_l1"
    assert key_metric(["mim", "rotation"]) == "val_mim_l1" and lower_is_better("val_mim_l1")
    assert key_metric(["rotation", "contrastive"]) == "val_contrastive_top1"
    assert not lower_is_better(key_metric(["rotation"]))
    for tasks in (["rotation"], ["contrastive"], ["inpainting"], ["mim"]):
        assert key_metric(tasks)[len("val_") :] in scores(tasks)


@pytest.mark.parametrize("task", ["rotation", "contrastive", "inpainting", "mim"])
def test_only_the_selected_heads_are_built(task):
    net = ssl([task])
    assert [name for name in HEADS.values() if hasattr(net, name)] == [HEADS[task]]
    assert hasattr(net, "mask_token") == (task == "mim")


def test_the_mask_token_is_not_part_of_the_encoder_fine_tuning_loads():
    net = ssl(["inpainting", "rotation", "contrastive", "mim"])
    encoder = {k: v for k, v in net.state_dict().items() if k.startswith("swinViT.")}
    unetr = SwinUNETR(in_channels=1, out_channels=14, feature_size=12, window_size=SMALL_WINDOW)
    assert set(encoder) == {k for k in unetr.state_dict() if k.startswith("swinViT.")}
    assert "mask_token" in net.state_dict() and not any("mask_token" in k for k in encoder)
    assert unetr.load_state_dict(encoder, strict=False).unexpected_keys == []


def test_the_masked_fraction_is_the_ratio_in_whole_blocks():
    mask = block_mask(3, (96, 96, 96), 32, 0.6)
    assert mask.shape == (3, 1, 96, 96, 96)
    for crop in mask:
        blocks = crop[0].unfold(0, 32, 32).unfold(1, 32, 32).unfold(2, 32, 32).reshape(27, -1)
        assert ((blocks == 0) | (blocks == 1)).all() and (blocks.min(1).values == blocks.max(1).values).all()
        assert int(blocks[:, 0].sum()) == math.ceil(27 * 0.6)  # SimMIM: ceil(ratio x blocks)
    assert not torch.equal(mask[0], mask[1])  # drawn per crop
    assert block_mask(1, (128, 128, 64), 32, 0.75).mean() == pytest.approx(math.ceil(32 * 0.75) / 32)
    with pytest.raises(ConfigError, match="mim_block_size 40"):
        check_blocks([96, 96, 96], 40)
    with pytest.raises(ConfigError, match="mim_mask_ratio"):
        block_mask(1, (64, 64, 64), 32, 1.0)


def test_the_mim_loss_ignores_the_unmasked_voxels():
    target = torch.rand(2, 1, 8, 8, 8)
    mask = (torch.rand(2, 1, 8, 8, 8) > 0.5).float()
    prediction = target + 0.25 * mask  # exact wherever unmasked, off by 0.25 where masked
    assert float(masked_l1(prediction, target, mask)) == pytest.approx(0.25)
    wild = prediction + 100 * (1 - mask) * torch.randn_like(target)  # anything outside the mask
    assert float(masked_l1(wild, target, mask)) == pytest.approx(0.25)
    assert float(masked_l1(target + 0.5 * mask, target, mask)) == pytest.approx(0.5)  # but the masked voxels count


def test_masked_tokens_carry_the_mask_token_and_the_others_the_input():
    net = ssl(["mim"]).eval()
    seen = []
    net.swinViT.pos_drop.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].clone()))
    mask = block_mask(1, (64, 64, 64), 32, 0.6)
    a, b = torch.rand(1, 1, 64, 64, 64), torch.rand(1, 1, 64, 64, 64)
    with torch.no_grad():
        net(mim_x=a, mim_mask=mask)
        net(mim_x=b, mim_mask=mask)
        embedded = net.swinViT.patch_embed(a)
    hidden = mask[:, :, ::2, ::2, ::2].bool().expand_as(embedded)  # patch size 2: one token per 2^3 voxels
    token = net.mask_token.expand_as(embedded)
    assert torch.equal(seen[0][hidden], token[hidden]) and torch.equal(seen[1][hidden], token[hidden])
    assert torch.allclose(seen[0][~hidden], embedded[~hidden]) and not torch.allclose(seen[0], seen[1])


def test_the_mim_head_is_one_linear_layer_from_the_last_stage_to_every_voxel():
    net = ssl(["mim"]).eval()
    assert isinstance(net.mim_head, torch.nn.Conv3d) and net.mim_head.kernel_size == (1, 1, 1)
    assert (net.mim_head.in_channels, net.mim_head.out_channels) == (16 * 12, 32**3)
    with torch.no_grad():
        out = net(mim_x=torch.rand(2, 1, 64, 96, 64), mim_mask=block_mask(2, (64, 96, 64), 32, 0.6))
    assert set(out) == {"mim"} and out["mim"].shape == (2, 1, 64, 96, 64)


def test_views_and_mim_crops_share_one_encoder_pass_and_give_what_separate_passes_give():
    net = ssl(["inpainting", "rotation", "contrastive", "mim"]).eval()
    views, crops = torch.rand(2, 1, 64, 64, 64), torch.rand(1, 1, 64, 64, 64)
    mask = block_mask(1, (64, 64, 64), 32, 0.6)
    with torch.no_grad():
        both, alone, mim = net(views, crops, mask), net(views), net(mim_x=crops, mim_mask=mask)
    for key in ("rotation", "projection", "reconstruction"):
        assert torch.allclose(both[key], alone[key], atol=1e-5)
    assert torch.allclose(both["mim"], mim["mim"], atol=1e-5)


def test_the_loss_has_the_selected_terms_only_weighted():
    outputs = {"mim": torch.rand(2, 1, 8, 8, 8), "rotation": torch.randn(4, 4)}
    targets = {"mim": torch.rand(2, 1, 8, 8, 8), "mim_mask": torch.ones(2, 1, 8, 8, 8), "rotation": torch.arange(4)}
    terms = SSLLoss(rotation_weight=2.0, mim_weight=3.0, tasks=["mim", "rotation"])(outputs, targets)
    assert set(terms) == {"rotation", "mim", "total"}
    assert torch.allclose(terms["total"], 2 * terms["rotation"] + 3 * terms["mim"])
    assert torch.allclose(terms["mim"], (outputs["mim"] - targets["mim"]).abs().mean())


def test_the_paper_views_are_the_same_draws_with_or_without_mim():
    x = torch.rand(2, 1, 64, 64, 64)
    torch.manual_seed(5)
    paper, _ = ViewedStep().inputs(x)
    torch.manual_seed(5)
    both, targets = ViewedStep(tasks=["inpainting", "rotation", "contrastive", "mim"]).inputs(x)
    assert torch.equal(paper["x"], both["x"]) and torch.equal(both["mim_x"], x)
    torch.manual_seed(5)
    alone, _ = ViewedStep(tasks=["mim"]).inputs(x)
    assert set(alone) == {"mim_x", "mim_mask"}  # no views made for MIM alone


def engine(network, iteration=1):
    from types import SimpleNamespace

    return SimpleNamespace(
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.01),
        loss_function=SSLLoss(tasks=network.tasks),
        scaler=None,
        amp=False,
        state=SimpleNamespace(device=torch.device("cpu"), iteration=iteration),
    )


@pytest.mark.parametrize(
    "tasks, terms, scored",
    [
        (["mim"], {"mim"}, {"mim_l1"}),
        (["rotation"], {"rotation"}, {"rotation_accuracy"}),
        (["contrastive", "mim"], {"contrastive", "mim"}, {"contrastive_top1", "mim_l1"}),
    ],
)
def test_a_step_trains_and_validates_the_selected_tasks_only(tasks, terms, scored):
    net = ssl(tasks)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = {"image": torch.rand(2, 1, 64, 64, 64)}
    out = SSLTrainStep(tasks=tasks)(engine(net), x)
    assert set(out["terms"]) == terms | {"total", "lr"}
    assert not torch.equal(
        before["swinViT.patch_embed.proj.weight"], net.state_dict()["swinViT.patch_embed.proj.weight"]
    )
    if "mim" in tasks:
        assert "mask_token" in net.state_dict() and not torch.equal(before["mask_token"], net.mask_token.detach())
        assert (out["masked"] == 0).float().mean() >= 0.5  # the snapshot shows MIM's masked blocks
    else:
        assert "pred" not in out
    assert set(SSLEvalStep(tasks=tasks)(engine(net), x)) == scored


@pytest.mark.slow
@pytest.mark.parametrize(
    "tasks",
    [["inpainting"], ["rotation"], ["contrastive"], ["mim"], ["inpainting", "rotation", "contrastive", "mim"]],
    ids=["inpainting", "rotation", "contrastive", "mim", "all_four"],
)
def test_pretraining_any_selection_logs_validates_and_hands_over_an_encoder_fine_tuning_loads(
    tasks, phantoms, tmp_path
):
    wf = ConfigWorkflow(
        config_file=configs("pretrain.json", "small_pretrain.json"),
        workflow_type="train",
        bundle_root=str(ROOT),
        dataset_dir=str(phantoms),
        output_dir=str(tmp_path / "runs"),
        ckpt_dir=str(tmp_path / "models"),
        max_iterations=2,
        ckpt_interval=2,
        val_interval=2,
        image_interval=2,
        proxy_tasks=tasks,
        **FAST,
    )
    wf.initialize()
    wf.run()
    metrics = dict(wf.parser.get_parsed_content("validate#evaluator").state.metrics)
    wf.finalize()
    terms = {"inpainting": "reconstruction", "rotation": "rotation", "contrastive": "contrastive", "mim": "mim"}
    header = (tmp_path / "runs" / "losses.csv").read_text().splitlines()[0].split(",")
    assert header[0] == "iteration" and header[-2:] == ["total", "lr"]
    assert sorted(header[1:-2]) == sorted(terms[t] for t in tasks)
    selected = {f"val_{s}" for s in scores(tasks)}
    others = {f"val_{s}" for s in scores(["inpainting", "rotation", "contrastive", "mim"])} - selected
    assert selected <= set(metrics) and not others & set(metrics)
    probe = {"rotation": "val_probe_rotation_accuracy", "contrastive": "val_probe_effective_rank"}
    probe.update(inpainting="val_probe_inpainting_l1", mim="val_probe_mim_l1")
    assert {probe[t] for t in tasks} <= set(metrics) and all(math.isfinite(metrics[probe[t]]) for t in tasks)
    assert len(list((tmp_path / "runs" / "images").glob("*.png"))) == (1 if {"inpainting", "mim"} & set(tasks) else 0)
    unetr = SwinUNETR(in_channels=1, out_channels=14, feature_size=12, window_size=SMALL_WINDOW)
    loaded = load_pretrained(unetr, str(tmp_path / "models" / "ssl_encoder.pt"), min_fraction=1.0)
    assert loaded == len([k for k in unetr.state_dict() if k.startswith("swinViT.")])

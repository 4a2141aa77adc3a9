"""The pre-training method as stated (reference code and docs/defaults.md), checked
from its statement rather than from the implementation: each test fails for a plausible mistake
(zeros instead of noise, the unrotated crop masked, another plane, another token, a wrong formula)."""

import math

import pytest
import torch
import torch.nn.functional as F
from monai.utils import set_determinism
from torch import nn

from scripts.errors import ConfigError
from scripts.network.pretraining import SSLHead
from scripts.pretraining.loss import SSLLoss, nt_xent
from scripts.pretraining.proxy_tasks import check_rotation_plane, mask, rotate
from scripts.pretraining.views import make_views

pytestmark = pytest.mark.usefixtures("seeded")


def test_cut_out_boxes_are_filled_with_noise_spanning_zero_to_one():
    x = torch.full((1, 1, 32, 32, 32), 0.5)  # a flat crop: whatever differs was filled
    values = []
    for _ in range(20):
        out, fill = mask(x, max_fraction=0.3)
        filled = out[0, 0][fill[0] == 1]
        assert ((filled >= 0) & (filled <= 1)).all()
        assert torch.equal(out[0, 0][fill[0] == 0], x[0, 0][fill[0] == 0])  # the rest is untouched
        values.append(filled)
    noise = torch.cat(values)
    assert noise.numel() > 1000
    # Gaussian noise min-max rescaled per box: reaches 0 and 1, varies from voxel to voxel, centred
    assert noise.min() == 0 and noise.max() == 1
    assert noise.std() > 0.08 and 0.35 < noise.mean() < 0.65
    middle = ((noise > 1 / 3) & (noise < 2 / 3)).float().mean()
    assert middle > 0.45  # bell-shaped: uniform noise would put a third of the voxels there
    assert (noise[1:] != noise[:-1]).float().mean() > 0.99


def box_of(region: torch.Tensor) -> tuple:
    """(start, end) per axis of the bounding box of ``region``, after checking that ``region`` is that box."""
    idx = region.nonzero()
    lo, hi = idx.min(0).values, idx.max(0).values + 1
    assert int(region.sum()) == int((hi - lo).prod()), "a cut-out region is not a box"
    return tuple(zip(lo.tolist(), hi.tolist()))


def test_each_cut_out_box_has_sides_between_5_and_25_percent_of_the_crop_side():
    x = torch.rand(1, 1, 64, 64, 64)
    sides, cut = [], 0
    for _ in range(300):  # a tiny target fraction draws exactly one box; one crop never swaps
        _, fill = mask(x, max_fraction=1e-9)
        for start, end in box_of(fill[0] == 1):
            if end == 64:  # cut short by the crop's border: any length
                cut += 1
                continue
            sides.append(end - start)
    # sides in [int(0.05 * 64), int(0.25 * 64)) = 3..15 voxels wherever a box does not meet the border
    assert min(sides) == 3 and max(sides) == 15
    assert sum(s >= 12 for s in sides) > 0.1 * len(sides)  # the whole range is used
    assert cut < 0.2 * (len(sides) + cut)


def test_the_noise_covered_fraction_is_drawn_up_to_30_percent():
    x = torch.rand(1, 1, 32, 32, 32)
    fractions = torch.tensor([float((mask(x, max_fraction=0.3)[1] == 1).float().mean()) for _ in range(200)])
    one_box = 0.25**3
    assert fractions.max() <= 0.3 + one_box  # the target, overshot by at most the last box
    assert fractions.min() < 0.05 and fractions.max() > 0.2  # U(0, 0.3): small and large draws
    assert 0.08 < fractions.mean() < 0.17  # about 0.15 less overlaps


def test_swapped_boxes_are_copied_from_another_crop_of_the_batch_at_the_same_place():
    levels = torch.tensor([0.2, 0.4, 0.6, 0.8])
    x = levels.view(4, 1, 1, 1, 1).expand(4, 1, 24, 24, 24).clone()
    swaps = 0
    for _ in range(30):
        out, fill = mask(x)
        for i in range(4):
            copied = out[i, 0][fill[i] == 2]
            if copied.numel():
                swaps += 1
                sources = {float(v) for v in copied.unique()}
                assert len(sources) == 1 and sources <= {float(v) for j, v in enumerate(levels) if j != i}
    assert swaps > 30


def test_the_reference_swap_source_can_copy_what_another_crop_already_received():
    x = torch.tensor([0.2, 0.8]).view(2, 1, 1, 1, 1).expand(2, 1, 24, 24, 24).clone()

    def copied_values(source):
        set_determinism(seed=1)
        seen = set()
        for _ in range(40):
            out, fill = mask(x, swap_source=source)
            seen |= {round(float(v), 6) for v in out[1, 0][fill[1] == 2].unique()}
        return seen

    assert copied_values("unmasked") == {0.2}  # crop 0's own voxels only
    assert len(copied_values("masked") - {0.2}) > 0  # also crop 0's noise boxes, filled before crop 1
    with pytest.raises(ConfigError, match="swap_source"):
        mask(x, swap_source="other")


@pytest.mark.parametrize("axes", [(1, 2), (0, 1), (0, 2)])
def test_label_k_is_k_quarter_turns_in_the_declared_plane_and_the_third_axis_is_kept(axes):
    third = ({0, 1, 2} - set(axes)).pop()
    x = torch.zeros(40, 1, 8, 8, 8)
    points = torch.randint(0, 8, (40, 3))
    for i, (p0, p1, p2) in enumerate(points.tolist()):
        x[i, 0, p0, p1, p2] = 1.0
    rotated, k = rotate(x, axes)
    assert set(k.tolist()) == {0, 1, 2, 3}
    for i in range(40):
        moved = rotated[i, 0].nonzero()[0]
        assert moved[third] == points[i, third]  # a rotation in the plane keeps the other coordinate
        # k quarter turns: k = 0 leaves the point, 2 mirrors it through the plane's centre
        a, b = points[i, axes[0]], points[i, axes[1]]
        if k[i] == 0:
            assert (moved[axes[0]], moved[axes[1]]) == (a, b)
        if k[i] == 2:
            assert (moved[axes[0]], moved[axes[1]]) == (7 - a, 7 - b)
        if k[i] in (1, 3):  # a quarter turn swaps the roles of the plane's two coordinates
            assert int(moved[axes[0]]) in (b, 7 - b) and int(moved[axes[1]]) in (a, 7 - a)
        assert torch.equal(rotated[i].rot90(-int(k[i]), dims=(axes[0] + 1, axes[1] + 1)), x[i])


def test_the_four_labels_are_four_different_orientations():
    x = torch.zeros(1, 1, 8, 8, 8)
    x[0, 0, 0, 1, 5] = 1.0
    turned = {}
    for _ in range(50):
        rotated, k = rotate(x)
        turned[int(k[0])] = tuple(rotated[0, 0].nonzero()[0].tolist())
    assert len(set(turned.values())) == 4  # the four labels are four different orientations


def test_a_rotation_plane_with_unequal_sides_is_refused_in_one_line():
    assert check_rotation_plane([96, 64, 64], [1, 2]) == (1, 2)
    with pytest.raises(ConfigError, match=r"roi_size \[96, 64, 64\] with rotation_axes \[0, 1\]"):
        check_rotation_plane([96, 64, 64], [0, 1])
    with pytest.raises(ConfigError, match="two different spatial axes"):
        check_rotation_plane([96, 96, 96], [1, 1])


def test_views_mask_the_rotated_crop_and_target_the_rotated_crop():
    x = torch.rand(4, 1, 16, 16, 16)
    inputs, k, target = make_views(x)
    assert (k != 0).sum() >= 2
    for i in range(8):
        rotated = x[i % 4].rot90(int(k[i]), dims=(2, 3))  # the reference plane
        assert torch.equal(target[i], rotated)
        kept = inputs[i] == rotated  # untouched voxels of the input are those of the rotated crop
        assert kept.float().mean() > 0.3
    assert not torch.equal(inputs, target)  # and the others are masked
    # the input is the rotated crop masked, never the unrotated one
    unrotated_kept = torch.stack([(inputs[i] == x[i % 4]).float().mean() for i in range(8) if k[i] != 0])
    assert (unrotated_kept < 0.2).all()


def test_views_of_one_crop_are_drawn_independently():
    x = torch.rand(8, 1, 16, 16, 16)
    inputs, k, _ = make_views(x)
    assert not torch.equal(k[:8], k[8:])
    assert not torch.equal(inputs[:8], inputs[8:])


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return SSLHead(in_channels=1, feature_size=12).eval()


def test_rotation_and_contrastive_heads_read_the_first_two_bottleneck_tokens(network):
    x = torch.rand(2, 1, 64, 64, 64)
    with torch.no_grad():
        out = network(x)
        rotation, projection = out["rotation"], out["projection"]
        bottleneck = network.swinViT(x)[4]  # (B, 16f, 2, 2, 2)
    assert bottleneck.shape == (2, 192, 2, 2, 2)
    # token 0 is grid cell (0, 0, 0), token 1 the next one along the last axis, (0, 0, 1)
    assert torch.allclose(rotation, network.rotation_head(bottleneck[:, :, 0, 0, 0]), atol=1e-6)
    assert torch.allclose(projection, network.contrastive_head(bottleneck[:, :, 0, 0, 1]), atol=1e-6)
    assert network.rotation_head.out_features == 4 and network.contrastive_head.out_features == 512


def test_the_pooled_token_choice_feeds_both_heads_the_mean_token():
    torch.manual_seed(0)
    net = SSLHead(in_channels=1, feature_size=12, token_choice="pool").eval()
    x = torch.rand(1, 1, 64, 64, 64)
    with torch.no_grad():
        out = net(x)
        rotation, projection = out["rotation"], out["projection"]
        mean = net.swinViT(x)[4].mean((2, 3, 4))
    assert torch.allclose(rotation, net.rotation_head(mean), atol=1e-6)
    assert torch.allclose(projection, net.contrastive_head(mean), atol=1e-6)
    assert SSLHead(feature_size=12, token_choice="paper").token_choice == "reference"  # the old name


def test_the_reconstruction_head_is_the_documented_decoder(network):
    """5 x (conv 3^3, instance norm, LeakyReLU, x2 trilinear), 16f -> 8f -> 4f -> 2f -> f -> f, conv 1^3."""
    f = 12
    layers = list(network.reconstruction_head)
    assert len(layers) == 21
    channels = [16 * f, 8 * f, 4 * f, 2 * f, f, f]
    for stage in range(5):
        conv, norm, act, up = layers[4 * stage : 4 * stage + 4]
        assert isinstance(conv, nn.Conv3d) and conv.kernel_size == (3, 3, 3) and conv.padding == (1, 1, 1)
        assert (conv.in_channels, conv.out_channels) == (channels[stage], channels[stage + 1])
        assert isinstance(norm, nn.InstanceNorm3d) and norm.num_features == channels[stage + 1]
        assert isinstance(act, nn.LeakyReLU)
        assert isinstance(up, nn.Upsample) and up.scale_factor == 2 and up.mode == "trilinear"
    last = layers[-1]
    assert (
        isinstance(last, nn.Conv3d)
        and last.kernel_size == (1, 1, 1)
        and (last.in_channels, last.out_channels)
        == (
            f,
            1,
        )
    )
    x = torch.rand(1, 1, 64, 64, 64)
    with torch.no_grad():  # it decodes the bottleneck, with no output activation
        reconstruction = network(x)["reconstruction"]
        assert torch.allclose(reconstruction, network.reconstruction_head(network.swinViT(x)[4]), atol=1e-6)


def nt_xent_written_out(z1, z2, tau):
    """SimCLR's NT-Xent: for each of the 2N views, -log of the softmax weight of its partner among the
    other 2N - 1 views, by cosine similarity / tau; the mean over the 2N views."""
    views = torch.cat([z1, z2])
    n = z1.shape[0]
    total = 0.0
    for a in range(2 * n):
        partner = (a + n) % (2 * n)
        sims = [F.cosine_similarity(views[a], views[j], dim=0) / tau for j in range(2 * n)]
        denominator = sum(math.exp(float(sims[j])) for j in range(2 * n) if j != a)
        total += -math.log(math.exp(float(sims[partner])) / denominator)
    return total / (2 * n)


@pytest.mark.parametrize("tau", [0.5, 0.1])
def test_nt_xent_is_its_formula(tau):
    z1, z2 = torch.randn(5, 16), torch.randn(5, 16)
    assert math.isclose(float(nt_xent(z1, z2, tau)), nt_xent_written_out(z1, z2, tau), rel_tol=1e-5)


def test_the_total_loss_is_the_weighted_sum_of_cross_entropy_nt_xent_and_l1():
    logits, k = torch.randn(6, 4), torch.randint(0, 4, (6,))
    p1, p2 = torch.randn(3, 8), torch.randn(3, 8)
    rec, target = torch.rand(6, 1, 4, 4, 4), torch.rand(6, 1, 4, 4, 4)
    terms = SSLLoss(rotation_weight=2.0, contrastive_weight=3.0, reconstruction_weight=4.0)(
        {"rotation": logits, "projection": torch.cat([p1, p2]), "reconstruction": rec},
        {"rotation": k, "reconstruction": target},
    )
    ce = -torch.log_softmax(logits, 1)[torch.arange(6), k].mean()
    l1 = (rec - target).abs().mean()
    assert torch.allclose(terms["rotation"], ce) and torch.allclose(terms["reconstruction"], l1)
    assert math.isclose(float(terms["contrastive"]), nt_xent_written_out(p1, p2, 0.5), rel_tol=1e-5)
    assert torch.allclose(terms["total"], 2 * ce + 3 * terms["contrastive"] + 4 * l1)

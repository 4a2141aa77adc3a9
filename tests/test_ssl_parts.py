"""Pre-training building blocks: SSL network, proxy tasks and loss behave as the paper specifies."""

import pytest
import torch
from monai.losses import ContrastiveLoss
from monai.networks.nets import SwinUNETR
from monai.utils import set_determinism

from scripts.network.pretraining import SSLHead
from scripts.pretraining.loss import SSLLoss
from scripts.pretraining.proxy_tasks import mask, rotate

pytestmark = pytest.mark.usefixtures("seeded")


def test_rotating_back_by_the_target_recovers_each_crop():
    x = torch.rand(6, 1, 8, 8, 8)
    rotated, k = rotate(x)
    assert k.dtype == torch.int64 and set(k.tolist()) <= {0, 1, 2, 3}
    for i in range(6):
        assert torch.equal(rotated[i].rot90(-int(k[i]), dims=(2, 3)), x[i])


def test_rotation_targets_cover_all_four_classes():
    _, k = rotate(torch.rand(64, 1, 4, 4, 4))
    assert set(k.tolist()) == {0, 1, 2, 3}


def test_masking_stays_within_bounds_and_uses_both_fillings():
    x = torch.rand(4, 1, 32, 32, 32) * 0.5 + 0.25
    seen_other = False
    for _ in range(20):
        out, fill = mask(x, max_fraction=0.3, min_side=0.05, max_side=0.25)
        for i in range(4):
            noise = fill[i] == 1
            # per pass: at most 30% of the voxels plus one box of at most 25% of each side
            assert noise.float().mean() <= 0.3 + 0.25**3 + 1e-6
            assert torch.equal(out[i, 0][fill[i] == 0], x[i, 0][fill[i] == 0])
            assert out[i].min() >= 0 and out[i].max() <= 1
            other = fill[i] == 2
            if other.any():
                seen_other = True
                assert (other.float().mean()) <= 0.3 + 0.25**3 + 1e-6
                # copied voxels come from one other crop of the batch, at the same location
                assert any(torch.equal(out[i, 0][other], x[j, 0][other]) for j in range(4) if j != i)
    assert seen_other


def test_masking_is_reproducible_under_set_determinism():
    x = torch.rand(2, 1, 16, 16, 16)
    set_determinism(seed=3)
    a = mask(x)[0]
    set_determinism(seed=3)
    assert torch.equal(a, mask(x)[0])


def test_contrastive_term_equals_monai_contrastive_loss():
    p1, p2 = torch.randn(4, 32), torch.randn(4, 32)
    loss = SSLLoss(temperature=0.5)
    terms = loss(
        {"rotation": torch.randn(8, 4), "projection": torch.cat([p1, p2]), "reconstruction": torch.rand(8, 1, 4, 4, 4)},
        {"rotation": torch.randint(0, 4, (8,)), "reconstruction": torch.rand(8, 1, 4, 4, 4)},
    )
    assert torch.allclose(terms["contrastive"], ContrastiveLoss(temperature=0.5)(p1, p2))
    assert torch.allclose(terms["total"], terms["rotation"] + terms["contrastive"] + terms["reconstruction"])


@pytest.mark.parametrize(
    "feature_size, size", [(12, 64), (24, 64), (48, 64), pytest.param(48, 96, marks=pytest.mark.slow)]
)
def test_ssl_network_output_shapes(feature_size, size):
    net = SSLHead(in_channels=1, feature_size=feature_size).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 1, size, size, size))
    rot, proj, rec = out["rotation"], out["projection"], out["reconstruction"]
    assert rot.shape == (2, 4) and proj.shape == (2, 512) and rec.shape == (2, 1, size, size, size)


def test_encoder_keys_equal_swin_unetr_encoder_keys():
    ssl = {k for k in SSLHead(feature_size=12).state_dict() if k.startswith("swinViT.")}
    unetr = {
        k for k in SwinUNETR(in_channels=1, out_channels=14, feature_size=12).state_dict() if k.startswith("swinViT.")
    }
    assert ssl == unetr

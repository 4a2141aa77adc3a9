"""The proxy heads and views that learn on real CT, and the reference code's kept selectable: the preset sets both
heads (the bundle's: an MLP on the mean of all bottleneck tokens, normalising each crop alone, so a projection does
not depend on the other crops of its batch), the decoder starts alike whatever the heads, shared turns give the two
views of a crop the same target, and a step that would leave contrastive coding no negative is refused before any
compute."""

import pytest
import torch
from monai.bundle import ConfigParser

from scripts.errors import ConfigError
from scripts.network.pretraining import SSLHead, head_preset
from scripts.pretraining.tasks import check_batch
from scripts.pretraining.views import make_views

from conftest import configs


def parsed(**overrides):
    parser = ConfigParser()
    parser.read_config(configs("pretrain.json", "small_pretrain.json"))
    parser.update({"bundle_root": ".", **overrides})
    return parser


def test_the_preset_sets_the_heads_and_the_reference_code_s_stay_selectable():
    bundle = parsed().get_parsed_content("network_def")
    assert (bundle.token_choice, bundle.head_type) == ("pool", "mlp")
    assert isinstance(bundle.contrastive_head[1], torch.nn.LayerNorm)
    linear = parsed(head_type="linear").get_parsed_content("network_def")  # each setting also on its own
    assert (linear.token_choice, linear.head_type) == ("pool", "linear")
    reference = parsed(proxy_heads="reference").get_parsed_content("network_def")
    assert (reference.token_choice, reference.head_type) == ("reference", "linear")
    assert isinstance(reference.rotation_head, torch.nn.Linear) and isinstance(
        reference.contrastive_head, torch.nn.Linear
    )
    with pytest.raises(ConfigError, match="proxy_heads 'pool' is not a valid choice"):
        head_preset("pool")


def test_the_bundle_s_heads_treat_each_crop_alone_in_training_and_in_evaluation():
    torch.manual_seed(0)
    network = SSLHead(
        feature_size=12, window_size=4, token_choice="pool", head_type="mlp", tasks=["rotation", "contrastive"]
    )
    crops = torch.rand(3, 1, 64, 64, 64)
    for mode in (network.train, network.eval):
        mode()
        with torch.no_grad():
            together = network(x=crops)
            alone = network(x=crops[1:2])
        for key in ("rotation", "projection"):
            assert torch.allclose(together[key][1:2], alone[key], atol=1e-5), key


def test_the_bundle_s_heads_read_the_mean_token_through_the_mlp():
    torch.manual_seed(0)
    network = SSLHead(feature_size=12, window_size=4, token_choice="pool", head_type="mlp").eval()
    x = torch.rand(2, 1, 64, 64, 64)
    with torch.no_grad():
        out = network(x=x)
        mean = network.swinViT(x)[4].mean((2, 3, 4))
    assert torch.allclose(out["projection"], network.contrastive_head(mean), atol=1e-6)
    assert [type(m).__name__ for m in network.contrastive_head] == ["Linear", "LayerNorm", "GELU", "Linear"]


def test_shared_turns_give_both_views_of_a_crop_the_same_target_and_differ_only_where_masked(seeded):
    x = torch.rand(4, 1, 16, 16, 16)
    views, k, targets = make_views(x, view_rotation="shared")
    assert torch.equal(k[:4], k[4:]) and torch.equal(targets[:4], targets[4:])
    assert not torch.equal(views[:4], views[4:])  # masked independently
    _, k_independent, _ = make_views(torch.rand(64, 1, 16, 16, 16))
    assert not torch.equal(k_independent[:64], k_independent[64:])  # the reference: each view its own turn


def test_shared_turns_rotate_the_crop_before_masking(seeded):
    x = torch.rand(2, 1, 16, 16, 16)
    views, k, targets = make_views(x, max_fraction=0.0, view_rotation="shared")
    for i in range(2):  # with nothing masked a view is its crop turned by its target
        assert torch.equal(views[i], x[i].rot90(int(k[i]), dims=(2, 3)))


def test_a_step_of_one_crop_is_refused_for_contrastive_coding_and_allowed_without_it():
    with pytest.raises(ConfigError, match="1 crop per step: contrastive coding needs two"):
        check_batch(["inpainting", "rotation", "contrastive"], batch_size=1, num_samples=1)
    check_batch(["inpainting", "rotation"], batch_size=1, num_samples=1)
    check_batch(["contrastive"], batch_size=1, num_samples=1, ranks=2, gather=True)  # the other rank's crop
    with pytest.raises(ConfigError, match="1 crop per step"):
        check_batch(["contrastive"], batch_size=1, num_samples=1, ranks=2, gather=False)


def test_fewer_usable_volumes_than_a_batch_are_refused_since_partial_batches_are_dropped():
    with pytest.raises(ConfigError, match="1 usable pre-training volumes, fewer than batch_size 2"):
        check_batch(["contrastive"], batch_size=2, num_samples=1, volumes=1)
    with pytest.raises(ConfigError, match="2 usable pre-training volumes over 2 processes"):
        check_batch(["contrastive"], batch_size=2, num_samples=1, volumes=2, ranks=2, gather=True)
    check_batch(["contrastive"], batch_size=2, num_samples=1, volumes=3, ranks=2, gather=True)  # padded to 2 each
    parser = parsed()
    assert parser.get("train#dataloader#drop_last") is True
    assert "@batch_check" in parser.get("initialize") and parser.get("batch_check#volumes") == "$len(@train#data)"


def test_the_encoder_and_decoder_start_alike_whatever_the_heads():
    """Comparisons of heads are fair only if the rest starts from the same draw (a seed, two head choices)."""
    starts = []
    for preset in ("reference", "pooled_mlp"):
        torch.manual_seed(0)
        network = SSLHead(feature_size=12, window_size=4, **head_preset(preset))
        starts.append({k: v for k, v in network.state_dict().items() if not k.startswith(("rotation", "contrastive"))})
    assert starts[0].keys() == starts[1].keys()
    assert all(torch.equal(starts[0][k], starts[1][k]) for k in starts[0])

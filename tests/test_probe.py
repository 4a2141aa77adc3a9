"""The pre-training probe scores what it claims: every crop in all four turns (a constant head scores exactly
chance, a head that sees the turn scores 1), the same crops at every validation, chance levels beside the scores,
collapse of constant projections, a row per validation in probe.csv with a JSON report beside it, and no rotation
head, however trained, above chance when its encoder gives every crop the same token."""

import json
from types import SimpleNamespace

import pytest
import torch

from scripts.network.pretraining import SSLHead
from scripts.pretraining.probe import ProxyProbe

SIDE = 32


def volume(seed: int) -> dict:
    """A volume exactly one crop in size with one bright voxel near a corner of the y-z (rotation) plane."""
    image = torch.rand(1, SIDE, SIDE, SIDE, generator=torch.Generator().manual_seed(seed)) * 0.1
    image[0, SIDE // 2, 1, 2] = 5.0
    return {"image": image}


def corner_turn(x: torch.Tensor) -> torch.Tensor:
    """The quarter turn k that moved the bright voxel of each crop (B, 1, X, Y, Z) where it is."""
    reference = volume(0)["image"]
    corners = [int(reference.rot90(k, dims=(2, 3))[0, SIDE // 2].argmax()) for k in range(4)]
    assert len(set(corners)) == 4  # the four turns put the voxel in four different places
    found = [int(c) for c in x[:, 0, SIDE // 2].flatten(1).argmax(1)]
    return torch.tensor([corners.index(c) if c in corners else 0 for c in found])  # masked views: any answer


class FakeSSL(torch.nn.Module):
    """Outputs like SSLHead's with the paper's tasks: the rotation head answers ``answer(x)``."""

    def __init__(self, answer, projection=None):
        super().__init__()
        self.answer, self.projection, self.weight = answer, projection, torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        logits = torch.nn.functional.one_hot(self.answer(x), 4).float()
        projection = self.projection(x) if self.projection else x.flatten(1)[:, :16]
        return {"rotation": logits, "projection": projection, "reconstruction": x}


def probe(network, tmp_path, volumes=3, crops=2) -> ProxyProbe:
    return ProxyProbe(network, [volume(i) for i in range(volumes)], [SIDE] * 3, crops, str(tmp_path), seed=0)


def test_a_constant_rotation_head_scores_exactly_chance_on_every_crop_in_all_four_turns(tmp_path):
    report = probe(FakeSSL(lambda x: torch.full((x.shape[0],), 3)), tmp_path).measure("cpu")
    rotation = report["rotation"]
    assert rotation["n"] == 3 * 2 * 4 and rotation["accuracy"] == 0.25
    assert [sum(row) for row in rotation["confusion"]] == [6, 6, 6, 6]  # balanced by construction
    assert rotation["p_value"] > 0.05 and rotation["interval"][0] < 0.25


def test_a_head_that_sees_the_turn_scores_one_so_the_targets_are_the_turns_applied(tmp_path):
    report = probe(FakeSSL(corner_turn), tmp_path).measure("cpu")
    assert report["rotation"]["accuracy"] == 1.0 and report["rotation"]["p_value"] < 1e-10


def test_the_same_crops_at_every_validation_and_chance_levels_beside_the_scores(tmp_path):
    network = FakeSSL(lambda x: torch.zeros(x.shape[0], dtype=torch.long))
    first, second = probe(network, tmp_path).measure("cpu"), probe(network, tmp_path).measure("cpu")
    assert first == second
    assert first["contrastive"]["chance"] == 1 / 6 and first["contrastive"]["crops"] == 6
    # an identity "reconstruction" is exactly as good as leaving the masked input
    assert first["inpainting"]["l1_masked"] == first["inpainting"]["l1_masked_input"] > 0


def test_constant_projections_read_as_collapsed(tmp_path):
    collapsed = FakeSSL(lambda x: torch.zeros(x.shape[0], dtype=torch.long), lambda x: torch.ones(x.shape[0], 16))
    report = probe(collapsed, tmp_path).measure("cpu")
    assert report["collapse"]["std"] == 0 and report["collapse"]["effective_rank"] < 1.01
    assert report["contrastive"]["top1"] <= 0.5  # every similarity ties: no better than the first index


def test_each_validation_adds_a_row_to_probe_csv_and_a_json_report(tmp_path):
    handler = probe(FakeSSL(corner_turn), tmp_path)
    for epoch in (1, 2):
        engine = SimpleNamespace(
            state=SimpleNamespace(metrics={"val_reconstruction_l1": 0.1}, epoch=epoch, device="cpu")
        )
        handler(engine)
        assert (
            engine.state.metrics["val_probe_rotation_accuracy"] == 1.0
            and "val_reconstruction_l1" in engine.state.metrics
        )
    rows = (tmp_path / "probe.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("epoch,val_probe_rotation_accuracy")
    report = json.loads((tmp_path / "probe" / "epoch_2.json").read_text())
    assert report["views"] == 24 and report["rotation"]["confusion"][1] == [0, 6, 0, 0]


class ConstantEncoder(torch.nn.Module):
    """Stands in for ``swinViT``: the same bottleneck features (B, 16f, 2, 2, 2) whatever the crop."""

    def forward(self, x):
        return [None] * 4 + [torch.linspace(-1, 1, 192 * 8).reshape(1, 192, 2, 2, 2).expand(x.shape[0], -1, -1, -1, -1)]


@pytest.mark.parametrize("head_type", ["linear", "mlp"])
def test_a_rotation_head_fed_a_constant_token_cannot_beat_chance_however_trained(tmp_path, head_type):
    torch.manual_seed(0)
    network = SSLHead(feature_size=12, window_size=4, head_type=head_type, tasks=["rotation"])
    network.swinViT = ConstantEncoder()
    optimizer = torch.optim.AdamW(network.rotation_head.parameters(), lr=0.01)
    for _ in range(20):  # trained towards the turns seen most often in a skewed stream
        logits = network(x=torch.zeros(4, 1, 64, 64, 64))["rotation"]
        torch.nn.functional.cross_entropy(logits, torch.tensor([1, 1, 1, 2])).backward()
        optimizer.step()
        optimizer.zero_grad()
    volumes = [{"image": torch.rand(1, 64, 64, 64, generator=torch.Generator().manual_seed(i))} for i in range(3)]
    probe = ProxyProbe(network, volumes, [64] * 3, 2, str(tmp_path), tasks=["rotation"])
    rotation = probe.measure("cpu")["rotation"]
    assert rotation["n"] == 24 and rotation["accuracy"] == 0.25 and rotation["p_value"] > 0.5

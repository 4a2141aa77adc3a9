"""The pre-training probe's statistics mean what they say: chance is 0.25 on balanced rotations, the interval and
p-value match known values, parity exposes an anisotropy-only head, collapse separates one direction from many,
and projections collapsed to one direction give NT-Xent's value ln(2N - 1) exactly."""

import math

import pytest
import torch

from scripts.pretraining.chance import (
    binomial_p_value,
    collapse_report,
    contrastive_collapse_loss,
    rotation_report,
    wilson_interval,
)
from scripts.pretraining.loss import nt_xent


def balanced_targets(crops: int) -> torch.Tensor:
    return torch.arange(4).repeat(crops)  # all four quarter turns of every crop


def test_a_constant_predictor_scores_exactly_chance_and_an_oracle_one():
    target = balanced_targets(40)
    constant = rotation_report(torch.full_like(target, 2), target)
    assert constant["accuracy"] == 0.25 and constant["n"] == 160
    assert constant["interval"][0] < 0.25 < constant["interval"][1] and constant["p_value"] > 0.4
    assert constant["confusion"][2] == [0, 0, 40, 0] and sum(row[2] for row in constant["confusion"]) == 160
    oracle = rotation_report(target, target)
    assert oracle["accuracy"] == 1.0 and oracle["interval"][0] > 0.97 and oracle["p_value"] < 1e-90


def test_the_wilson_interval_and_the_binomial_p_value_match_published_values():
    # Wilson (1927) / Newcombe (1998) example: 3 of 10 -> [0.108, 0.603]; 81 of 263 -> [0.2553, 0.3662]
    assert wilson_interval(3, 10) == pytest.approx((0.1078, 0.6032), abs=1e-4)
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert binomial_p_value(5, 10, 0.5) == pytest.approx(0.623046875)  # 638/1024
    assert binomial_p_value(0, 10) == pytest.approx(1.0) and binomial_p_value(10, 10) == pytest.approx(0.25**10)


def test_a_head_that_reads_only_the_anisotropy_is_exposed_by_its_parity_score():
    target = balanced_targets(40)
    parity_only = target % 2 * 3  # tells odd from even turns (which swap the 1.5 / 2.0 mm axes), nothing more
    report = rotation_report(parity_only, target)
    assert report["accuracy"] == 0.5 and report["parity_accuracy"] == 1.0
    assert rotation_report(target, target)["parity_accuracy"] == 1.0
    assert rotation_report(torch.full_like(target, 1), target)["parity_accuracy"] == 0.5


def test_collapse_separates_one_direction_from_spread_embeddings():
    torch.manual_seed(0)
    spread = collapse_report(torch.randn(256, 64))
    collapsed = collapse_report(torch.ones(256, 64) + 1e-6 * torch.randn(256, 64))
    assert spread["healthy_std"] == pytest.approx(1 / 8)
    assert spread["std"] == pytest.approx(1 / 8, rel=0.1) and collapsed["std"] < 1e-4
    assert spread["effective_rank"] > 40 and collapsed["effective_rank"] < spread["effective_rank"] / 2


@pytest.mark.parametrize("crops", [2, 3, 8])
def test_projections_pointing_one_way_give_exactly_the_collapse_value_of_nt_xent_and_are_flagged(crops):
    one_way = torch.ones(crops, 32) * torch.arange(1, crops + 1)[:, None]  # different lengths, one direction
    for temperature in (0.1, 0.5):
        assert float(nt_xent(one_way, 2 * one_way, temperature)) == pytest.approx(math.log(2 * crops - 1), abs=1e-6)
    assert contrastive_collapse_loss(crops) == pytest.approx(math.log(2 * crops - 1))
    assert collapse_report(torch.cat([one_way, one_way]))["collapsed"]
    # views that agree and crops that differ: below the collapse value, and not flagged
    torch.manual_seed(crops)
    spread = torch.randn(crops, 32)
    assert float(nt_xent(spread, spread + 0.01 * torch.randn(crops, 32))) < math.log(2 * crops - 1) - 0.3
    assert not collapse_report(torch.cat([spread, spread]))["collapsed"]

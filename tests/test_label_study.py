"""The label-efficiency study: every cell fine-tuned and evaluated on the same held-out list, nested label subsets,
a rerun that skips finished cells, and the CSV, plot and paired table written (at tiny size)."""

import csv

import pytest
import torch
from test_weights import encoder_of, small_net

from scripts.tools.label_study import bootstrap_interval, paired_table, study

from conftest import SMALL_WINDOW


@pytest.mark.slow
def test_a_study_fine_tunes_every_cell_once_keeps_subsets_nested_and_writes_its_tables(tmp_path, phantoms, capsys):
    encoder = tmp_path / "ssl_encoder.pt"
    torch.save(encoder_of(small_net(3, window_size=SMALL_WINDOW).state_dict()), encoder)
    options = {
        "datalist": str(phantoms / "dataset.json"),
        "dataset_dir": str(phantoms),
        "out_dir": str(tmp_path / "study"),
        "encoders": ["scratch", str(encoder)],
        "counts": [1, 2],
        "seeds": [0],
        "overlays": ["small.json"],
        "max_epochs": 1,
    }
    results = study(**options)
    assert len(results) == 4 and all(0 <= r["dice"]["mean"] <= 1 for r in results)
    one, two = (next(r for r in results if r["encoder"] == "scratch" and r["count"] == n) for n in (1, 2))
    assert len(one["training_cases"]) == 1 and set(one["training_cases"]) < set(two["training_cases"])
    assert {tuple(r["training_cases"]) for r in results if r["count"] == 2} == {tuple(two["training_cases"])}
    with open(tmp_path / "study" / "study.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {"encoder", "count", "seed", "mean_dice", "spleen"} <= set(rows[0])
    assert (tmp_path / "study" / "study.png").read_bytes()[:4] == b"\x89PNG"
    with open(tmp_path / "study" / "paired.csv") as f:
        assert [int(r["count"]) for r in csv.DictReader(f)] == [1, 2]
    # a rerun after a kill: the finished cells are not fine-tuned again
    (tmp_path / "study" / "cells" / "ssl_encoder_n2_s0" / "result.json").unlink()
    capsys.readouterr()
    study(**options)
    out = capsys.readouterr().out
    assert out.count("finished earlier") == 3 and "ssl_encoder_n2_s0: mean Dice" in out


def test_the_paired_table_subtracts_scratch_seed_by_seed():
    results = [
        {"encoder": e, "count": 4, "seed": s, "dice": {"mean": base + gain}}
        for s, base in enumerate([0.5, 0.6, 0.7])
        for e, gain in (("scratch", 0.0), ("ssl.pt", 0.1))
    ]
    (row,) = paired_table(results)
    assert row["encoder"] == "ssl.pt" and row["seeds"] == 3 and row["mean_difference"] == pytest.approx(0.1)
    assert row["low"] == pytest.approx(0.1) and row["high"] == pytest.approx(0.1)  # the same gain on every seed
    low, high = bootstrap_interval([0.0, 1.0, 0.0, 1.0])
    assert 0 <= low < 0.5 < high <= 1

"""The label-efficiency study: every cell fine-tuned and evaluated on the same held-out list, nested label subsets,
a rerun that skips finished cells, and the CSV, plot and paired table written (at tiny size)."""

import csv
import os

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
        "counts": [2],
        "seeds": [0],
        "overlays": ["small.json"],
        "max_epochs": 1,
        "workers": 2,  # the two cells side by side, each with one of the two cores
    }
    results = study(**options)
    assert len(results) == 2 and all(0 <= r["dice"]["mean"] <= 1 for r in results)
    scratch, encoded = results
    assert len(scratch["training_cases"]) == 2 and scratch["training_cases"] == encoded["training_cases"]
    with open(tmp_path / "study" / "study.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and {"encoder", "count", "seed", "mean_dice", "spleen"} <= set(rows[0])
    assert (tmp_path / "study" / "study.png").read_bytes()[:4] == b"\x89PNG"
    with open(tmp_path / "study" / "paired.csv") as f:
        assert [int(r["count"]) for r in csv.DictReader(f)] == [2]
    # a rerun after a kill: the finished cells are not fine-tuned again
    (tmp_path / "study" / "cells" / "ssl_encoder_n2_s0" / "result.json").unlink()
    capsys.readouterr()
    study(**options)
    out = capsys.readouterr().out
    assert out.count("finished earlier") == 1 and "ssl_encoder_n2_s0: mean Dice" in out


def test_smaller_label_sets_are_subsets_of_larger_ones(phantoms):
    from scripts.tools.label_study import training_cases

    sets = [set(training_cases(str(phantoms / "dataset.json"), n, split_seed=0)) for n in (1, 2, 3, 4)]
    assert [len(s) for s in sets] == [1, 2, 3, 4] and sets[0] < sets[1] < sets[2] < sets[3]


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


def test_an_iteration_budget_gives_every_count_the_same_steps_and_warm_up():
    from scripts.errors import ConfigError
    from scripts.tools.label_study import iteration_budget

    for count in (2, 4, 8):
        budget = iteration_budget(120, count)
        assert budget["max_epochs"] * count == 120 and budget["val_interval"] == budget["max_epochs"]
        # train.json's warm-up in steps: round(warmup_epochs / max_epochs * max_epochs * steps per epoch)
        assert round(budget["warmup_epochs"] * count) == 7
    with pytest.raises(ConfigError, match="multiple"):
        iteration_budget(100, 8)


def test_cells_side_by_side_split_the_cores_between_them():
    from scripts.tools.label_study import worker_env

    assert worker_env(2, cpus=2)["OMP_NUM_THREADS"] == "1" and worker_env(2, cpus=16)["MKL_NUM_THREADS"] == "8"
    assert worker_env(4, cpus=2)["OMP_NUM_THREADS"] == "1"  # never zero threads
    assert worker_env(1, cpus=2) == dict(os.environ)  # one cell at a time: PyTorch picks its threads itself


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failed_cell_stops_the_study_and_no_later_cell_starts(tmp_path, phantoms, monkeypatch, workers):
    import scripts.tools.label_study as label_study

    started = []

    def fake_cell(encoder, count, seed, *args):
        started.append((count, seed))
        if (count, seed) == (2, 0):
            raise RuntimeError("cell diverged")
        return {"encoder": encoder, "count": count, "seed": seed, "dice": {"mean": 0.5}}

    monkeypatch.setattr(label_study, "run_cell", fake_cell)
    options = {"encoders": ["scratch"], "counts": [2, 3], "seeds": [0, 1, 2], "workers": workers}
    with pytest.raises(RuntimeError, match="diverged"):
        study(str(phantoms / "dataset.json"), str(phantoms), out_dir=str(tmp_path / "study"), **options)
    assert sorted(started) == [(2, 0), (2, 1)][:workers]  # only the cells already running when it failed

"""Progress of long runs: an ETA from this run's own rate."""

from __future__ import annotations

import logging

from ignite.engine import Engine

from scripts.training.progress import EtaLogger, duration, warn_if_paper_size_on_cpu


def test_duration_reads_as_clock_time_with_days():
    assert duration(0) == "00:00:00"
    assert duration(3 * 3600 + 2 * 60 + 1.4) == "03:02:01"
    assert duration(2 * 86400 + 5) == "2d 00:00:05"


def test_eta_from_this_runs_rate_every_interval_iterations(caplog):
    """Each iteration takes 10 s on the fake clock; a resumed run (from iteration 4) counts only its own."""
    now = [0.0]
    engine = Engine(lambda engine, batch: now.__setitem__(0, now[0] + 10.0))
    EtaLogger(interval=2, total_iterations=10, clock=lambda: now[0]).attach(engine)
    engine.state.iteration, engine.state.epoch = 4, 2  # as CheckpointLoader leaves a resumed run
    engine.state.max_epochs, engine.state.epoch_length = 5, 2
    with caplog.at_level(logging.INFO, logger="scripts.training.progress"):
        engine.run([0, 1], max_epochs=5)
    lines = [r.getMessage() for r in caplog.records if r.name == "scripts.training.progress"]
    assert lines[0] == "iteration 6/10 (60.0%), epoch 3, elapsed 00:00:20, ETA 00:00:40"
    assert lines[-1].startswith("iteration 10/10 (100.0%)") and lines[-1].endswith("ETA 00:00:00")
    assert len(lines) == 3


def test_without_an_interval_it_logs_once_per_epoch(caplog):
    engine = Engine(lambda engine, batch: None)
    EtaLogger().attach(engine)
    with caplog.at_level(logging.INFO, logger="scripts.training.progress"):
        engine.run(range(3), max_epochs=2)
    lines = [r.getMessage() for r in caplog.records if r.name == "scripts.training.progress"]
    assert [line.split(",")[0] for line in lines] == ["iteration 3/6 (50.0%)", "iteration 6/6 (100.0%)"]


def test_the_papers_network_size_on_a_cpu_is_warned_naming_the_cpu_overlay(caplog):
    """pretrain.json alone is 100,000 full-size iterations: on a CPU the start says so and names the overlay."""
    with caplog.at_level(logging.WARNING):
        assert warn_if_paper_size_on_cpu("cpu", 48, [96, 96, 96], "small_pretrain")
    assert "feature_size 48 with 96x96x96 crops on the CPU" in caplog.text
    assert "configs/small_pretrain.json" in caplog.text
    caplog.clear()
    assert not warn_if_paper_size_on_cpu("cpu", 12, [64, 64, 64], "small")  # the CPU overlays' size
    assert not warn_if_paper_size_on_cpu("cuda:0", 48, [96, 96, 96], "small")
    assert not caplog.text

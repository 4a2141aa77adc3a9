"""The benchmark's figures users plan with: memory peaks per measurement, the pre-training loop's split into
waiting for data and stepping, and the planning table it writes into the docs."""

from __future__ import annotations

import json
import time

import pytest
import torch
from ignite.engine import Engine

from scripts.errors import InputError
from scripts.tools import planning
from scripts.tools.benchmark import peak_gib, reset_peak, run
from scripts.tools.pretrain_loop import _timed_run

from conftest import ROOT

PAGE = "\n".join(["# Measurements", "", "intro", "", planning.START, *planning.HEADER, planning.END, "", "after", ""])


def test_the_cpu_peak_is_the_peak_of_each_measurement_not_of_the_process():
    cpu = torch.device("cpu")
    reset_peak(cpu)
    base = peak_gib(cpu)
    big = torch.ones(100 * 2**20)  # 400 MiB, touched
    del big
    assert peak_gib(cpu) - base > 0.35
    reset_peak(cpu)  # a new measurement no longer sees the freed tensor
    assert peak_gib(cpu) - base < 0.2


class _SlowData:
    """Passes of 3 batches, each taking ``wait`` s to arrive."""

    def __init__(self, wait: float):
        self.wait = wait

    def __iter__(self):
        for _ in range(3):
            time.sleep(self.wait)
            yield {"image": torch.zeros(1)}


class _SlowLoop(Engine):
    """A trainer whose batches take ``wait`` s to arrive and whose step takes ``step`` s."""

    def __init__(self, wait: float, step: float, length: int):
        super().__init__(lambda engine, batch: time.sleep(step))
        self.data_loader, self.length = _SlowData(wait), length
        self.state.device = torch.device("cpu")

    def run(self):
        return super().run(self.data_loader, max_epochs=1, epoch_length=self.length)


def test_a_loop_waiting_for_data_shows_it_and_a_fed_loop_keeps_the_device_busy():
    starved = _timed_run(_SlowLoop(wait=0.1, step=0.05, length=5), warmup=1, iterations=4)
    assert starved["data_wait_s"] == pytest.approx(0.1, abs=0.04)
    assert starved["step_s"] == pytest.approx(0.05, abs=0.03)
    assert starved["busy_fraction"] == pytest.approx(1 / 3, abs=0.12)
    assert starved["network_only_s"] == pytest.approx(0.05, abs=0.03)  # the step alone, no loader
    assert starved["throughput_ratio"] == pytest.approx(1 / 3, abs=0.12)
    assert starved["loader_only_s"] == pytest.approx(0.1, abs=0.04)  # across the loader's passes
    fed = _timed_run(_SlowLoop(wait=0.0, step=0.05, length=5), warmup=1, iterations=4)
    assert fed["busy_fraction"] > 0.9 and fed["throughput_ratio"] > 0.85


def test_the_loop_must_run_the_iterations_it_was_asked_for():
    short = _SlowLoop(wait=0.0, step=0.0, length=2)
    with pytest.raises(RuntimeError, match="ran 2 iterations, expected 4"):
        _timed_run(short, warmup=1, iterations=3)


def test_planning_rows_replace_their_own_measurement_and_keep_the_rest(tmp_path):
    page = tmp_path / "measurements.md"
    page.write_text(PAGE)
    first = run(feature_size=12, roi=64, window_size=4, volume=64, tasks="infer", variants="plain,bundle",
                repeats=1, warmup=0, out=None, docs=str(page))  # fmt: skip
    text = page.read_text()
    assert text.startswith("# Measurements\n\nintro\n") and text.endswith("\nafter\n")
    rows = [line for line in text.splitlines() if line.startswith("| 2")]
    assert len(rows) == 2
    assert all(first["settings"]["machine"] in r and "segment one volume" in r and "64x64x64 voxels" in r for r in rows)
    assert "| plain |" in rows[0] and "| bundle |" in rows[1] and "labels vs plain: lowest Dice" in rows[1]
    assert all(0.2 < first["tasks"]["infer"][v]["peak_gib"] < 20 for v in ("plain", "bundle"))  # the process's
    planning.write(page, [rows[0][:-2] + "again |"])  # plain measured again
    again = [line for line in page.read_text().splitlines() if line.startswith("| 2")]
    assert len(again) == 2 and again[0] == rows[1] and again[1].endswith("again |")
    other = rows[0].replace("window 4", "window 2")
    planning.write(page, [other])
    assert len([line for line in page.read_text().splitlines() if line.startswith("| 2")]) == 3


def test_a_page_without_the_planning_table_is_named(tmp_path):
    page = tmp_path / "notes.md"
    page.write_text("# Notes\n")
    with pytest.raises(InputError, match=r"notes.md: no planning table"):
        planning.write(page, ["| a | b | c | d | e |"])


def test_the_measurements_page_has_its_planning_table():
    text = (ROOT / "docs" / "measurements.md").read_text()
    assert text.count(planning.START) == 1 and text.count(planning.END) == 1
    assert text.index(planning.START) < text.index(planning.END)


@pytest.mark.slow
def test_the_loop_benchmark_runs_the_bundles_own_pretraining_on_each_loader(phantoms, tmp_path):
    page = tmp_path / "measurements.md"
    page.write_text(PAGE)
    out = tmp_path / "benchmark.json"
    run(feature_size=12, roi=64, window_size=4, batch=2, crops=1, pixdim=(4.0, 4.0, 4.0), tasks="pretrain_loop",
        data=str(phantoms / "dataset.json"), loaders="process,thread", loop_overrides={"num_workers": 1},
        repeats=2, warmup=1, out=str(out), docs=str(page))  # fmt: skip
    loop = json.loads(out.read_text())["loop"]
    assert set(loop) == {"process", "thread"}
    for figures in loop.values():
        assert figures["num_workers"] == 1 and figures["iterations"] == 2
        assert 0 < figures["busy_fraction"] <= 1 and figures["throughput_ratio"] > 0.3
        assert figures["step_s"] + figures["data_wait_s"] <= figures["loop_s"] * 1.01
        assert figures["peak_gib"] > 0.2 and 0 < figures["loader_only_s"] < figures["loop_s"]
    rows = [line for line in page.read_text().splitlines() if "pre-training loop, end to end" in line]
    assert len(rows) == 2 and "process loader, 1 workers, num_workers 1" in rows[0] and "device busy" in rows[0]

"""A training run owns its output folder: a second run on it is refused, a dead run's lock is taken over."""

import json
import os
import socket
import subprocess
import sys

import pytest

from scripts.training.run_lock import LOCK_NAME, FolderInUseError, RunLock

from conftest import bundle_run


def foreign_lock(folder, pid, host=None):
    folder.mkdir(parents=True, exist_ok=True)
    holder = {"pid": pid, "host": host or socket.gethostname(), "started": "2026-11-26 10:00:00"}
    (folder / LOCK_NAME).write_text(json.dumps(holder))


def a_live_pid():
    """Another process that runs for the test's duration."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_a_folder_held_by_a_running_process_is_refused_in_one_line(tmp_path):
    other = a_live_pid()
    try:
        foreign_lock(tmp_path, other.pid)
        with pytest.raises(FolderInUseError, match=rf"in use by another run \(pid {other.pid} on "):
            RunLock(str(tmp_path)).acquire()
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == other.pid  # left alone
    finally:
        other.kill()


def test_the_lock_of_a_process_that_no_longer_runs_is_taken_over_with_a_warning(tmp_path, caplog):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    foreign_lock(tmp_path, gone.pid)
    lock = RunLock(str(tmp_path)).acquire()
    assert f"taking over the lock of process {gone.pid}" in caplog.text
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_lock_from_another_host_is_never_taken_over(tmp_path):
    foreign_lock(tmp_path, 1, host="another-node")
    with pytest.raises(FolderInUseError, match="pid 1 on another-node.*delete .*run.lock if that run is gone"):
        RunLock(str(tmp_path)).acquire()


def test_release_only_removes_the_own_lock(tmp_path):
    other = a_live_pid()
    try:
        foreign_lock(tmp_path, other.pid)
        RunLock(str(tmp_path)).release()  # never acquired: must not remove the other run's lock
        assert (tmp_path / LOCK_NAME).exists()
    finally:
        other.kill()


@pytest.mark.slow
def test_a_second_fine_tuning_run_on_a_busy_output_dir_stops_before_any_work(phantoms, tmp_path):
    other = a_live_pid()
    try:
        runs = tmp_path / "runs"
        foreign_lock(runs, other.pid)
        proc = bundle_run(
            ["train.json", "small.json"],
            {"dataset_dir": phantoms, "output_dir": runs, "ckpt_dir": tmp_path / "models", "num_workers": 0},
            check=False,
        )
    finally:
        other.kill()
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"ERROR: output_dir {runs} is in use by another run (pid {other.pid}" in proc.stderr
    assert sorted(p.name for p in runs.iterdir()) == [LOCK_NAME] and not (tmp_path / "models").exists()

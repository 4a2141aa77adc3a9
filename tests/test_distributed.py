"""Multi-process training with torchrun (2 CPU processes, Gloo): the multi_gpu_* overlays run pre-training,
fine-tuning and evaluation to the same results a single process would give, with rank 0 the only writer."""

import csv
import datetime
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from scripts.pretraining.loss import nt_xent

from conftest import ROOT, TORCH_WINDOWS, bundle_run, configs

WORLD = 2
# Written on every rank at the end of a run: its weights and the handler types attached to its trainer.
RANK_REPORT = {
    "finalize": [
        "$torch.save(scripts.distributed.unwrap_model(@network).state_dict(), "
        "@output_dir + '/weights_rank' + str(scripts.distributed.rank()) + '.pt')",
        "$open(@output_dir + '/handlers_rank' + str(scripts.distributed.rank()) + '.txt', 'w').write("
        "' '.join(sorted({type(getattr(h[0], '__self__', h[0])).__name__ "
        "for hs in @train#trainer._event_handlers.values() for h in hs})))",
        "$scripts.distributed.cleanup()",
    ]
}
WRITERS = {"AtomicCheckpointSaver", "StatsHandler"}


def torchrun(tmp_path, config_names, overrides, nproc=WORLD) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=nproc -m monai.bundle run`` with the rank report overlay (PyTorch's
    windows, as ``bundle_run``)."""
    report = tmp_path / "rank_report.json"
    report.write_text(json.dumps(RANK_REPORT))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(configs(*config_names) + [str(report)]),
    ]
    if {"inference.json", "evaluate.json"} & set(config_names):
        overrides = {**TORCH_WINDOWS, **overrides}
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def assert_ranks_agree(out_dir, rank0_writers):
    """Both ranks hold identical weights; only rank 0 has MONAI's writing handlers (the bundle's own writers,
    ``rank0_writers``, are on rank 0 and check the rank themselves: the files they write are checked by the callers).
    """
    weights = [torch.load(out_dir / f"weights_rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert weights[0].keys() == weights[1].keys()
    for key, value in weights[0].items():
        assert torch.equal(value, weights[1][key]), key
        assert torch.isfinite(value).all(), key
    handlers = [set((out_dir / f"handlers_rank{r}.txt").read_text().split()) for r in range(WORLD)]
    assert rank0_writers <= handlers[0] and not handlers[1] & WRITERS
    assert {"StopOnNonFiniteLoss", "LrScheduleHandler"} <= handlers[1]


PRETRAIN = ["pretrain.json", "small_pretrain.json", "multi_gpu_pretrain.json"]


def short_pretraining(phantoms, tmp_path, **overrides) -> dict:
    """Two iterations on the phantoms, validation at the end, a snapshot and a loss row at every iteration."""
    return {
        "dataset_dir": phantoms,
        "val_sources": [str(phantoms / "imagesTr" / "phantom_00[01].nii.gz")],
        "output_dir": tmp_path / "runs",
        "ckpt_dir": tmp_path / "models",
        "max_iterations": 2,
        "val_interval": 2,
        "image_interval": 1,
        "log_interval": 1,
        "num_samples": 1,
        **overrides,
    }


@pytest.mark.slow
def test_pretraining_on_two_processes_runs_resumes_and_keeps_the_ranks_in_step(phantoms, tmp_path):
    runs = tmp_path / "runs"
    overrides = short_pretraining(phantoms, tmp_path, ckpt_interval=1)
    first = torchrun(tmp_path, PRETRAIN, {**overrides, "train#trainer#max_epochs": 1})
    assert "2 processes (gloo backend)" in first.stdout + first.stderr
    second = torchrun(tmp_path, PRETRAIN, {**overrides, "resume": True})
    assert "Restored all variables from" in second.stdout + second.stderr
    final = torch.load(runs / "checkpoints" / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    assert final["trainer"]["iteration"] == 2
    assert_ranks_agree(runs, {"LossHistory", "ReconstructionSnapshots"})
    # one writer, and the resumed run went on at iteration 2: one CSV row per iteration, one snapshot each
    with open(runs / "losses.csv") as f:
        assert [row["iteration"] for row in csv.DictReader(f)] == ["1", "2"]
    assert sorted(p.name for p in (runs / "images").iterdir()) == ["iteration_0000001.png", "iteration_0000002.png"]
    assert len({p.name.rsplit(".", 2)[1] for p in runs.glob("events.out.tfevents.*")}) == 2  # one process per run
    assert (tmp_path / "models" / "ssl_encoder.pt").exists()


@pytest.mark.slow
def test_pretraining_with_all_four_proxy_tasks_on_two_processes_keeps_the_ranks_in_step(phantoms, tmp_path):
    runs = tmp_path / "runs"
    every_task = "['inpainting','rotation','contrastive','mim']"
    torchrun(tmp_path, PRETRAIN, short_pretraining(phantoms, tmp_path, ckpt_interval=2, proxy_tasks=every_task))
    assert_ranks_agree(runs, {"LossHistory", "ReconstructionSnapshots"})
    assert "mask_token" in torch.load(runs / "weights_rank0.pt", weights_only=True)
    with open(runs / "losses.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["iteration"] for r in rows] == ["1", "2"] and all(float(r["mim"]) > 0 for r in rows)
    assert (tmp_path / "models" / "ssl_encoder.pt").exists()


@pytest.mark.slow
def test_fine_tuning_on_two_processes_keeps_the_ranks_in_step(phantoms, tmp_path):
    datalist = two_validation_cases(phantoms, tmp_path)
    out = tmp_path / "runs"
    torchrun(
        tmp_path,
        ["train.json", "small.json", "multi_gpu_train.json"],
        {
            "dataset_dir": phantoms,
            "datalist": datalist,
            "output_dir": out,
            "ckpt_dir": tmp_path / "models",
            "max_epochs": 1,
            "val_interval": 1,
            "num_workers": 0,
        },
    )
    final = torch.load(out / "checkpoints" / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    assert final["trainer"]["iteration"] == 4 // WORLD  # each rank sees half of the 4 training phantoms
    assert_ranks_agree(out, set())
    assert (tmp_path / "models" / "model.pt").exists()


def two_validation_cases(phantoms, tmp_path):
    """The phantoms' datalist with the test phantom as a second validation case (one per rank)."""
    data = json.loads((phantoms / "dataset.json").read_text())
    data["validation"] = data["validation"] + data["test"]
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(data))
    return path


def mean_dice(csv_path) -> float:
    with open(csv_path) as f:
        return float([row for row in csv.DictReader(f) if row["case"] == "mean"][0]["mean"])


@pytest.mark.slow
def test_evaluation_on_two_processes_reports_the_single_process_dice(trained, phantoms, tmp_path):
    datalist = two_validation_cases(phantoms, tmp_path)
    common = {"dataset_dir": phantoms, "datalist": datalist, "ckpt_dir": trained["dir"] / "models", "num_workers": 0}
    bundle_run(["train.json", "evaluate.json", "small.json"], {**common, "output_dir": tmp_path / "single"})
    torchrun(
        tmp_path,
        ["train.json", "evaluate.json", "small.json", "multi_gpu_evaluate.json"],
        {**common, "output_dir": tmp_path / "two", "finalize": "['$scripts.distributed.cleanup()']"},
    )
    single, two = (mean_dice(tmp_path / d / "val_mean_dice_per_case.csv") for d in ("single", "two"))
    assert two == pytest.approx(single, abs=1e-4) and single > 0
    with open(tmp_path / "two" / "val_mean_dice_per_case.csv") as f:
        assert sorted(row["case"] for row in csv.DictReader(f)) == ["mean", "phantom_004.nii.gz", "phantom_005.nii.gz"]


def _gathered_nt_xent(rank, init_file, z1_all, z2_all, weight, x_all, results):
    """One rank: the gathered NT-Xent of its share of the crops, and a DDP step of a linear projector."""
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=120)
    )
    n = z1_all.shape[0] // WORLD
    share = slice(rank * n, (rank + 1) * n)
    z1, z2 = z1_all[share].clone().requires_grad_(), z2_all[share].clone().requires_grad_()
    loss = nt_xent(z1, z2, 0.5, gather=True)
    (loss / WORLD).backward()  # DDP optimises the mean of the ranks' losses
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    projector = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    projector.weight.data.copy_(weight)
    ddp = torch.nn.parallel.DistributedDataParallel(projector)
    x1, x2 = x_all[0][share], x_all[1][share]
    nt_xent(ddp(x1), ddp(x2), 0.5, gather=True).backward()
    torch.save(
        {"loss": mean_loss / WORLD, "z1": z1.grad, "z2": z2.grad, "weight": projector.weight.grad},
        f"{results}/rank{rank}.pt",
    )
    dist.barrier()  # neither rank tears gloo down while the other still talks to it (an intermittent hang)
    dist.destroy_process_group()


@pytest.mark.slow  # two processes
def test_gathered_nt_xent_equals_the_single_process_nt_xent_of_all_crops(tmp_path):
    torch.manual_seed(0)
    b, dim = 3, 8
    z1_all, z2_all = torch.randn(WORLD * b, dim), torch.randn(WORLD * b, dim)
    weight, x_all = torch.randn(dim, 5), torch.randn(2, WORLD * b, 5)
    mp.spawn(
        _gathered_nt_xent, args=(str(tmp_path / "init"), z1_all, z2_all, weight, x_all, str(tmp_path)), nprocs=WORLD
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    # single process, all 2B crops
    z1, z2 = z1_all.clone().requires_grad_(), z2_all.clone().requires_grad_()
    loss = nt_xent(z1, z2, 0.5)
    loss.backward()
    projector = torch.nn.Linear(5, dim, bias=False)
    projector.weight.data.copy_(weight)
    nt_xent(projector(x_all[0]), projector(x_all[1]), 0.5).backward()
    for r, result in enumerate(ranks):
        share = slice(r * b, (r + 1) * b)
        torch.testing.assert_close(result["loss"], loss.detach())
        torch.testing.assert_close(result["z1"], z1.grad[share])
        torch.testing.assert_close(result["z2"], z2.grad[share])
        torch.testing.assert_close(result["weight"], projector.weight.grad)
    # and it differs from what each rank would get from its own crops only
    local = nt_xent(z1_all[:b], z2_all[:b], 0.5)
    assert not torch.isclose(local, loss)


def test_learning_rate_scaling_rules_for_the_global_batch():
    from scripts.distributed import scaled_lr

    assert scaled_lr(4e-4, 128, 32, "none") == 4e-4
    assert scaled_lr(4e-4, 128, 32, "linear") == pytest.approx(1.6e-3)
    assert scaled_lr(4e-4, 128, 32, "sqrt") == pytest.approx(8e-4)
    with pytest.raises(ValueError, match="lr_scaling .* is not a valid choice"):
        scaled_lr(4e-4, 128, 32, "cubic")


def test_the_overlays_default_to_the_reference_learning_rate_and_gathered_negatives():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(configs("pretrain.json", "multi_gpu_pretrain.json"))
    assert parser["lr_scaling"] == "none" and parser["lr_reference_batch"] == 32 and parser["gather_negatives"] is True
    parser = ConfigParser()
    parser.read_config(configs("train.json", "multi_gpu_train.json"))
    assert parser["lr_scaling"] == "none" and parser["lr_reference_batch"] == 4


def test_the_multi_gpu_configs_refuse_to_run_outside_torchrun(monkeypatch):
    from scripts.distributed import local_device

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(RuntimeError, match="need the process environment of torchrun"):
        local_device()


def test_the_slurm_script_runs_one_torchrun_per_node_meeting_on_the_first_node(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    scripts = {
        "scontrol": 'printf "gpu-a\\ngpu-b\\n"',
        "srun": 'while [[ "$1" == --* ]]; do shift; done; exec "$@"',
        "torchrun": f'printf "%s\\n" "$@" > {tmp_path / "torchrun_args"}',
    }
    for name, body in scripts.items():
        (fake / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (fake / name).chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{fake}:{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "gpu-[a-b]",
        "SLURM_NNODES": "2",
        "SLURM_JOB_ID": "77",
        "SLURM_GPUS_ON_NODE": "4",
        "SLURM_SUBMIT_DIR": str(tmp_path),
    }
    subprocess.run(
        ["bash", str(ROOT / "bin" / "slurm_pretrain.sh"), "--train_sources", "['/data/a.json']"],
        env=env,
        check=True,
    )
    assert (tmp_path / "torchrun_args").read_text().splitlines() == [
        "--nnodes=2",
        "--nproc_per_node=4",
        "--rdzv_id=77",
        "--rdzv_backend=c10d",
        "--rdzv_endpoint=gpu-a:29500",
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "['configs/pretrain.json','configs/multi_gpu_pretrain.json']",
        "--resume",
        "auto",
        "--train_sources",
        "['/data/a.json']",
    ]

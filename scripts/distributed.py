"""Multi-process training with PyTorch's own engine: ``torchrun`` starts one process per GPU (or per CPU
worker), these helpers join them into a process group and keep rank 0 the only writer.

The base workflows call these in every run, where they are no-ops in a single process (``distributed``
false, rank 0); the ``configs/multi_gpu_*.json`` overlays set ``distributed`` and the device, network and
samplers. ``worker_count`` sizes the data-loading worker processes to the CPUs this process may use.
"""

from __future__ import annotations

import logging
import math
import os

import torch
import torch.distributed as dist
from torch import nn

from scripts.errors import InputError, ReportedError
from scripts.options import choice

logger = logging.getLogger(__name__)

LR_SCALING_RULES = ("none", "linear", "sqrt")


class DistributedSetupError(ReportedError, RuntimeError):
    """The process environment does not fit the multi-GPU configs."""


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_device() -> torch.device:
    """This process's device under torchrun: ``cuda:LOCAL_RANK`` when CUDA is there, else the CPU."""
    if "LOCAL_RANK" not in os.environ:
        raise DistributedSetupError(
            "the multi_gpu_* configs need the process environment of torchrun: "
            "torchrun --nproc_per_node=N -m monai.bundle run --config_file ..."
        )
    if not torch.cuda.is_available():
        return torch.device("cpu")
    local_rank = int(os.environ["LOCAL_RANK"])
    if local_rank >= torch.cuda.device_count():
        raise DistributedSetupError(
            f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices here: lower --nproc_per_node"
        )
    return torch.device("cuda", local_rank)


def setup(enabled: bool = True) -> None:
    """Join the process group ``torchrun`` describes: NCCL on CUDA, Gloo on CPU; nothing when not ``enabled``
    (the base configs call it with ``distributed`` false, the ``multi_gpu_*`` overlays set it true).

    Ranks above 0 then log warnings and errors only, so the console shows each message once.
    """
    if not enabled:
        return
    device = local_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not is_distributed():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if rank() > 0:
        logging.getLogger().setLevel(logging.WARNING)
    logger.info(f"{world_size()} processes ({dist.get_backend()} backend), rank 0 on {device}")


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """``x`` (B, ...) of every rank concatenated in rank order (W B, ...); gradients flow back to each
    rank's ``x`` (summed over the ranks' losses). All ranks must pass the same shape."""
    import torch.distributed._functional_collectives as collectives  # PyTorch's differentiable collectives

    return collectives.wait_tensor(collectives.all_gather_single_autograd(x.contiguous(), 0, dist.group.WORLD))


def unwrap_model(network: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` (or ``DataParallel``) wrapper, else ``network``."""
    return network.module if isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else network


def scaled_lr(learning_rate: float, global_batch: int, reference_batch: int, rule: str = "none") -> float:
    """Learning rate for a global batch of ``global_batch`` crops, given ``learning_rate`` tuned for
    ``reference_batch`` crops: unchanged (``"none"``), times the batch ratio (``"linear"``, Goyal et
    al. 2017) or times its square root (``"sqrt"``, common with Adam-type optimisers)."""
    choice("lr_scaling", rule, LR_SCALING_RULES)
    if global_batch < 1 or reference_batch < 1:
        raise ValueError(f"batch sizes must be positive, got global {global_batch}, reference {reference_batch}")
    ratio = global_batch / reference_batch
    lr = learning_rate * {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[rule]
    logger.info(
        f"global batch {global_batch} crops ({world_size()} processes): learning rate {lr:.4g} "
        f"({rule} scaling of {learning_rate:g} for {reference_batch} crops)"
    )
    return lr


def validation_sampler(dataset):
    """Each rank validates a disjoint share of ``dataset`` (no padding, so no volume counts twice);
    metrics are then reduced over the ranks."""
    from monai.data import DistributedSampler

    if len(dataset) < world_size():
        raise InputError(
            f"{len(dataset)} validation volumes for {world_size()} processes: every process needs "
            f"at least one; use fewer processes or more validation volumes"
        )
    return DistributedSampler(dataset, even_divisible=False, shuffle=False)


def rank_zero_only(handlers: list) -> list:
    """``handlers`` without MONAI's file and console writers, on every rank but 0.

    The bundle's own writers (``scripts.pretraining.monitor``, ``scripts.metrics``) check ``rank()`` themselves.
    """
    if rank() == 0:
        return list(handlers)
    from monai.handlers import CheckpointSaver, StatsHandler, TensorBoardImageHandler, TensorBoardStatsHandler

    writers = (CheckpointSaver, StatsHandler, TensorBoardStatsHandler, TensorBoardImageHandler)
    return [h for h in handlers if not isinstance(h, writers)]


def worker_count(most: int) -> int:
    """``most`` data-loading workers, or as many as this process may use CPUs when fewer (PyTorch warns above
    that, and MONAI Label cannot override ``num_workers``)."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(most, available))

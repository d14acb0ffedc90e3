"""Data-parallel training under ``torchrun``: gloo on CPU, NCCL on GPU; a no-op in a single process."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def initialise(cuda: bool) -> None:
    """Join the process group that torchrun describes in the environment (once): NCCL where the processes train on
    GPUs, gloo on CPUs."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if cuda:  # one GPU per process (pipeline.compute picks cuda:LOCAL_RANK)
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def shard(batch: torch.Tensor) -> torch.Tensor:
    """This process's share of a global batch (every process draws the same batch order)."""
    return batch[rank() :: world_size()]


def wrap(module: nn.Module) -> nn.Module:
    """DistributedDataParallel around ``module`` when running in a process group; gradients are averaged."""
    if not dist.is_initialized():
        return module
    device = next(module.parameters()).device
    return nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def average_gradients(module: nn.Module) -> None:
    """Average ``module``'s gradients over the processes (what DistributedDataParallel does, for a module whose
    backward is not one call on one output)."""
    if dist.is_initialized():
        for parameter in module.parameters():
            if parameter.grad is not None:
                dist.all_reduce(parameter.grad)
                parameter.grad /= world_size()


def sync_buffers(module: nn.Module) -> None:
    """Give every process rank 0's buffers (BatchNorm statistics saw only each process's shard last),
    so that scores, selection and early stopping agree everywhere."""
    if dist.is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)

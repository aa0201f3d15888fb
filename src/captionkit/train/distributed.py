"""Multi-process data-parallel training with the same engine.

``torchrun --nproc_per_node N -m captionkit train ...`` starts N processes; each sees the same
global batches (the length-bucketed sampler is a pure function of seed and epoch) and takes
its slice of every batch. Gradients are averaged by DistributedDataParallel (NCCL on GPUs, gloo
on CPU), and the loss is normalised by the *global* number of target tokens, so N processes
compute the same update as one process with the whole batch. Rank 0 evaluates and writes
checkpoints; the others wait for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from captionkit.errors import ConfigError


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (``world == 1``: not distributed)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; asking for CUDA on a machine without
    it is a one-line error, not a traceback from deep inside torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device={name!r} is not a device; use auto, cpu, cuda or "
                          "cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but this machine has no CUDA device "
                          "(torch.cuda.is_available() is False); use train.device=cpu or auto")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"train.device={name} but this machine has "
                          f"{torch.cuda.device_count()} CUDA device(s)")
    return device


def setup(device_name: str) -> tuple[Dist, torch.device]:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1)."""
    device = resolve_device(device_name)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist(), device
    cuda = device.type == "cuda"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return Dist(dist.get_rank(), dist.get_world_size()), device


def all_sum(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum of ``x`` over all processes (``x`` itself when not distributed)."""
    if d.active:
        x = x.clone()
        dist.all_reduce(x)
    return x


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


def wrap(model: torch.nn.Module, d: Dist, device: torch.device) -> torch.nn.Module:
    """The module to train: the model itself, or a DDP wrapper around it."""
    if not d.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def broadcast(obj, d: Dist):
    """Rank 0's ``obj`` on every process (picklable Python values only, never a file)."""
    if not d.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]

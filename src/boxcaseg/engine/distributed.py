"""Process-group setup from ``torchrun`` environment variables; single process without them.

``torchrun --nproc_per_node=N -m boxcaseg.cli train ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; we then join the group (NCCL on CUDA, Gloo
on CPU) and each process drives one device. Rank 0 alone logs and writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from boxcaseg.errors import ConfigError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # we created the process group, so we destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(pref: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> ``cuda:<local_rank>`` when CUDA is usable, else CPU; ``"cuda"`` ->
    ``cuda:<local_rank>``; anything else as torch spells it. Asking for CUDA on a machine
    without it is a ``ConfigError`` here, not a driver error later."""
    if pref == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(f"cuda:{local_rank}" if pref == "cuda" else pref)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {pref!r} requested but CUDA is not available")
    return dev


def init_distributed(device_pref: str = "auto", timeout: timedelta | None = None) -> DistInfo:
    """Join the process group described by the environment, or run single-process.

    ``timeout``: how long collectives (barriers) wait; torch's default when None. Labeling
    passes a long one: ranks that finish their shard early wait for the slowest.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    device = resolve_device(device_pref, local)
    if world <= 1:
        return DistInfo(0, 1, 0, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        kwargs = {} if timeout is None else {"timeout": timeout}
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                rank=rank, world_size=world, **kwargs)
        owns = True
    return DistInfo(rank, world, local, device, owns)


def barrier(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        if info.device.type == "cuda":
            dist.barrier(device_ids=[info.device.index or 0])
        else:
            dist.barrier()


def all_finite(flag: bool, info: DistInfo) -> bool:
    """True iff ``flag`` is true on every rank (so all ranks stop together on a NaN)."""
    return all_true(flag, info)


def all_true(flag: bool, info: DistInfo) -> bool:
    """True iff ``flag`` is true on every rank (a collective: every rank must call it)."""
    if not info.distributed:
        return flag
    t = torch.tensor([1 if flag else 0], device=info.device, dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def wrap_ddp(model: nn.Module, info: DistInfo) -> nn.Module:
    """``model`` itself in one process, else its DDP wrapper (gradients averaged over ranks)."""
    if not info.distributed:
        return model
    return DistributedDataParallel(model, device_ids=[info.device.index]
                                   if info.device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DDP wrapper (its state_dict has no ``module.`` prefix)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def cleanup(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()

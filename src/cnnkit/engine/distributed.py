"""Data-parallel training with ``torchrun``: one process per GPU (or CPU worker), on one
machine or several.

``torchrun --nproc_per_node N -m cnnkit train ...`` starts N copies of the command with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in their environment;
:func:`setup` reads them, joins the process group (NCCL on CUDA, gloo on the CPU) and
pins each process to its GPU. Then:

* every rank builds the same data and split (same seed) and takes its own shard of each
  epoch's order (``cnnkit.data.shard_loaders``), so the ranks together see every image once per epoch;
* ``--batch-size`` stays the *global* batch: each rank trains on ``batch_size / world``
  images per step and DDP averages the gradients, so a recipe's learning rate means the
  same on 1 GPU or 8;
* losses, accuracies and confusion matrices are summed over ranks before they are
  logged (:func:`all_reduce_sum`), so every rank sees the same metrics;
* only rank 0 writes: the run folder, ``metrics.csv``, checkpoints, logs and the report.

Without those environment variables everything here is a no-op (world size 1).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from cnnkit.errors import UsageError


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in the job.

    Attributes:
        rank: global rank, 0 to ``world - 1``.
        world: number of processes.
        local_rank: rank on this machine (which GPU to use).
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and prints progress."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


SINGLE = DistEnv()


def from_environment() -> DistEnv:
    """The ranks ``torchrun`` put in the environment, or a single process."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise UsageError(f"bad torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {exc}") from None
    return DistEnv(rank, world, local) if world > 1 else SINGLE


def setup(device_name: str = "auto") -> DistEnv:
    """Join the process group when launched by torchrun; returns this process's place.

    Picks NCCL when training on CUDA (and sets this process's GPU to ``LOCAL_RANK``),
    gloo otherwise. Idempotent: a second call returns the same environment.
    """
    env = from_environment()
    if not env.active or dist.is_initialized():
        return env
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    return env


def teardown() -> None:
    """Leave the process group (at the end of a run)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def current() -> DistEnv:
    """This process's place in an initialised group (a single process otherwise)."""
    if not dist.is_initialized():
        return SINGLE
    return DistEnv(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def local_batch_size(global_batch: int, env: DistEnv) -> int:
    """Images per step on each rank for a global ``--batch-size``.

    Raises:
        UsageError: the global batch does not split evenly over the ranks.
    """
    if global_batch % env.world:
        raise UsageError(f"--batch-size {global_batch} (the global batch) must divide evenly over "
                         f"{env.world} processes; use a multiple of {env.world}")  # fmt: skip
    return global_batch // env.world


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """``value`` summed over all ranks, on ``value``'s device (a new tensor; ``value``
    itself when not distributed). NCCL reduces only CUDA tensors: others travel through
    this process's GPU and come back."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value
    via = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else value.device
    reduced = value.to(via, copy=True)
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced.to(value.device)


def broadcast(value: Any, source: int = 0) -> Any:
    """Rank ``source``'s ``value`` (any picklable object) on every rank."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=source)
    return box[0]


@torch.no_grad()
def broadcast_module(module: torch.nn.Module, source: int = 0) -> None:
    """Copy rank ``source``'s parameters and buffers into ``module`` on every rank (in place)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return
    via = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    for tensor in module.state_dict().values():
        # collectives need contiguous tensors on the backend's device (channels-last weights are not)
        moved = tensor if via is None and tensor.is_contiguous() else tensor.to(via or tensor.device).contiguous()
        dist.broadcast(moved, src=source)
        if moved is not tensor:
            tensor.copy_(moved)


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()

"""Data-parallel training across processes with ``torch.distributed`` (DDP, via torchrun).

``MGSVGrounder.fit`` trains data-parallel whenever the default process group is
initialised: launch a script with ``torchrun --nproc_per_node N script.py``, call
:func:`init_from_env` (or ``torch.distributed.init_process_group`` yourself) and then
``fit`` on **every** process with the same frame. Inside ``fit``:

- every rank uses rank 0's seed, so the validation split, the initial weights and each
  epoch's length-grouped batch order agree; DistributedDataParallel also broadcasts rank
  0's weights when it wraps the model;
- each rank trains on a disjoint share of every epoch's batches (:func:`shard_batches`:
  every ``world_size``-th batch, the list first wrapped around to a multiple of
  ``world_size`` so that all ranks take the same number of steps); ``batch_size`` is per
  process, so one optimiser step sees ``batch_size * world_size`` videos;
- DDP averages the gradients; the per-epoch loss terms are summed over ranks, so
  ``history_`` is the same everywhere;
- rank 0 alone computes the validation metrics and broadcasts them, so early stopping and
  the kept epoch are decided identically on all ranks, which end with identical weights.

Backends: "gloo" for CPU training, "nccl" for CUDA (one GPU per process; ``device="cuda"``
then means ``cuda:LOCAL_RANK``).
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from mgsv_sk.errors import InvalidInputError

__all__ = [
    "DistContext",
    "current",
    "data_fingerprint",
    "init_from_env",
    "is_main_process",
    "shard_batches",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """This process's place in the default process group."""

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def comm_device(self, device: torch.device) -> torch.device:
        """Where tensors of a collective must live: CUDA for nccl, else the CPU."""
        return device if self.backend == "nccl" else torch.device("cpu")


def current() -> DistContext | None:
    """The initialised default process group as a :class:`DistContext`, or None."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", rank))
    return DistContext(rank, world, local, str(dist.get_backend()).lower())


def init_from_env(backend: str | None = None) -> DistContext | None:
    """Initialise the default process group from torchrun's environment variables.

    Does nothing (returns None) when the script was not launched by torchrun (no ``RANK``
    / ``WORLD_SIZE``); returns the existing context when a group is already initialised.
    ``backend`` defaults to "nccl" when CUDA is available, else "gloo"; with nccl the
    process's current CUDA device is set to ``LOCAL_RANK``.
    """
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed support")
    if dist.is_initialized():
        return current()
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    ctx = current()
    logger.info("initialised %s process group: rank %s of %s", backend,
                ctx.rank if ctx else "?", ctx.world_size if ctx else "?")
    return ctx


def is_main_process() -> bool:
    """True on rank 0 of a process group, and in a process that is not part of one."""
    ctx = current()
    return ctx is None or ctx.is_main


def shard_batches(batches: Sequence[T], rank: int, world_size: int) -> list[T]:
    """This rank's share of an epoch's batches: every ``world_size``-th one from ``rank``.

    The list is first wrapped around to a multiple of ``world_size`` (its first batches
    repeated), so every rank gets ``ceil(len(batches) / world_size)`` batches: DDP
    all-reduces at every step, and a rank with fewer steps would leave the others waiting.

    >>> batches = ["a", "b", "c", "d", "e"]
    >>> shard_batches(batches, 0, 2), shard_batches(batches, 1, 2)
    (['a', 'c', 'e'], ['b', 'd', 'a'])
    """
    if not 0 <= rank < world_size:
        raise InvalidInputError(f"rank must be in [0, {world_size}), got {rank}")
    if not batches:
        return []
    per_rank = -(-len(batches) // world_size)
    padded = [batches[i % len(batches)] for i in range(per_rank * world_size)]
    return padded[rank::world_size]


def data_fingerprint(*parts: Sequence[Any]) -> int:
    """A CRC-32 of sequences of ids, to check that all ranks were given the same data."""
    crc = 0
    for part in parts:
        for item in part:
            crc = zlib.crc32(str(item).encode() + b"\x00", crc)
        crc = zlib.crc32(b"\x01", crc)
    return crc


# -- collectives used by the fit loop ------------------------------------------------------
def wrap_model(
    model: torch.nn.Module, device: torch.device, ctx: DistContext
) -> torch.nn.parallel.DistributedDataParallel:
    """DistributedDataParallel around ``model`` (already on ``device``).

    ``static_graph=True``: MaDe uses the same parameters at every step, but a few receive
    no gradient by construction (e.g. the key bias of the single-query cross-attention,
    which shifts every logit equally); a static graph lets DDP learn that set once instead
    of searching the autograd graph at every step.
    """
    if ctx.backend == "nccl" and device.type != "cuda":
        raise InvalidInputError("the process group uses the nccl backend, which needs CUDA, but "
                                "the "
                         f"model is on {device}; initialise the group with backend='gloo' for "
                         "CPU training, or pass device='cuda'")
    device_ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids,
                                                     static_graph=True)


def broadcast_object(obj: T, ctx: DistContext, device: torch.device) -> T:
    """Rank 0's ``obj`` (picklable) on every rank."""
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=ctx.comm_device(device))
    return box[0]


def all_true(flag: bool, ctx: DistContext, device: torch.device) -> bool:
    """True on every rank iff ``flag`` is True on every rank."""
    t = torch.tensor([int(flag)], dtype=torch.int32, device=ctx.comm_device(device))
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def sum_over_ranks(values: dict[str, float], ctx: DistContext,
                   device: torch.device) -> dict[str, float]:
    """Per-key sums over ranks (every rank must pass the same keys)."""
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64,
                     device=ctx.comm_device(device))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return dict(zip(keys, t.cpu().tolist()))


def check_same(value: int, what: str, ctx: DistContext, device: torch.device) -> None:
    """Raise ValueError on every rank unless ``value`` is equal on all ranks."""
    t = torch.tensor([value, -value], dtype=torch.int64, device=ctx.comm_device(device))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if int(t[0]) != -int(t[1]):
        raise InvalidInputError(f"the {what} differs between the {ctx.world_size} processes; every "
                         "rank must call fit with the same X (same rows in the same order) "
                         "and the same features")

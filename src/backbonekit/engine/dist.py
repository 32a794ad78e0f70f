"""torch.distributed helpers: a no-op in a single process, collectives under torchrun.

Detection follows torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); the backend is nccl on
CUDA and gloo on CPU.
"""

from __future__ import annotations

import math
import os
from datetime import timedelta
from typing import Callable, TypeVar

import torch
import torch.distributed as td
from torch import Tensor

T = TypeVar("T")


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def is_distributed() -> bool:
    return td.is_available() and td.is_initialized()


def rank() -> int:
    return td.get_rank() if is_distributed() else 0


def world_size() -> int:
    return td.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def setup(device_type: str) -> None:
    """Join the process group torchrun describes (nccl on CUDA, gloo on CPU), once."""
    if is_distributed() or not launched_by_torchrun():
        return
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank())
    td.init_process_group(backend=backend, timeout=timedelta(minutes=10))


def cleanup() -> None:
    if is_distributed():
        td.destroy_process_group()


def _device() -> torch.device:
    if is_distributed() and td.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_values(*values: float) -> tuple[float, ...]:
    """Sum plain numbers over all ranks (returned unchanged in a single process)."""
    if not is_distributed():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_device())
    td.all_reduce(t)
    return tuple(t.tolist())


def nonfinite_ranks(value: float) -> list[int]:
    """The ranks whose ``value`` is NaN/inf: every rank learns it, so all stop together and none hangs."""
    flags = [0.0] * world_size()
    flags[rank()] = 0.0 if math.isfinite(value) else 1.0
    if is_distributed():
        flags = list(sum_values(*flags))
    return [r for r, flag in enumerate(flags) if flag]


def gather_in_order(indices: Tensor, *tensors: Tensor) -> tuple[Tensor, ...]:
    """Concatenate every rank's (indices, tensors...) and sort by dataset index."""
    if is_distributed():
        parts: list = [None] * world_size()
        td.all_gather_object(parts, (indices, *tensors))
        indices = torch.cat([p[0] for p in parts])
        tensors = tuple(torch.cat([p[i + 1] for p in parts]) for i in range(len(tensors)))
    order = indices.argsort()
    return (indices[order], *(t[order] for t in tensors))


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank; DDP only syncs them lazily,
    at the start of the next forward through its wrapper."""
    if is_distributed():
        for buffer in module.buffers():
            torch.distributed.broadcast(buffer, src=0)


def barrier() -> None:
    if is_distributed():
        td.barrier()


def preparation_round(global_rank: int, local_rank_: int) -> int:
    """When a rank may prepare (download, extract) data: round 0 global rank 0; round 1 the first rank of
    every other node (LOCAL_RANK 0); round 2 the others, which then find their node's files ready."""
    if global_rank == 0:
        return 0
    return 1 if local_rank_ == 0 else 2


def per_node_first(fn: Callable[[], T], *, ranks: tuple[int, int] | None = None,
                   wait: Callable[[], None] | None = None) -> T:
    """``fn()`` on every rank, first on global rank 0, then on the first rank of each other node, then on the
    rest. Without a shared filesystem every node thus downloads once; with one, only rank 0 does (the
    others find its files). ``ranks`` (global, local) and ``wait`` (a barrier over all ranks) default to
    this process's; a test passes its own."""
    global_rank, local = ranks if ranks is not None else (rank(), local_rank())
    wait = wait or barrier
    turn = preparation_round(global_rank, local)
    result = None
    for round_ in (0, 1):
        if turn == round_:
            result = fn()
        wait()
    return fn() if turn == 2 else result

"""``--nproc N``: DistributedDataParallel on one machine through torchrun's launcher API (both trainers).

This is ``torchrun --standalone --nproc_per_node=N -m backbonekit ...`` without leaving Python:
the same elastic agent starts the processes, sets RANK/WORLD_SIZE/LOCAL_RANK, and stops every process
as soon as one fails, so a failing rank never leaves the others waiting.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import uuid
from typing import Any, Callable, Collection, Sequence

from .._text import first_line


class DistributedFailure(ValueError):
    """A process of a distributed run failed; the job was stopped."""


def launch(fn: Callable[..., Any], args: Sequence[Any], nproc: int,
           threads_per_process: int | None = None) -> dict[int, Any]:
    """Run ``fn(*args)`` in ``nproc`` local processes under torchrun's elastic agent; results by rank.

    ``fn`` must be importable by name (processes are spawned). Raises DistributedFailure naming the
    first rank that failed.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if threads_per_process is None:  # torchrun's default: do not oversubscribe the cores
        threads_per_process = max(1, (os.cpu_count() or 1) // nproc)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_process))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.2)
    try:
        return elastic_launch(config, fn)(*args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        reason = failure_reason(failure.message) or "its error is printed above"
        raise DistributedFailure(f"distributed run stopped: rank {rank} failed (exit code {failure.exitcode}: "
                                 f"{reason}); the other ranks were stopped") from None


def failure_reason(message) -> str:
    """The last line of a failed process's recorded error (torchelastic's error-file format)."""
    if isinstance(message, dict):
        message = message.get("message", "")
    lines = str(message or "").strip().splitlines()
    reason = first_line(lines[-1], 300) if lines else ""
    return "" if reason.startswith("To enable traceback") else reason  # exited without a recorded error


def launch_training(cfg: Any, worker: Callable[[dict[str, Any], list[str] | None], Any],
                    given: Collection[str] | None, log: Callable[[str], None], **worker_changes: Any) -> dict[int, Any]:
    """``worker(config dict, given)`` in ``cfg.nproc`` processes on this machine (gloo on CPU, nccl on CUDA):
    the run folder is named here, so every rank writes the same one; ``worker_changes`` are set in the
    workers' config. ``worker`` must be importable by name."""
    from .device import resolve_device
    from .runs import default_out

    device = resolve_device(cfg.device)
    if device.type == "cuda":
        import torch

        if cfg.nproc > torch.cuda.device_count():
            raise ValueError(f"--nproc {cfg.nproc}: expected at most one process per GPU, found "
                             f"{torch.cuda.device_count()} GPUs")
    worker_cfg = dataclasses.replace(cfg, **worker_changes,
                                     out=cfg.out or (None if cfg.resume else str(default_out(cfg))))
    log(f"launching {cfg.nproc} processes ({'nccl' if device.type == 'cuda' else 'gloo'}); "
        f"effective batch size {cfg.nproc * cfg.batch_size}")
    return launch(worker, (worker_cfg.to_dict(), None if given is None else sorted(given)), cfg.nproc)


def run_rank(command: str, fn: Callable[[], Any]) -> Any:
    """Run one rank's ``fn``: a user error is one line naming the rank and exits 2; the process group is
    always torn down (shared by ``train`` and ``detect train``)."""
    from .._text import USER_ERRORS
    from . import dist

    try:
        return fn()
    except USER_ERRORS as exc:
        print(f"{command} (rank {os.environ.get('RANK', '?')}): error: {first_line(exc, None, lines=None)}",
              file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        dist.cleanup()

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
from typing import Any, Callable, Collection, Mapping, Sequence

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
        return elastic_launch(config, run_and_let_the_cause_report_first)(fn, *args)
    except ChildFailedError as exc:
        rank, failure = root_failure(exc.failures)
        reason = failure_reason(failure.message) or "its error is printed above"
        raise DistributedFailure(f"distributed run stopped: rank {rank} failed (exit code {failure.exitcode}: "
                                 f"{reason}); the other ranks were stopped") from None


# what a rank raises when another rank's process went away in the middle of a collective: a consequence
PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted")


PEER_LOST_GRACE_S = 3.0  # how long a rank that lost its peers waits before failing, so the cause is seen first


def run_and_let_the_cause_report_first(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a rank; a rank that fails because another went away mid-collective waits a moment
    before failing, so the agent sees (and reports) the rank that failed first for a reason of its own."""
    import time

    try:
        return fn(*args)
    except Exception as exc:
        if any(s in str(exc) for s in PEER_LOST):
            time.sleep(PEER_LOST_GRACE_S)
        raise


def root_failure(failures: Mapping[int, Any]) -> tuple[int, Any]:
    """The (rank, failure) that stopped the job: the earliest that is not a rank losing its peers in a
    collective (which follows the real failure, and often reaches the agent first), else the earliest."""
    in_order = sorted(failures.items(), key=lambda item: (item[1].timestamp, item[0]))
    causes = [item for item in in_order if not any(s in failure_reason(item[1].message) for s in PEER_LOST)]
    return (causes or in_order)[0]


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

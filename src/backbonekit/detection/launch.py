"""``backbonekit detect train --nproc N``: DistributedDataParallel on one machine through torchrun's launcher
API (:func:`backbonekit.train.launch.launch`), one process per rank."""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Callable

from .config import DetectConfig


def launch_local(cfg: DetectConfig, log: Callable[[str], None] = print) -> int:
    """Train ``cfg`` with ``cfg.nproc`` processes on this machine (gloo on CPU, nccl on CUDA)."""
    from ..train.launch import launch
    from ..train.trainer import default_out, resolve_device

    device = resolve_device(cfg.device)
    if device.type == "cuda":
        import torch

        if cfg.nproc > torch.cuda.device_count():
            raise ValueError(f"--nproc {cfg.nproc}: expected at most one process per GPU, found "
                             f"{torch.cuda.device_count()} GPUs")
    worker_cfg = dataclasses.replace(cfg, nproc=1, out=cfg.out or (None if cfg.resume else str(default_out(cfg))))
    log(f"launching {cfg.nproc} processes ({'nccl' if device.type == 'cuda' else 'gloo'}); "
        f"effective batch size {cfg.nproc * cfg.batch_size}")
    launch(detect_worker, (worker_cfg.to_dict(),), cfg.nproc)
    return 0


def detect_worker(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """One rank of ``launch_local``: train, print one error line on failure, exit 2."""
    from ..cli import USER_ERRORS, error_line
    from ..train import dist
    from .trainer import train

    try:
        result = train(DetectConfig(**cfg_dict))
        return {"best_map": result.best_map}
    except USER_ERRORS as exc:
        print(f"backbonekit detect train (rank {os.environ.get('RANK', '?')}): error: {error_line(exc)}",
              file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        dist.cleanup()

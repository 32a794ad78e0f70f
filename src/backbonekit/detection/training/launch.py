"""``backbonekit detect train --nproc N``: DistributedDataParallel on one machine through torchrun's launcher
API (:func:`backbonekit.train.launch.launch`), one process per rank."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from .config import DetectConfig


def launch_local(cfg: DetectConfig, log: Callable[[str], None] = print, given: list[str] | None = None) -> int:
    """Train ``cfg`` with ``cfg.nproc`` processes on this machine (gloo on CPU, nccl on CUDA)."""
    from ...train.launch import launch
    from ...engine.runs import default_out
    from ...train.trainer import resolve_device

    device = resolve_device(cfg.device)
    if device.type == "cuda":
        import torch

        if cfg.nproc > torch.cuda.device_count():
            raise ValueError(f"--nproc {cfg.nproc}: expected at most one process per GPU, found "
                             f"{torch.cuda.device_count()} GPUs")
    worker_cfg = dataclasses.replace(cfg, nproc=1, out=cfg.out or (None if cfg.resume else str(default_out(cfg))))
    log(f"launching {cfg.nproc} processes ({'nccl' if device.type == 'cuda' else 'gloo'}); "
        f"effective batch size {cfg.nproc * cfg.batch_size}")
    launch(detect_worker, (worker_cfg.to_dict(), given), cfg.nproc)
    return 0


def detect_worker(cfg_dict: dict[str, Any], given: list[str] | None = None) -> dict[str, Any]:
    """One rank of ``launch_local``: train, print one error line on failure, exit 2."""
    from ...train.launch import run_rank
    from .trainer import train

    result = run_rank("backbonekit detect train", lambda: train(DetectConfig(**cfg_dict), given=given))
    return {"best_map": result.best_map}

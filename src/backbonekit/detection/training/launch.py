"""``backbonekit detect train --nproc N``: one process per rank on this machine
(:mod:`backbonekit.engine.launch`)."""

from __future__ import annotations

from typing import Any, Callable

from ...engine.launch import launch_training, run_rank
from .config import DetectConfig


def launch_local(cfg: DetectConfig, log: Callable[[str], None] = print, given: list[str] | None = None) -> int:
    """Train ``cfg`` with ``cfg.nproc`` processes on this machine (gloo on CPU, nccl on CUDA)."""
    launch_training(cfg, detect_worker, given, log, nproc=1)
    return 0


def detect_worker(cfg_dict: dict[str, Any], given: list[str] | None = None) -> dict[str, Any]:
    """One rank of ``launch_local``: train, print one error line on failure, exit 2."""
    from .trainer import train

    result = run_rank("backbonekit detect train", lambda: train(DetectConfig(**cfg_dict), given=given))
    return {"best_map": result.best_map}

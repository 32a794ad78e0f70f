"""``backbonekit train --nproc N``: one process per rank on this machine (:mod:`backbonekit.engine.launch`)."""

from __future__ import annotations

from typing import Any, Callable, Collection

from ..engine.launch import launch_training, run_rank
from .config import TrainConfig


def launch_local(cfg: TrainConfig, log: Callable[[str], None] = print, given: Collection[str] | None = None) -> int:
    """Train ``cfg`` with ``cfg.nproc`` processes on this machine (gloo on CPU, nccl on CUDA).

    ``given``: the fields set explicitly, as for :func:`backbonekit.train.train`."""
    launch_training(cfg, train_worker, given, log)
    return 0


def train_worker(cfg_dict: dict[str, Any], given: list[str] | None = None) -> dict[str, Any]:
    """One rank of ``launch_local``: train, print one error line on failure, exit 2."""
    from .trainer import train

    result = run_rank("backbonekit train", lambda: train(TrainConfig(**cfg_dict), given=given))
    return {"best_acc": result.best_acc, "val_count": result.val_count}

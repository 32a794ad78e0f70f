"""``train`` a detector into a run folder: the run loop and resume (and, until they find their own home,
the detector building and the checkpoint dict). Beside it: :mod:`.splits` (the data and anchors a run
checks first), :mod:`.engine` (one epoch, one evaluation), :mod:`.ema`, :mod:`.history` (``metrics.csv``)
and :mod:`.evaluate` (the final report; ``evaluate_checkpoint``, re-imported here, for saved ones).

The run folder follows ``backbonekit train``'s conventions (``docs/detection-training.md``):
``config.yaml``, ``metrics.csv`` (every loss part and the COCO mAPs per epoch), ``last.pt`` and
``best.pt`` (atomic, ``weights_only``-loadable, best by mAP@[.5:.95]; each holds the model name and
arguments, class names, input size and anchors, so nothing else is needed to use it), the report
files of :mod:`.report`, and ``--resume`` continuing exactly.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Sequence

import torch
from torch import nn

from ..._text import first_line
from ...checkpoint import CheckpointError, atomic_save
from ...engine import dist
from ...engine.budget import TimeBudget, fast_forward, fit_first_epoch, refit_schedule
from ...engine.config import write_config
from ...engine.device import resolve_amp, resolve_device, set_determinism, unwrap
from ...engine.optim import build_optimizer, build_scheduler, epoch_progress
from ...engine.report import write_metrics
from ...engine.runs import (RunResult, check_resumed_world, read_training_checkpoint, resume_checkpoint,
                            resumed_config, run_in_folder)
from .build import build_from_config
from .config import DETECT_RESUME_RULES, DetectConfig, legacy_values
from .ema import ema_model
from .engine import EpochLosses, TrainBatches, augment_config, evaluate, train_one_epoch
from .evaluate import evaluate_checkpoint, final_report  # noqa: F401 (evaluate_checkpoint: the CLI's path)
from .history import LOSS_PARTS, epoch_line, epoch_row, metric_fields
from .splits import category_ids, load_splits, resolve_anchors  # noqa: F401 (resolve_anchors: tests' path)


@dataclass
class DetectResult(RunResult):
    best_map: float  # final: the DetectionMetrics of best.pt


# -- the model ---------------------------------------------------------------------------------

# -- checkpoints --------------------------------------------------------------------------------

def checkpoint_dict(model: nn.Module, cfg: DetectConfig, classes: Sequence[str], model_kwargs: dict, *,
                    epoch: int, history: list[dict[str, float]], best_map: float,
                    training_state: dict[str, Any] | None = None,
                    category_ids: Sequence[int] | None = None) -> dict[str, Any]:
    """A detector checkpoint: tensors and plain values only (``weights_only=True`` loads it).

    ``category_ids``: the training file's category id of each label (COCO's), so predictions can be
    written back in the file's ids; None when the labels are the ids."""
    ckpt = {"format": "backbonekit", "task": "detection", "model": cfg.model, "model_kwargs": copy.deepcopy(model_kwargs),
            "num_classes": len(classes), "classes": list(classes),
            "category_ids": [int(i) for i in category_ids] if category_ids is not None else None,
            "input_size": cfg.input_size,
            "anchors": copy.deepcopy(model_kwargs.get("anchors")), "state_dict": unwrap(model).state_dict(),
            "config": cfg.to_dict(), "epoch": epoch, "history": [dict(r) for r in history], "best_map": best_map,
            "world_size": dist.world_size()}
    ckpt.update(training_state or {})
    return ckpt


# -- training -----------------------------------------------------------------------------------

def train(cfg: DetectConfig, *, log: Callable[[str], None] = print,
          given: Collection[str] | None = None) -> DetectResult:
    """Train ``cfg`` into the run folder ``cfg.out`` (see this module's docstring and docs/detection-training.md).

    The run folder follows ``backbonekit train``'s rules (:mod:`backbonekit.engine.runs`): one writer at a
    time, a new run only in a new or empty folder, nothing left behind by a run that fails before its first
    checkpoint. With ``cfg.resume`` (a run folder or last.pt) the run continues exactly where it stopped, with
    the saved config; ``given`` names the options set explicitly, checked by ``DETECT_RESUME_RULES``
    (without it, those that differ from the defaults).
    """
    resumed = None
    if cfg.resume:
        checkpoint = resume_checkpoint(cfg.resume)
        resumed = read_training_checkpoint(checkpoint)
        if resumed.get("task") != "detection":
            raise CheckpointError(f"cannot resume from {checkpoint}: expected a last.pt written by backbonekit "
                                  f"detect train")
        cfg = resumed_config(resumed["config"], cfg, given, checkpoint.parent, checkpoint, int(resumed["epoch"]),
                             DETECT_RESUME_RULES, legacy_values(resumed["config"]))
    device = resolve_device(cfg.device)
    dist.setup(device.type)
    check_resumed_world(resumed)
    return run_in_folder(cfg, resumed, lambda cfg, out: _train(cfg, out, resumed, device, log))


def _train(cfg: DetectConfig, out: Path, resumed: dict[str, Any] | None, device: torch.device,
           log: Callable[[str], None]) -> DetectResult:
    budget = TimeBudget.start(cfg.time, resumed.get("time_budget") if resumed else None)
    amp_dtype = resolve_amp(cfg.amp, device)
    set_determinism(cfg.seed, False, device)
    train_set, val_set = load_splits(cfg)  # every label is checked before anything is written
    classes, ids = list(train_set.classes), category_ids(train_set)
    anchors = None
    if cfg.model == "yolov3":
        anchors = resumed["anchors"] if resumed else resolve_anchors(cfg.anchors, train_set, cfg.input_size)
    model, model_kwargs = build_from_config(cfg, len(classes), anchors, load_pretrained=resumed is None,
                                            resumed_kwargs=resumed["model_kwargs"] if resumed else None,
                                            log=log if dist.is_main() else (lambda _: None))
    cfg = dataclasses.replace(cfg, nproc=dist.world_size())
    if dist.is_main():  # the file repeats the run: no --out (a rerun writes a new folder), the real process count
        write_config(dataclasses.replace(cfg, out=None), out / "config.yaml")
    model = model.to(device)
    if dist.is_distributed():
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    augment = augment_config(cfg.scale_jitter, cfg.translate, cfg.hflip, cfg.hsv)

    def batches(epoch: int, step_offset: int) -> TrainBatches:
        return TrainBatches(train_set, cfg.batch_size, cfg.input_size, device, seed=cfg.seed, epoch=epoch,
                            augment=augment, mosaic=cfg.mosaic, multiscale=cfg.multiscale, workers=cfg.workers,
                            rank=dist.rank(), world=dist.world_size(), step_offset=step_offset)

    steps = len(batches(0, 0))
    optimizer = build_optimizer(cfg.optimizer, model, cfg.lr, cfg.weight_decay, cfg.momentum)

    def schedule(epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
        return build_scheduler("cosine", optimizer, cfg.lr, epochs, steps, cfg.warmup_epochs)

    scheduler = schedule(cfg.epochs)

    def first_epoch_probe(steps_done: int) -> None:  # the plan from the first epoch's first steps (engine.budget)
        nonlocal cfg
        cfg = dataclasses.replace(cfg, epochs=fit_first_epoch(budget, scheduler, steps_done, steps, cfg.epochs))

    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    ema = ema_model(unwrap(model)).to(device) if cfg.ema else None
    history: list[dict[str, float]] = []
    best_map, start_epoch = -1.0, 0
    if resumed:
        start_epoch, history, best_map = _restore(resumed, model, optimizer, scheduler, scaler, ema)
        if cfg.epochs != resumed["config"]["epochs"]:  # --epochs changed: the schedule for the new length
            scheduler = schedule(cfg.epochs)
            fast_forward(scheduler, start_epoch * steps)
        if dist.is_main():
            log(f"resuming {out} after epoch {start_epoch}/{cfg.epochs}")

    # a resumed run with a budget: the epochs the time left allows (a new --time may give more, or none)
    epochs, scheduler = refit_schedule(budget, cfg.epochs, start_epoch, scheduler, schedule, epoch_ended=False)
    cfg = dataclasses.replace(cfg, epochs=epochs)

    def evaluated() -> nn.Module:
        return ema.module if ema is not None else unwrap(model)

    def save(epoch: int, improved: bool) -> None:
        if not dist.is_main():
            return
        common = dict(epoch=epoch, history=history, best_map=best_map, category_ids=ids)
        if improved:
            atomic_save(checkpoint_dict(evaluated(), cfg, classes, model_kwargs, **common), out / "best.pt")
        state = {"model_state": unwrap(model).state_dict() if ema is not None else None,
                 "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                 "ema": ema.state_dict() if ema is not None else None,
                 "time_budget": budget.state() if budget is not None else None}
        atomic_save(checkpoint_dict(evaluated(), cfg, classes, model_kwargs, **common, training_state=state),
                    out / "last.pt")
        write_metrics(out / "metrics.csv", history, metric_fields(cfg.model))

    epoch = start_epoch
    while epoch < cfg.epochs and not (budget is not None and budget.expired()):
        lr = optimizer.param_groups[0]["lr"]
        train_batches = batches(epoch, epoch * steps)
        if budget is not None:
            budget.begin_epoch()
            train_batches = budget.batches(train_batches, on_probe=first_epoch_probe if epoch == 0 else None)
        losses = _train_epoch(model, train_batches, optimizer, scheduler, cfg, device, amp_dtype, scaler, ema,
                              epoch, out)
        dist.broadcast_buffers(unwrap(model))  # every rank evaluates rank 0's BatchNorm statistics
        metrics, _ = evaluate(evaluated(), val_set, classes, device=device, batch_size=cfg.batch_size,
                              score_thresh=cfg.score_thresh, nms_thresh=cfg.nms_thresh, workers=cfg.workers,
                              amp_dtype=amp_dtype, count_difficult=cfg.count_difficult)
        improved = False
        if dist.is_main():
            row = epoch_row(epoch + 1, losses, metrics, lr, LOSS_PARTS[cfg.model])
            history.append(row)
            improved = row["map"] > best_map
            best_map = max(best_map, row["map"])
        epoch += 1
        epochs, scheduler = refit_schedule(budget, cfg.epochs, epoch, scheduler, schedule)
        cfg = dataclasses.replace(cfg, epochs=epochs)  # the checkpoint records the plan a resume continues
        if dist.is_main():
            log(epoch_line(row, cfg.epochs))
        save(epoch, improved)
    final = final_report(out, val_set, classes, cfg, device, log) if dist.is_main() else None
    dist.barrier()
    return DetectResult(out=out, history=history, final=final, model=unwrap(model), best_map=best_map)


def _restore(ckpt: dict[str, Any], model, optimizer, scheduler, scaler, ema) -> tuple[int, list, float]:
    try:
        unwrap(model).load_state_dict(ckpt.get("model_state") or ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"cannot resume: the checkpoint does not fit the model/optimizer "
                              f"({first_line(exc, 200, lines=None)})") from None
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    return int(ckpt["epoch"]), [dict(r) for r in ckpt["history"]], float(ckpt["best_map"])


def _train_epoch(model, batches, optimizer, scheduler, cfg: DetectConfig, device, amp_dtype, scaler, ema,
                 epoch: int, out: Path) -> EpochLosses:
    with epoch_progress(len(batches), epoch, cfg.epochs, out) as bar:
        return train_one_epoch(model, batches, optimizer, scheduler, device=device, amp_dtype=amp_dtype,
                               scaler=scaler, grad_clip=cfg.grad_clip, ema=ema, progress=bar, epoch=epoch)

"""``train`` a detector into a run folder; ``evaluate_checkpoint`` for saved ones.

The run folder follows ``backbonekit train``'s conventions (``docs/detection-training.md``):
``config.yaml``, ``metrics.csv`` (every loss part and the COCO mAPs per epoch), ``last.pt`` and
``best.pt`` (atomic, ``weights_only``-loadable, best by mAP@[.5:.95]; each holds the model name and
arguments, class names, input size and anchors, so nothing else is needed to use it), the report
files of :mod:`.report`, and ``--resume`` continuing exactly.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Sequence

import torch
from torch import nn

from ... import create_model
from ..._text import few, first_line
from ...checkpoint import CheckpointError, atomic_save, load_file
from ...pretrained import weights_file
from ...engine import dist
from ...engine.budget import TimeBudget, fast_forward, refit_schedule
from ...engine.config import write_config
from ...engine.device import resolve_amp, resolve_device, set_determinism, unwrap
from ...engine.optim import build_optimizer, build_scheduler, epoch_progress
from ...engine.report import write_metrics
from ...engine.runs import (RunResult, check_resumed_world, evaluation_folder, evaluation_output,
                            read_training_checkpoint, resume_checkpoint, resumed_config, run_in_folder)
from ..task.anchors import COCO_ANCHORS, YOLOV3_MASKS, anchors_for_dataset, dataset_box_shapes
from .config import DETECT_RESUME_RULES, DetectConfig, legacy_values, parse_anchors
from ..data.datasets import load_detection_dataset
from .engine import EpochLosses, TrainBatches, augment_config, evaluate, train_one_epoch
from ..loading import load_run_checkpoint
from ..task.loss import PARTS, YOLOv3Loss
from .metrics import DetectionMetrics
from ..yolov3_weights import NORM_KEYS, recorded_normalisation

# each detector's loss parts, under their own names (torchvision's for its detectors); "loss" is their sum
LOSS_PARTS = {"yolov3": tuple(f"loss_{p}" for p in PARTS),
              "fasterrcnn": ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"),
              "retinanet": ("classification", "bbox_regression"),
              "fcos": ("classification", "bbox_regression", "bbox_ctrness")}
MAP_FIELDS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100")


def metric_fields(model: str = "yolov3") -> tuple[str, ...]:
    """The columns of ``metrics.csv`` for detector ``model``: each loss part as ``train_<part>``."""
    return ("epoch", "train_loss") + tuple(f"train_{p}" for p in LOSS_PARTS[model]) + MAP_FIELDS + ("lr", "time_s", "images")


METRIC_FIELDS = metric_fields("yolov3")
EMA_DECAY, EMA_RAMP_STEPS = 0.999, 100
PREDICTION_SAMPLES = 12  # validation images drawn in predictions.png


@dataclass
class DetectResult(RunResult):
    best_map: float  # final: the DetectionMetrics of best.pt


# -- data, anchors, model -----------------------------------------------------------------------

def load_splits(cfg: DetectConfig):
    """The training and validation sets, every label checked (one error line, or a count with skip_bad_labels)."""
    train_set = load_detection_dataset(cfg.dataset, cfg.data_dir, "train", skip_bad_labels=cfg.skip_bad_labels)
    val_set = load_detection_dataset(cfg.dataset, cfg.data_dir, "val", skip_bad_labels=cfg.skip_bad_labels)
    if list(train_set.classes) != list(val_set.classes):
        raise ValueError(f"{cfg.dataset}: the train and val splits name different classes "
                         f"({few(list(train_set.classes))} vs {few(list(val_set.classes))})")
    if category_ids(train_set) != category_ids(val_set):
        raise ValueError(f"{cfg.dataset}: the train and val files give the classes different category ids "
                         f"({category_ids(train_set)} vs {category_ids(val_set)})")
    if len(train_set) < cfg.batch_size * dist.world_size():
        raise ValueError(f"dataset {cfg.dataset} has {len(train_set)} training images, fewer than one batch "
                         f"({cfg.batch_size} x {dist.world_size()} processes)")
    if len(val_set) == 0:
        raise ValueError(f"dataset {cfg.dataset} has no validation images: expected a 'val' split")
    return train_set, val_set


def category_ids(dataset) -> list[int] | None:
    """The dataset's own category id of each label (a COCO file's), or None when its labels are the ids."""
    ids = getattr(dataset, "category_ids", None)
    return [int(i) for i in ids] if ids is not None else None


def resolve_anchors(spec: str | list, train_set, input_size: int) -> list[list[float]]:
    """``coco``: Darknet's nine; ``auto``: k-means (1 - IoU) on the training boxes at ``input_size``; or the list."""
    spec = parse_anchors(spec)
    if spec == "coco":
        return [list(map(float, a)) for a in COCO_ANCHORS]
    if spec == "auto":
        shapes = dataset_box_shapes(train_set, input_size)
        if len(torch.unique(shapes[(shapes > 0).all(1)], dim=0)) < 9:
            warnings.warn("--anchors auto: the training set has fewer than 9 distinct box shapes for k-means; "
                          "using Darknet's COCO anchors", stacklevel=2)
            return resolve_anchors("coco", train_set, input_size)
        fit = anchors_for_dataset(train_set, 9, input_size)
        return [[round(float(w), 2), round(float(h), 2)] for w, h in fit.anchors.tolist()]
    return spec


def _pretrained_source(cfg: DetectConfig):
    """(source, backbone kwargs) of ``cfg.pretrained``: a Darknet file, a detector, or a backbone checkpoint
    (the file is read once, by :func:`~.yolov3_weights.inspect_pretrained`)."""
    from ..yolov3_weights import inspect_pretrained

    source = inspect_pretrained(weights_file(cfg.pretrained, cfg.model), neck_channels=cfg.neck_channels)
    if source.num_classes:
        return source, {}
    if source.backbone and source.backbone != cfg.backbone:
        raise ValueError(f"pretrained {cfg.pretrained} holds {source.backbone} weights, found --backbone "
                         f"{cfg.backbone} (pass --backbone {source.backbone})")
    return source, dict(source.backbone_kwargs)


def build_detector(cfg: DetectConfig, num_classes: int, anchors: Sequence[Sequence[float]] | None, *,
                   load_pretrained: bool = True, resumed_kwargs: dict | None = None,
                   log: Callable[[str], None] = print) -> tuple[nn.Module, dict]:
    """``cfg.model`` on ``cfg.backbone`` ready to train (YOLOv3 with its loss attached), and the model
    arguments a checkpoint records.

    YOLOv3's input normalisation (``input_mean``/``input_std``) comes from the pretrained source (a
    classification run's mean/std, a detector's own, ImageNet's for torchvision/timm weights), or from
    ``resumed_kwargs`` (the run being resumed records it); none for Darknet's raw [0, 1] input.
    ``cfg.pretrained`` may be a file, a URL or a published tag (fetched once into torch's hub cache)."""
    if cfg.model != "yolov3":
        return build_fpn_detector(cfg, num_classes, load_pretrained=load_pretrained, resumed_kwargs=resumed_kwargs)
    # a resumed run keeps the backbone options it recorded (act_slope of a timm file, ...)
    source, arch = (_pretrained_source(cfg) if cfg.pretrained and load_pretrained
                    else (None, dict((resumed_kwargs or {}).get("backbone_kwargs") or {})))
    norm = source.input_norm if source is not None else \
        {k: v for k, v in (resumed_kwargs or {}).items() if k in NORM_KEYS and v is not None}
    model_kwargs = {"backbone": cfg.backbone, "backbone_kwargs": dict(arch), "input_size": cfg.input_size,
                    "anchors": [list(map(float, a)) for a in anchors], "masks": [list(m) for m in YOLOV3_MASKS],
                    "neck_channels": list(cfg.neck_channels), **norm}
    kwargs = copy.deepcopy(model_kwargs)
    kwargs["backbone_kwargs"]["frozen_stages"] = cfg.frozen_stages
    model = create_model(cfg.model, num_classes=num_classes, **kwargs)
    init_prior_bias(model)
    if source is not None:
        log(_load_source(model, source))
    attach_loss(model, ignore_thresh=cfg.ignore_thresh, iou_thresh=cfg.iou_thresh)
    return model, model_kwargs


def pretrained_normalisation(path: str | os.PathLike | None) -> tuple[list[float], list[float]]:
    """(mean, std) the weights in ``path`` were trained with: a classification run's (its checkpoint's
    ``preprocessing``), a detector run's (its recorded ``image_mean``/``image_std`` or YOLOv3's
    ``input_mean``/``input_std``), none for Darknet's files and YOLOv3 checkpoints without one (Darknet
    feeds raw [0, 1] pixels), else ImageNet's (torchvision's and timm's weights; torchvision's default)."""
    from ...onnx_meta import IMAGENET_MEAN, IMAGENET_STD
    from ...weights import detect_file_format

    imagenet, raw = (list(IMAGENET_MEAN), list(IMAGENET_STD)), ([0.0] * 3, [1.0] * 3)
    kind = None if path is None else detect_file_format(path)
    if kind == "darknet":
        return raw
    if kind != "torch":
        return imagenet
    ckpt = load_file(path)
    if not isinstance(ckpt, dict):
        return imagenet
    found = recorded_normalisation(ckpt.get("model_kwargs") or {}, ckpt.get("preprocessing"))
    return found or (raw if ckpt.get("model") == "yolov3" else imagenet)


def build_fpn_detector(cfg: DetectConfig, num_classes: int, *, load_pretrained: bool = True,
                       resumed_kwargs: dict | None = None) -> tuple[nn.Module, dict]:
    """torchvision's ``cfg.model`` (fasterrcnn, retinanet, fcos) on ``cfg.backbone`` through an FPN, taking
    ``cfg.input_size`` images as they come (``min_size = max_size = input_size``), normalised as the
    pretrained backbone was (:func:`pretrained_normalisation`). With ``cfg.pretrained`` the backbone gets
    torchvision's frozen BatchNorm and trainable layers; the checkpoint records that (``frozen_bn``). A
    resumed run takes the normalisation its checkpoint recorded (the pretrained file need not exist any more)."""
    if resumed_kwargs and "image_mean" in resumed_kwargs:
        mean, std = resumed_kwargs["image_mean"], resumed_kwargs["image_std"]
    else:
        mean, std = pretrained_normalisation(weights_file(cfg.pretrained, cfg.model) if cfg.pretrained else None)
    model_kwargs = {"backbone": cfg.backbone, "min_size": cfg.input_size, "max_size": cfg.input_size,
                    "image_mean": mean, "image_std": std, "frozen_bn": bool(cfg.pretrained)}
    if cfg.model == "retinanet":
        model_kwargs["detections_per_img"] = 100  # COCO's maxDets (torchvision's RetinaNet keeps 300)
    model_kwargs.update(cfg.rpn_proposals)  # Faster R-CNN's proposal counts, when set
    pretrained = cfg.pretrained if load_pretrained else None
    model = create_model(cfg.model, num_classes=num_classes, pretrained=pretrained, **model_kwargs)
    return model, model_kwargs


def init_prior_bias(model: nn.Module, objects_per_image: float = 4.0, class_prior: float = 0.6) -> None:
    """Start the output convs' objectness and class biases at prior probabilities (RetinaNet's "prior"
    initialisation, Lin et al. 2017, section 4.1; YOLOv5 does the same for YOLO heads): about
    ``objects_per_image`` objects spread over each level's cells, and ``class_prior`` over the classes.

    With a zero bias every cell starts at objectness 0.5, and the first hundreds of steps are spent
    pushing thousands of empty cells down (the noobj term dwarfs the others).
    """
    import math

    head = model.head
    for conv, (h, w) in zip(head.convs_pred, _grids(model)):
        bias = conv.bias.detach().view(-1, 5 + head.num_classes)  # (anchors, 5 + C)
        p_obj = min(0.5, objects_per_image / (h * w * bias.shape[0]))
        bias[:, 4] = math.log(p_obj / (1 - p_obj))
        p_cls = min(0.5, class_prior / max(head.num_classes - 0.99, 1.0))
        bias[:, 5:] = math.log(p_cls / (1 - p_cls))


def _grids(model: nn.Module) -> list[tuple[int, int]]:
    return [(model.input_size // s, model.input_size // s) for s in model.strides]


def _load_source(model: nn.Module, source) -> str:
    from ..yolov3_weights import load_pretrained

    if not source.num_classes:
        return load_pretrained(model, source)
    own = model.state_dict()
    head = [k for k, v in source.state.items() if k in own and own[k].shape != v.shape and ".convs_pred." in k]
    state = {k: v for k, v in source.state.items() if k not in head}
    missing, unexpected = model.load_state_dict(state, strict=False)
    wrong = [k for k in missing if k not in head] + list(unexpected)
    if wrong:
        raise CheckpointError(f"cannot start from {source.path}: its detector does not fit this one "
                              f"(keys {few(sorted(wrong))}; check --backbone and --neck-width)")
    note = f"; its output convs ({source.num_classes} classes) start from scratch" if head else ""
    return f"loaded the detector in {source.path}{note}"


def attach_loss(model: nn.Module, *, ignore_thresh: float, iou_thresh: float) -> nn.Module:
    """Give a YOLOv3 its training loss (``model(images, targets)`` in train mode then returns the loss dict)."""
    model.loss_fn = YOLOv3Loss(model.anchors.tolist(), model.masks, model.strides, model.num_classes,
                               ignore_thresh=ignore_thresh, iou_thresh=iou_thresh)
    return model


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


def load_detector(checkpoint: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """The detector in a best.pt/last.pt written by :func:`train` (eval mode), and the checkpoint dict
    (:func:`~.loading.load_run_checkpoint`)."""
    return load_run_checkpoint(checkpoint, device)


class EmaRamp:
    """EMA of weights with a warm-up of the decay (``decay * (1 - exp(-n / ramp))``), as YOLOv5 does,
    so the first steps' random weights fade quickly. A class, so it pickles."""

    def __init__(self, decay: float = EMA_DECAY, ramp: float = EMA_RAMP_STEPS) -> None:
        self.decay, self.ramp = decay, ramp

    def __call__(self, averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        import math

        d = self.decay * (1 - math.exp(-float(num_averaged) / self.ramp))
        return averaged * d + current * (1 - d)


def _ema(model: nn.Module) -> torch.optim.swa_utils.AveragedModel:
    # use_buffers: BatchNorm statistics are averaged too, so the EMA model is evaluated as it is
    return torch.optim.swa_utils.AveragedModel(unwrap(model), avg_fn=EmaRamp(), use_buffers=True)


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
    model, model_kwargs = build_detector(cfg, len(classes), anchors, load_pretrained=resumed is None,
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
        return build_scheduler("cosine", optimizer, cfg.lr, epochs, steps, cfg.warmup)

    scheduler = schedule(cfg.epochs)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    ema = _ema(model).to(device) if cfg.ema else None
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
            train_batches = budget.batches(train_batches)
        losses = _train_epoch(model, train_batches, optimizer, scheduler, cfg, device, amp_dtype, scaler, ema,
                              epoch, out)
        dist.broadcast_buffers(unwrap(model))  # every rank evaluates rank 0's BatchNorm statistics
        metrics, _ = evaluate(evaluated(), val_set, classes, device=device, batch_size=cfg.batch_size,
                              score_thresh=cfg.score_thresh, nms_thresh=cfg.nms_thresh, workers=cfg.workers,
                              amp_dtype=amp_dtype, count_difficult=cfg.count_difficult)
        improved = False
        if dist.is_main():
            row = _row(epoch + 1, losses, metrics, lr, LOSS_PARTS[cfg.model])
            history.append(row)
            improved = row["map"] > best_map
            best_map = max(best_map, row["map"])
        epoch += 1
        epochs, scheduler = refit_schedule(budget, cfg.epochs, epoch, scheduler, schedule)
        cfg = dataclasses.replace(cfg, epochs=epochs)  # the checkpoint records the plan a resume continues
        if dist.is_main():
            log(epoch_line(row, cfg.epochs))
        save(epoch, improved)
    final = _final_report(out, model, val_set, classes, cfg, device, log) if dist.is_main() else None
    dist.barrier()
    return DetectResult(out=out, history=history, final=final, model=unwrap(model), best_map=best_map)


def _row(epoch: int, losses: EpochLosses, metrics: DetectionMetrics, lr: float,
         parts: Sequence[str] = LOSS_PARTS["yolov3"]) -> dict[str, float]:
    row: dict[str, float] = {"epoch": epoch, "train_loss": losses.parts["loss"]}
    row.update({f"train_{p}": losses.parts[p] for p in parts})
    row.update({k: metrics.summary[k] for k in MAP_FIELDS})
    # images: those the epoch trained on (fewer when a --time budget ended it early)
    row.update({"lr": lr, "time_s": round(losses.seconds, 3), "images": losses.images})
    return row


def epoch_line(row: dict[str, float], epochs: int) -> str:
    parts = " ".join(f"{k.removeprefix('train_').removeprefix('loss_')} {v:.3f}" for k, v in row.items()
                     if k.startswith("train_") and k != "train_loss")
    return (f"epoch {int(row['epoch'])}/{epochs}  loss {row['train_loss']:.3f} ({parts})  "
            f"mAP {100 * row['map']:.1f}  mAP@.5 {100 * row['map_50']:.1f}  lr {row['lr']:.3g}  {row['time_s']:.1f}s")


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


def _final_report(out: Path, model: nn.Module, val_set, classes: list[str], cfg: DetectConfig, device,
                  log: Callable[[str], None]) -> DetectionMetrics:
    """best.pt on the whole validation set (rank 0 alone), its report files, and report.html."""
    from . import report

    best, ckpt = load_detector(out / "best.pt", device)
    metrics, items = evaluate(best, val_set, classes, device=device, batch_size=cfg.batch_size,
                              score_thresh=cfg.score_thresh, nms_thresh=cfg.nms_thresh, distributed=False,
                              count_difficult=cfg.count_difficult)
    report.write_evaluation(out, metrics, _samples(val_set, items), classes,
                            title=f"best.pt (epoch {ckpt['epoch']}) on {cfg.dataset} val split ({len(val_set)} images)",
                            detections=report.coco_detections(items, category_ids(val_set)))
    report.write_run_report(out)
    log(f"best.pt (epoch {ckpt['epoch']}): mAP {100 * metrics.summary['map']:.1f} "
        f"mAP@.5 {100 * metrics.summary['map_50']:.1f} on {len(val_set)} images; report: {out / 'report.html'}")
    return metrics


def _samples(dataset, items: list, count: int = PREDICTION_SAMPLES) -> list[tuple[torch.Tensor, dict, dict]]:
    """(uint8 image, prediction, target) of the first ``count`` evaluated images, for predictions.png."""
    return [(dataset[index][0], pred, target) for index, pred, target in items[:count]]


# -- saved detectors ----------------------------------------------------------------------------

def evaluate_checkpoint(checkpoint: str | os.PathLike, *, dataset: str | None = None, data_dir: str | None = None,
                        force: bool = False,  # ``out`` as engine.runs.evaluation_output allows; force: over other files
                        split: str = "val", device: str = "auto", batch_size: int = 16,
                        score_thresh: float | None = None, nms_thresh: float | None = None,
                        out: str | os.PathLike | None = None, skip_bad_labels: bool = False,
                        count_difficult: bool | None = None, log: Callable[[str], None] = print) -> DetectionMetrics:
    """COCO mAP of a saved detector on ``dataset`` (default: the one it was trained on), with the report
    files (per_class_ap.txt/.json, pr_curves.png, predictions.png, eval.json) and the detections in
    COCO's results format (detections.json: the dataset's image ids, its category ids, else the
    checkpoint's, else the labels) written to ``out``. ``count_difficult``: count VOC's difficult
    objects (default: the training run's choice; ignored, as VOC's protocol, when it made none)."""
    from . import report

    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, found {batch_size}")
    dev = resolve_device(device)
    model, ckpt = load_detector(checkpoint, dev)
    saved = ckpt.get("config") or {}
    name = dataset or saved.get("dataset", "photodigits")
    out = evaluation_output(out or evaluation_folder(checkpoint, name, split), force=force)  # before the work
    data = load_detection_dataset(name, data_dir if data_dir is not None else saved.get("data_dir"), split,
                                  skip_bad_labels=skip_bad_labels)
    if list(data.classes) != list(ckpt["classes"]):
        raise ValueError(f"dataset {name} has classes {few(list(data.classes), 4)}, the checkpoint was trained on "
                         f"{few(list(ckpt['classes']), 4)}")
    score = saved.get("score_thresh", 0.01) if score_thresh is None else score_thresh
    nms = saved.get("nms_thresh", 0.45) if nms_thresh is None else nms_thresh
    difficult = bool(saved.get("count_difficult", False)) if count_difficult is None else count_difficult
    metrics, items = evaluate(model, data, ckpt["classes"], device=dev, batch_size=batch_size, score_thresh=score,
                              nms_thresh=nms, distributed=False, count_difficult=difficult)
    ids = category_ids(data) or ckpt.get("category_ids")
    report.write_evaluation(out, metrics, _samples(data, items), ckpt["classes"],
                            title=f"{checkpoint} on {name} {split} split ({len(data)} images)",
                            detections=report.coco_detections(items, ids))
    log(f"{checkpoint} on {name} {split}: mAP {100 * metrics.summary['map']:.1f} "
        f"mAP@.5 {100 * metrics.summary['map_50']:.1f} ({len(data)} images); report in {out}")
    return metrics


def make_data(out: str | os.PathLike, *, image_size: int | None = None, num_train: int | None = None,
              num_val: int | None = None, seed: int | None = None) -> Path:
    """Write the built-in ``photodigits`` set (or a resized/recounted one) to ``out`` as a YOLO folder."""
    from ..data.photodigits import DEFAULT_SPEC, photodigits, write_yolo_dataset

    changes = {k: v for k, v in dict(image_size=image_size, num_train=num_train, num_val=num_val,
                                     seed=seed).items() if v is not None}
    spec = dataclasses.replace(DEFAULT_SPEC, **changes)
    return write_yolo_dataset({"train": photodigits("train", spec), "val": photodigits("val", spec)}, out)

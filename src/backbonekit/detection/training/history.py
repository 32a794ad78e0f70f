"""A run's history, one row per epoch: the columns of ``metrics.csv`` (each detector's loss parts under
its own names, the COCO mAPs, lr, time, images), the row, and the line printed for it."""

from __future__ import annotations

from typing import Sequence

from ..task.loss import PARTS
from .engine import EpochLosses
from .metrics import DetectionMetrics

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


def epoch_row(epoch: int, losses: EpochLosses, metrics: DetectionMetrics, lr: float,
              parts: Sequence[str] = LOSS_PARTS["yolov3"]) -> dict[str, float]:
    """One row of ``metrics.csv`` (:func:`metric_fields`) from an epoch's losses and its validation mAPs."""
    row: dict[str, float] = {"epoch": epoch, "train_loss": losses.parts["loss"]}
    row.update({f"train_{p}": losses.parts[p] for p in parts})
    row.update({k: metrics.summary[k] for k in MAP_FIELDS})
    # images: those the epoch trained on (fewer when a --time budget ended it early)
    row.update({"lr": lr, "time_s": round(losses.seconds, 3), "images": losses.images})
    return row


def epoch_line(row: dict[str, float], epochs: int) -> str:
    """The console line of one epoch's row."""
    parts = " ".join(f"{k.removeprefix('train_').removeprefix('loss_')} {v:.3f}" for k, v in row.items()
                     if k.startswith("train_") and k != "train_loss")
    return (f"epoch {int(row['epoch'])}/{epochs}  loss {row['train_loss']:.3f} ({parts})  "
            f"mAP {100 * row['map']:.1f}  mAP@.5 {100 * row['map_50']:.1f}  lr {row['lr']:.3g}  {row['time_s']:.1f}s")

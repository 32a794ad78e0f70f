"""Detection metrics: COCO mAP through torchmetrics with the pycocotools backend.

No hand-written COCO evaluation lives here: ``torchmetrics.detection.MeanAveragePrecision``
runs pycocotools' ``COCOeval`` (101-point interpolated AP, IoU 0.50:0.05:0.95, 100 detections per
image, COCO's small/medium/large areas). This module only feeds it and names its results.

What it feeds besides boxes and labels: COCO's crowd regions as ``iscrowd`` (pycocotools' own rule: a
detection on one is neither right nor wrong), a COCO file's own ``area`` (which sorts objects into
small/medium/large, as pycocotools does with the file), and VOC's ``difficult`` objects, ignored by
default as VOC's protocol does: pycocotools ignores a ground-truth box whose area is outside the
evaluated range, so a difficult box gets an area outside every range. A detection matching it is then
ignored, a difficult box left undetected is no miss, and its IoU stays the ordinary one (pycocotools'
crowd rule would measure it against the detection's area instead).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

SUMMARY_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100")
IGNORED_AREA = math.inf  # above pycocotools' largest area range (1e10), so the box is ignored in every range


@dataclass
class DetectionMetrics:
    """COCO summary figures (fractions in [0, 1]; -1 where COCO has nothing to count) and per-class AP."""

    summary: dict[str, float]
    per_class_ap: dict[str, float]  # class name -> AP@[.5:.95]; -1 for a class absent from the ground truth
    per_class_ap50: dict[str, float] = field(default_factory=dict)
    # precision at 101 recall points, IoU 0.5, all areas, 100 detections: class name -> list of 101 values
    pr_curves: dict[str, list[float]] = field(default_factory=dict)
    crowd_regions: int = 0  # COCO iscrowd boxes in the ground truth (always ignored)
    difficult_boxes: int = 0  # VOC difficult boxes in the ground truth
    difficult_counted: bool = False  # whether they were counted as ordinary objects (else ignored)

    def row(self, prefix: str = "") -> dict[str, float]:
        """The summary as one flat dict (for metrics.csv)."""
        return {f"{prefix}{key}": value for key, value in self.summary.items()}

    def notes(self) -> list[str]:
        """What the evaluation did with crowd regions and difficult objects, one line each (none if none)."""
        lines = []
        if self.crowd_regions:
            lines.append(f"crowd regions (iscrowd): {self.crowd_regions}, ignored as pycocotools does "
                         "(a detection on one counts neither way)")
        if self.difficult_boxes and self.difficult_counted:
            lines.append(f"difficult objects: {self.difficult_boxes}, counted as ordinary objects (--count-difficult)")
        elif self.difficult_boxes:
            lines.append(f"difficult objects: {self.difficult_boxes}, ignored as in VOC's protocol "
                         "(--count-difficult counts them)")
        return lines


def _metric(class_metrics: bool = True):
    try:
        from torchmetrics.detection import MeanAveragePrecision
    except ImportError as exc:  # torchmetrics is in the train extra
        raise ImportError(f"COCO mAP needs torchmetrics and pycocotools ({exc}); "
                          "pip install 'backbonekit[train]'") from None
    # COCO's own recall points: torchmetrics' default builds them with float32 torch.linspace, where
    # 0.6 becomes 0.6000000238 and a recall of exactly 3/5 no longer reaches that point
    recall_points = np.linspace(0.0, 1.0, 101).tolist()  # pycocotools' Params.recThrs
    # sync_on_compute=False: only rank 0 computes, over the predictions it gathered from every rank itself
    # (engine.gather_to_main); torchmetrics' own all_gather in compute() would wait for the other ranks forever
    return MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools", rec_thresholds=recall_points,
                                class_metrics=class_metrics, extended_summary=True, sync_on_compute=False)


class DetectionEvaluator:
    """Accumulates predictions and ground truth image by image, then computes COCO mAP once.

    ``update`` takes torchvision's detection dicts: predictions with ``boxes`` (xyxy, pixels),
    ``scores``, ``labels``; targets with ``boxes`` and ``labels`` (0-based). Everything is kept on
    the CPU, so evaluation memory does not grow on the accelerator.
    """

    def __init__(self, class_names: Sequence[str], *, count_difficult: bool = False) -> None:
        self.class_names = list(class_names)
        self.count_difficult = count_difficult
        self._metric = _metric()
        self.num_images = 0
        self.crowd_regions = 0
        self.difficult_boxes = 0

    def update(self, predictions: Sequence[Mapping[str, Tensor]], targets: Sequence[Mapping[str, Tensor]]) -> None:
        """Targets may also carry ``iscrowd``, ``area`` and ``difficult`` (see the module docstring)."""
        if len(predictions) != len(targets):
            raise ValueError(f"expected one prediction per target, found {len(predictions)} predictions "
                             f"for {len(targets)} targets")
        truth = [self._ground_truth(t) for t in targets]
        self._metric.update([_cpu(p, ("boxes", "scores", "labels")) for p in predictions], truth)
        self.num_images += len(targets)

    def _ground_truth(self, target: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """A target as torchmetrics takes it: crowd flags, areas (0: the box's), difficult boxes ignored
        unless counted."""
        out = _cpu(target, ("boxes", "labels"))
        n = len(out["labels"])
        crowd = _flags(target, "iscrowd", n)
        area = target["area"].detach().to("cpu").float().clone() if "area" in target else torch.zeros(n)
        difficult = _flags(target, "difficult", n)
        if not self.count_difficult:
            area[difficult] = IGNORED_AREA
        self.crowd_regions += int(crowd.sum())
        self.difficult_boxes += int(difficult.sum())
        return {**out, "iscrowd": crowd.long(), "area": area}

    def compute(self) -> DetectionMetrics:
        if self.num_images == 0:
            raise ValueError("cannot compute mAP: expected at least one evaluated image, found none")
        result = self._metric.compute()
        summary = {key: float(result[key]) for key in SUMMARY_KEYS}
        per_class, per_class50, curves = self._per_class(result)
        return DetectionMetrics(summary, per_class, per_class50, curves, crowd_regions=self.crowd_regions,
                                difficult_boxes=self.difficult_boxes, difficult_counted=self.count_difficult)

    def _per_class(self, result: Mapping[str, Tensor]) -> tuple[dict, dict, dict]:
        # precision: (IoU thresholds, 101 recall points, classes, areas, max detections); COCOeval's class
        # axis runs over the sorted label ids seen in predictions or ground truth
        ids = [int(i) for i in torch.atleast_1d(result["classes"]).tolist()]
        precision = result["precision"]
        per_class, per_class50, curves = {}, {}, {}
        for axis, label in enumerate(ids):
            name = self.class_names[label] if 0 <= label < len(self.class_names) else str(label)
            p_all = precision[:, :, axis, 0, -1]
            p_50 = precision[0, :, axis, 0, -1]
            per_class[name] = _mean_valid(p_all)
            per_class50[name] = _mean_valid(p_50)
            curves[name] = [max(float(v), 0.0) for v in p_50]
        return per_class, per_class50, curves


def _mean_valid(values: Tensor) -> float:
    """COCO's convention: entries of -1 mean 'no ground truth', and a class with none scores -1."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.numel() else -1.0


def _flags(target: Mapping[str, Tensor], key: str, n: int) -> Tensor:
    """A per-box bool field of ``target`` (all False when it has none)."""
    flags = target.get(key)
    return flags.detach().to("cpu").bool().reshape(-1) if flags is not None else torch.zeros(n, dtype=torch.bool)


def _cpu(item: Mapping[str, Tensor], keys: Sequence[str]) -> dict[str, Tensor]:
    missing = [k for k in keys if k not in item]
    if missing:
        raise ValueError(f"expected keys {', '.join(keys)} in each detection dict, found {sorted(item)}")
    out = {k: item[k].detach().to("cpu") for k in keys}
    out["boxes"] = out["boxes"].float().reshape(-1, 4)
    out["labels"] = out["labels"].long()
    if "scores" in out:
        out["scores"] = out["scores"].float()
    return out


def format_table(metrics: DetectionMetrics) -> str:
    """The COCO summary and per-class AP as a plain-text table (what ``detect evaluate`` prints)."""
    names = {"map": "mAP@[.5:.95]", "map_50": "mAP@.5", "map_75": "mAP@.75", "map_small": "mAP small",
             "map_medium": "mAP medium", "map_large": "mAP large", "mar_100": "AR@100"}
    lines = [f"{names[k]:<14}{_pct(v):>8}" for k, v in metrics.summary.items()]
    width = max([len(n) for n in metrics.per_class_ap] + [5])
    lines.append("")
    lines.append(f"{'class':<{width}}  {'AP':>7}  {'AP50':>7}")
    for name, ap in metrics.per_class_ap.items():
        lines.append(f"{name:<{width}}  {_pct(ap):>7}  {_pct(metrics.per_class_ap50.get(name, -1.0)):>7}")
    notes = metrics.notes()
    return "\n".join(lines + ([""] + notes if notes else []))


def _pct(value: float) -> str:
    return "n/a" if value < 0 or math.isnan(value) else f"{100 * value:.1f}"

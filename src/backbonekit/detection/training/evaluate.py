"""A trained detector's evaluation with its report files: ``best.pt`` at the end of a run
(:func:`final_report`) and any saved checkpoint later (:func:`evaluate_checkpoint`, ``detect evaluate``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from ..._text import few
from ...engine.config import renamed_keys
from ...engine.runs import evaluation_folder, evaluation_output
from ...engine.device import resolve_device
from ..data.formats import load_detection_dataset
from ..loading import load_run_checkpoint
from .config import DetectConfig
from .engine import evaluate
from .metrics import DetectionMetrics
from .splits import category_ids

PREDICTION_SAMPLES = 12  # validation images drawn in predictions.png


def final_report(out: Path, val_set, classes: list[str], cfg: DetectConfig, device,
                 log: Callable[[str], None]) -> DetectionMetrics:
    """best.pt on the whole validation set (rank 0 alone), its report files, and report.html."""
    from . import report

    best, ckpt = load_run_checkpoint(out / "best.pt", device)
    metrics, items = evaluate(best, val_set, classes, device=device, batch_size=cfg.batch_size,
                              score_thresh=cfg.score_thresh, nms_thresh=cfg.nms_thresh, distributed=False,
                              count_difficult=cfg.count_difficult)
    report.write_evaluation(out, metrics, prediction_samples(val_set, items), classes,
                            title=f"best.pt (epoch {ckpt['epoch']}) on {cfg.dataset} val split ({len(val_set)} images)",
                            detections=report.coco_detections(items, category_ids(val_set)))
    report.write_run_report(out)
    log(f"best.pt (epoch {ckpt['epoch']}): mAP {100 * metrics.summary['map']:.1f} "
        f"mAP@.5 {100 * metrics.summary['map_50']:.1f} on {len(val_set)} images; report: {out / 'report.html'}")
    return metrics


def prediction_samples(dataset, items: list, count: int = PREDICTION_SAMPLES) -> list[tuple[torch.Tensor, dict, dict]]:
    """(uint8 image, prediction, target) of the first ``count`` evaluated images, for predictions.png."""
    return [(dataset[index][0], pred, target) for index, pred, target in items[:count]]


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
    model, ckpt = load_run_checkpoint(checkpoint, dev)
    saved = renamed_keys(ckpt.get("config") or {}, DetectConfig)  # a run saved before a rename: its old names
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
    report.write_evaluation(out, metrics, prediction_samples(data, items), ckpt["classes"],
                            title=f"{checkpoint} on {name} {split} split ({len(data)} images)",
                            detections=report.coco_detections(items, ids))
    log(f"{checkpoint} on {name} {split}: mAP {100 * metrics.summary['map']:.1f} "
        f"mAP@.5 {100 * metrics.summary['map_50']:.1f} ({len(data)} images); report in {out}")
    return metrics

"""``detect evaluate FILE.onnx``: COCO mAP of an exported YOLOv3 (fp32 or int8) run by ONNX Runtime.

The file's ``predictions`` output (Darknet's decoding, in the graph) goes through exactly what
:meth:`YOLOv3.detect` does around the network: the same letterbox function before it and the same
thresholding, class-aware NMS and mapping back to original pixels after it; so an fp32 file scores
what its PyTorch model scores, and the int8 file's delta is the quantization's alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor

from ..deploy.runtime import open_session
from ..engine.onnx import OnnxModule
from ..engine.runs import evaluation_folder, evaluation_output
from .training.metrics import DetectionMetrics
from .data.transforms import letterbox_images
from .models.yolov3 import check_images, postprocess


class OnnxDetector(OnnxModule):
    """An exported YOLOv3 behind :meth:`YOLOv3.detect`'s interface (``forward`` gives ``predictions``)."""

    def __init__(self, session, meta: dict) -> None:
        super().__init__(session)
        names = [o.name for o in session.get_outputs()]
        if meta["task"] != "detection" or not names or names[0] != "predictions":
            raise ValueError(f"expected a detector exported by backbonekit (first output 'predictions'), found a "
                             f"{meta['task']} model with outputs {', '.join(names)}")
        self.meta = meta
        self.input_size = int(meta["input_size"])
        self.score_thresh = float(meta.get("score_thresh", 0.05))
        self.nms_thresh = float(meta.get("nms_thresh", 0.45))
        self.detections_per_img = int(meta.get("detections_per_img", 100))

    def detect(self, images: Sequence[Tensor] | Tensor, *, score_thresh: float | None = None,
               nms_thresh: float | None = None, detections_per_img: int | None = None) -> list[dict[str, Tensor]]:
        """:meth:`YOLOv3.detect` with the network run by ONNX Runtime."""
        batch, boxes = letterbox_images(check_images(images), self.input_size)
        decoded = self(batch)
        return postprocess(decoded, boxes, self.score_thresh if score_thresh is None else score_thresh,
                           self.nms_thresh if nms_thresh is None else nms_thresh,
                           self.detections_per_img if detections_per_img is None else detections_per_img)


def load_onnx_detector(path: str | os.PathLike, threads: int | None = None) -> OnnxDetector:
    """An :class:`OnnxDetector` for an exported YOLOv3 file; one line for anything else."""
    session, meta = open_session(path, threads)
    return OnnxDetector(session, meta)


def evaluate_onnx_detector(path: str | os.PathLike, *, dataset: str | None = None, data_dir: str | None = None,
                           force: bool = False,
                           split: str = "val", batch_size: int = 16, score_thresh: float = 0.01,
                           nms_thresh: float | None = None, out: str | os.PathLike | None = None,
                           skip_bad_labels: bool = False, count_difficult: bool | None = None,
                           threads: int | None = None, log: Callable[[str], None] = print) -> DetectionMetrics:
    """COCO mAP of an exported YOLOv3 on ``dataset`` (default: the one in its metadata), with the report
    files of ``detect evaluate`` (per_class_ap, pr_curves, eval.json) written to ``out``.

    ``score_thresh`` defaults to 0.01 as in training's evaluation (not the file's deployment threshold).
    VOC's difficult objects are ignored unless ``count_difficult``; detections.json takes the dataset's
    image and category ids. ``out`` follows :func:`~backbonekit.engine.runs.evaluation_output`'s rules
    (``force``: into a folder holding other files).
    """
    from .training import report
    from .data.formats import load_detection_dataset
    from .training.engine import evaluate

    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, found {batch_size}")
    model = load_onnx_detector(path, threads)
    name = dataset or model.meta.get("dataset")
    if not name:
        raise ValueError(f"{path} does not name the dataset it was trained on: pass --dataset")
    out = evaluation_output(out or evaluation_folder(path, f"{Path(path).stem}-{name}", split), force=force)
    data = load_detection_dataset(name, data_dir, split, skip_bad_labels=skip_bad_labels)
    classes = list(model.meta["classes"])
    if list(data.classes) != classes:
        raise ValueError(f"dataset {name} has {len(data.classes)} classes {list(data.classes)[:4]}, the file "
                         f"was exported with {len(classes)}: {classes[:4]}")
    nms = model.nms_thresh if nms_thresh is None else nms_thresh
    with torch.no_grad():
        metrics, items = evaluate(model, data, classes, device=torch.device("cpu"), batch_size=batch_size,
                                  score_thresh=score_thresh, nms_thresh=nms, distributed=False,
                                  count_difficult=bool(count_difficult))
    kind = "int8" if "quantization" in model.meta else "fp32"
    report.write_evaluation(out, metrics, [], classes, title=f"{path} ({kind} ONNX) on {name} {split} split "
                                                               f"({len(data)} images)",
                            detections=report.coco_detections(items, getattr(data, "category_ids", None)))
    log(f"{path} ({kind} ONNX) on {name} {split}: mAP {100 * metrics.summary['map']:.1f} "
        f"mAP@.5 {100 * metrics.summary['map_50']:.1f} ({len(data)} images); report in {out}")
    return metrics

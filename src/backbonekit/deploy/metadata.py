"""The preprocessing an exported model needs, stored inside the ONNX file (``metadata_props``).

One key, ``backbonekit``, holds a JSON object, so a file carries everything a runtime needs to
prepare an image the way training and evaluation did, and nobody has to copy mean/std or sizes by hand:

* classification: ``classes``, ``image_size`` (square resize, Pillow bilinear: what torchvision's
  ``Resize`` does to the images of an image folder), ``mean`` and ``std`` (in [0, 1] units, applied as
  ``(pixel / 255 - mean) / std``), ``in_chans``;
* detection: ``classes``, ``input_size`` and ``letterbox_fill`` (Darknet's letterbox: aspect ratio kept,
  bilinear without antialiasing as ``F.interpolate``, border filled with ``letterbox_fill``), pixel
  values in [0, 1];
* both: ``model``, ``dataset`` where known, and ``quantization`` for an int8 file.

This module is pure Python (no torch, no onnx): the torch-free runtime reads it through ONNX Runtime.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping, Sequence

KEY = "backbonekit"
FPN_KEY = "backbonekit.fpn"  # detection/fpn_export.py: those files carry their own, smaller record
VERSION = 1
TASKS = ("classification", "detection")
DETECTION_OUTPUTS = ("selected", "boxes", "scores", "labels")  # the NonMaxSuppression outputs of a detector file
IMAGE_REGIONS = "image_regions"  # a detector file's optional input: where each image lies in its letterboxed input


def classifier_metadata(*, classes: Sequence[str], image_size: int, mean: Sequence[float], std: Sequence[float],
                        in_chans: int = 3, model: str | None = None, dataset: str | None = None) -> dict[str, Any]:
    """The metadata of an image classifier (see the module docstring)."""
    meta = {"version": VERSION, "task": "classification", "model": model, "dataset": dataset,
            "classes": [str(c) for c in classes], "image_size": int(image_size), "in_chans": int(in_chans),
            "mean": [float(v) for v in mean], "std": [float(v) for v in std], "resize": "bilinear"}
    return check_metadata(meta, "classifier metadata")


def detector_metadata(*, classes: Sequence[str], input_size: int, letterbox_fill: float = 0.5,
                      model: str | None = None, dataset: str | None = None) -> dict[str, Any]:
    """The metadata of a detector whose input is a letterboxed image in [0, 1] (YOLOv3)."""
    meta = {"version": VERSION, "task": "detection", "model": model, "dataset": dataset,
            "classes": [str(c) for c in classes], "input_size": int(input_size), "in_chans": 3,
            "letterbox_fill": float(letterbox_fill), "resize": "bilinear-no-antialias"}
    return check_metadata(meta, "detector metadata")


def to_props(meta: Mapping[str, Any]) -> dict[str, str]:
    """``metadata_props`` entries (string to string) holding ``meta``."""
    return {KEY: json.dumps(dict(meta), sort_keys=True)}


def from_props(props: Mapping[str, str], source: str) -> dict[str, Any]:
    """The metadata stored in an ONNX file's ``metadata_props`` (``source`` names the file in errors)."""
    if KEY not in props and FPN_KEY in props:
        raise ValueError(f"{source} is a Faster R-CNN / RetinaNet / FCOS export (resize, normalisation and NMS in "
                         f"the graph): expected a classifier or YOLOv3 file here; run it with onnxruntime directly "
                         f"(input: one (3, H, W) float image in [0, 1])")
    if KEY not in props:
        raise ValueError(f"{source} has no backbonekit preprocessing metadata (metadata_props key {KEY!r}): "
                         f"export it with backbonekit.onnx_meta.export_onnx or backbonekit.quantize.export_int8")
    try:
        meta = json.loads(props[KEY])
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: metadata {KEY!r} is not valid JSON ({exc.msg} at char {exc.pos})") from None
    return check_metadata(meta, source)


def check_metadata(meta: Any, source: str) -> dict[str, Any]:
    """``meta`` itself when complete and consistent; one ValueError line naming the first problem."""
    if not isinstance(meta, dict):
        raise ValueError(f"{source}: expected the metadata to be a JSON object, found {type(meta).__name__}")
    task = meta.get("task")
    if task not in TASKS:
        raise ValueError(f"{source}: expected task {' or '.join(TASKS)} in the metadata, found {task!r}")
    classes = meta.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"{source}: expected 'classes' to be a non-empty list of names, found {classes!r}")
    size_key = "image_size" if task == "classification" else "input_size"
    _positive_int(meta.get(size_key), size_key, source)
    if task == "classification":
        chans = _positive_int(meta.get("in_chans", 3), "in_chans", source)
        for key in ("mean", "std"):
            values = meta.get(key)
            if (not isinstance(values, list) or len(values) != chans
                    or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)):
                raise ValueError(f"{source}: expected {key!r} to be {chans} numbers, found {values!r}")
        if any(v <= 0 for v in meta["std"]):
            raise ValueError(f"{source}: expected a positive 'std', found {meta['std']}")
    else:
        fill = meta.get("letterbox_fill")
        if not isinstance(fill, (int, float)) or not 0 <= fill <= 1:
            raise ValueError(f"{source}: expected 'letterbox_fill' in [0, 1], found {fill!r}")
    return meta


def _positive_int(value: Any, key: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{source}: expected {key!r} to be a positive integer, found {value!r}")
    return value

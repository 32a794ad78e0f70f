"""Faster R-CNN, RetinaNet and FCOS to ONNX, whole: resize and normalisation, network, box decoding and NMS.

torchvision supports exporting its detectors with the TorchScript-based exporter only
(``torch.onnx.export(..., dynamo=False)``, opset 11 or later; its own tests do the same): the detection
post-processing (per-class NMS, top-k, thresholds) is traced into the graph, so the file takes one
image and returns its detections. Batch 1 only: torchvision's post-processing loops over images in
Python, and a traced loop fixes the batch size. The input is one ``images`` tensor (1, 3, H, W), float
in [0, 1], any H and W (the graph resizes to ``min_size``/``max_size`` as the model does); outputs
are ``boxes`` (K, 4) xyxy in the input's pixels, ``scores`` (K) and ``labels`` (K), 0-based object
classes as :meth:`detect` returns them. Thresholds are the model's (or the arguments') at export time.
int8 is not offered for these detectors (refused in one line).

Metadata (kind, classes, the transform's mean/std, min/max size) is stored as JSON under its own
``metadata_props`` key, ``backbonekit.fpn`` (:func:`read_fpn_metadata`), not under the ``backbonekit`` key of
:mod:`backbonekit.onnx_meta`: that schema describes a letterboxed, unnormalised input that a runtime prepares,
while these graphs resize and normalise inside, so a deploy runtime must not prepare their input.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint import atomic_path, output_file
from ..deploy.metadata import FPN_KEY
from .models.torchvision_detectors import FCOS, FasterRCNN, RetinaNet, postprocess_settings

TORCHVISION_DETECTORS = ("fasterrcnn", "retinanet", "fcos")
METADATA_KEY = FPN_KEY
ONNX_OPSET = 17  # the TorchScript exporter's well-trodden range for torchvision's detection ops


class _OneImage(nn.Module):
    """``forward(images (1, 3, H, W)) -> (boxes, scores, labels)`` of the detector's one image."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        found = self.model([images[0]])[0]
        return found["boxes"], found["scores"], found["labels"]


def fpn_kind(model: nn.Module) -> str | None:
    """``fasterrcnn``, ``retinanet`` or ``fcos`` for this package's torchvision detectors, else None."""
    for kind, cls in zip(TORCHVISION_DETECTORS, (FasterRCNN, RetinaNet, FCOS)):
        if isinstance(model, cls):
            return kind
    return None


def fpn_metadata(model: nn.Module, classes: list[str] | None = None) -> dict[str, Any]:
    """What a runtime needs besides the graph: kind, classes, the transform's mean/std and sizes."""
    transform = model.transform
    names = classes or getattr(model, "class_names", None) or [f"class {i}" for i in range(model.num_classes)]
    return {"kind": fpn_kind(model), "task": "detection", "classes": list(names),
            "mean": [float(v) for v in transform.image_mean], "std": [float(v) for v in transform.image_std],
            "min_size": int(transform.min_size[0]), "max_size": int(transform.max_size),
            "input": "images (1, 3, H, W) float in [0, 1]; resize and normalisation are in the graph",
            "outputs": "boxes (K, 4) xyxy input pixels, scores (K), labels (K) 0-based"}


def export_fpn_onnx(model: nn.Module, path: str | os.PathLike, *, input_size: int | None = None,
                    batch_size: int = 1, int8: bool = False, score_thresh: float | None = None,
                    nms_thresh: float | None = None, max_detections: int | None = None,
                    opset: int = ONNX_OPSET) -> Path:
    """Write a Faster R-CNN / RetinaNet / FCOS of this package as ONNX with post-processing inside (see the
    module docstring); return the path. ``input_size``: the side of the example image traced (default the
    model's ``min_size``). Metadata (:func:`fpn_metadata`) is stored in the file."""
    import onnx

    kind = fpn_kind(model)
    if kind is None:
        raise ValueError(f"expected a fasterrcnn, retinanet or fcos detector, found {type(model).__name__}")
    if int8:
        raise ValueError(f"--int8 is not available for {kind}: expected a float export (int8 covers YOLOv3 and "
                         f"backbones), found --int8")
    if batch_size != 1:
        raise ValueError(f"{kind} exports with batch size 1 only (torchvision's post-processing is traced per "
                         f"image), found --batch-size {batch_size}")
    path = output_file(path)
    model = model.cpu().float().eval()
    size = input_size or int(model.transform.min_size[0])
    example = torch.rand(1, 3, size, size)
    with postprocess_settings(model, score_thresh, nms_thresh, max_detections), warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        buffer = io.BytesIO()
        torch.onnx.export(_OneImage(model).eval(), (example,), buffer, dynamo=False, opset_version=opset,
                          input_names=["images"], output_names=["boxes", "scores", "labels"],
                          dynamic_axes={"images": {2: "height", 3: "width"}, "boxes": {0: "detections"},
                                        "scores": {0: "detections"}, "labels": {0: "detections"}})
    proto = onnx.load_from_string(buffer.getvalue())
    proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(fpn_metadata(model), sort_keys=True))
    onnx.checker.check_model(proto)
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    return path


def read_fpn_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The :func:`fpn_metadata` stored in an ONNX file by :func:`export_fpn_onnx` (one ValueError line if absent)."""
    from ..onnx_meta import load_proto

    props = {p.key: p.value for p in load_proto(path, load_weights=False).metadata_props}
    if METADATA_KEY not in props:
        raise ValueError(f"{path}: expected an ONNX file written by backbonekit detect export for fasterrcnn, "
                         f"retinanet or fcos (metadata key {METADATA_KEY!r}), found none")
    return json.loads(props[METADATA_KEY])

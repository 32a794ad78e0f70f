"""YOLOv3 to ONNX with Darknet's decoding inside the graph and, optionally, NMS (ONNX ``NonMaxSuppression``).

The network and its decoding go through ``torch.onnx.export(dynamo=True)`` (as
:mod:`backbonekit.export` does for backbones) with one output, ``predictions`` (N, R, 5 + C): the
:meth:`YOLOv3.forward_raw` contract. With ``nms=True`` a few standard ONNX nodes are appended to that
graph with ``onnx.helper``: boxes to corners, score = objectness x class probability, then
``NonMaxSuppression`` over every image and class at once (class-aware, as ``batched_nms``), giving
``selected`` (K, 3: image, class, box index), ``boxes`` (K, 4, xyxy in input pixels), ``scores`` (K)
and ``labels`` (K). Why not trace torchvision's NMS: the dynamo exporter does translate
``torchvision.ops.nms`` for one image and one class, but a per-image, class-aware postprocess over a
dynamic batch is a Python loop with data-dependent shapes that ``torch.export`` cannot capture, while
ONNX's own operator does all images and classes in one node. Its one difference from
:meth:`YOLOv3.detect`: ``max_detections`` caps each class of each image (ONNX has no per-image cap).
Letterboxing stays outside the graph (:func:`letterbox`), like any image decoding.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from ..checkpoint import atomic_path, output_file
from ..export import DEFAULT_OPSET
from .yolov3 import YOLOv3


class DecodedYOLOv3(nn.Module):
    """``forward(x) = model.decode(model.forward_levels(x))`` without the Python-side input checks."""

    def __init__(self, model: YOLOv3) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.decode(self.model.forward_levels(x))


def export_yolov3_onnx(model: YOLOv3, path: str | os.PathLike, *, input_size: int | None = None,
                       batch_size: int = 1, dynamic_batch: bool = False, nms: bool = False,
                       score_thresh: float | None = None, nms_thresh: float | None = None,
                       max_detections: int | None = None, opset: int = DEFAULT_OPSET,
                       classes: Sequence[str] | None = None, dataset: str | None = None) -> Path:
    """Write ``model`` (BatchNorm folded in place, eval mode, CPU) as ONNX; return the path.

    Inputs: ``images`` (N, 3, S, S) letterboxed, values in [0, 1]. Outputs: ``predictions`` and, with
    ``nms``, ``selected``, ``boxes``, ``scores``, ``labels`` (see the module docstring). Thresholds
    default to the model's (``score_thresh``, ``nms_thresh``, ``detections_per_img``). The file's
    metadata (:func:`backbonekit.deploy.metadata.detector_metadata`) holds the letterbox size and fill,
    the thresholds and ``classes`` (default: COCO's names for 80 classes, else ``class 0``, ...), so
    :mod:`backbonekit.deploy` and ``detect evaluate FILE.onnx`` prepare images as :meth:`YOLOv3.detect` does.
    """
    import onnx

    if not isinstance(model, YOLOv3):
        raise ValueError(f"expected a YOLOv3 here (decoding in the graph), found {type(model).__name__}: the FPN "
                         f"detectors export through detection.fpn_export.export_fpn_onnx")

    from ..deploy.metadata import detector_metadata
    from ..onnx_meta import set_metadata
    from ..optimize import fuse_batchnorm
    from .predict import class_names
    from .yolov3 import LETTERBOX_FILL

    size = input_size or model.input_size
    if size % 32 or size < 32 or batch_size < 1:
        raise ValueError(f"expected an input size that is a positive multiple of 32 and a batch size >= 1, "
                         f"found {size} and {batch_size}")
    path = output_file(path)
    model = model.cpu().float().eval()
    example = torch.rand(max(batch_size, 2) if dynamic_batch else batch_size, 3, size, size)
    fuse_batchnorm(model, example[:1])
    dynamic_shapes = {"x": {0: torch.export.Dim("batch")}} if dynamic_batch else None
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(DecodedYOLOv3(model), (example,), dynamo=True, input_names=["images"],
                                    output_names=["predictions"], opset_version=opset,
                                    dynamic_shapes=dynamic_shapes, verbose=False)
    proto = program.model_proto
    score = model.score_thresh if score_thresh is None else score_thresh
    iou = model.nms_thresh if nms_thresh is None else nms_thresh
    cap = model.detections_per_img if max_detections is None else max_detections
    if nms:
        append_nms(proto, model.num_classes, score, iou, cap)
    meta = detector_metadata(classes=class_names(model.num_classes, classes), input_size=size,
                             letterbox_fill=LETTERBOX_FILL, model="yolov3", dataset=dataset)
    set_metadata(proto, {**meta, "score_thresh": float(score), "nms_thresh": float(iou), "detections_per_img": int(cap)})
    onnx.checker.check_model(proto)
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    return path


def append_nms(proto, num_classes: int, score_thresh: float, nms_thresh: float, max_detections: int) -> None:
    """Append corner boxes, scores and ``NonMaxSuppression`` after the ``predictions`` output (in place)."""
    from onnx import TensorProto, helper

    graph = proto.graph
    pred = graph.output[0].name

    def const(name: str, values: list, dtype: int) -> str:
        graph.initializer.append(helper.make_tensor(name, dtype, [len(values)], values))
        return name

    i64, f32 = TensorProto.INT64, TensorProto.FLOAT
    axis2 = const("nms_axis2", [2], i64)
    nodes = [
        helper.make_node("Slice", [pred, const("nms_0", [0], i64), const("nms_2", [2], i64), axis2], ["nms_xy"]),
        helper.make_node("Slice", [pred, "nms_2", const("nms_4", [4], i64), axis2], ["nms_wh"]),
        helper.make_node("Slice", [pred, "nms_4", const("nms_5", [5], i64), axis2], ["nms_obj"]),
        helper.make_node("Slice", [pred, "nms_5", const("nms_end", [5 + num_classes], i64), axis2], ["nms_cls"]),
        helper.make_node("Mul", ["nms_wh", const("nms_half", [0.5], f32)], ["nms_half_wh"]),
        helper.make_node("Sub", ["nms_xy", "nms_half_wh"], ["nms_x1y1"]),
        helper.make_node("Add", ["nms_xy", "nms_half_wh"], ["nms_x2y2"]),
        helper.make_node("Concat", ["nms_x1y1", "nms_x2y2"], ["nms_boxes"], axis=2),  # (N, R, 4)
        helper.make_node("Mul", ["nms_obj", "nms_cls"], ["nms_scores"]),  # (N, R, C)
        helper.make_node("Transpose", ["nms_scores"], ["nms_scores_t"], perm=[0, 2, 1]),  # (N, C, R)
        helper.make_node("NonMaxSuppression", ["nms_boxes", "nms_scores_t", const("nms_max", [max_detections], i64),
                                               const("nms_iou", [nms_thresh], f32),
                                               const("nms_score", [score_thresh], f32)], ["selected"]),
        helper.make_node("Gather", ["selected", const("nms_image_box", [0, 2], i64)], ["nms_ib"], axis=1),
        helper.make_node("GatherND", ["nms_boxes", "nms_ib"], ["boxes"]),
        helper.make_node("GatherND", ["nms_scores_t", "selected"], ["scores"]),
        helper.make_node("Gather", ["selected", const("nms_label", [1], i64)], ["nms_label_col"], axis=1),
        helper.make_node("Squeeze", ["nms_label_col", const("nms_axis1", [1], i64)], ["labels"]),
    ]
    graph.node.extend(nodes)
    graph.output.extend([helper.make_tensor_value_info("selected", i64, ["detections", 3]),
                         helper.make_tensor_value_info("boxes", f32, ["detections", 4]),
                         helper.make_tensor_value_info("scores", f32, ["detections"]),
                         helper.make_tensor_value_info("labels", i64, ["detections"])])

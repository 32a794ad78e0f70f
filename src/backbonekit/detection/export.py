"""YOLOv3 to ONNX with Darknet's decoding inside the graph and, optionally, NMS (ONNX ``NonMaxSuppression``).

The network and its decoding go through ``torch.onnx.export(dynamo=True)`` (as
:mod:`backbonekit.export` does for backbones) with one output, ``predictions`` (N, R, 5 + C): the
:meth:`YOLOv3.forward_raw` contract. With ``nms=True`` a few standard ONNX nodes are appended to that
graph with ``onnx.helper``: boxes to corners, score = objectness x class probability, candidates with
no area inside their image dropped, then ``NonMaxSuppression`` over every image and class at once
(class-aware, as ``batched_nms``) and each image's best ``max_detections`` kept, giving ``selected`` (K, 3:
image, class, box index), ``boxes`` (K, 4, xyxy in input pixels), ``scores`` (K) and ``labels`` (K):
:meth:`YOLOv3.detect`'s postprocess, operation for operation. Where each image lies in its letterboxed
input is the optional input ``image_regions`` (:func:`append_nms`). Why not trace torchvision's NMS: the
dynamo exporter does translate ``torchvision.ops.nms`` for one image and one class, but a per-image,
class-aware postprocess over a dynamic batch is a Python loop with data-dependent shapes that
``torch.export`` cannot capture, while ONNX's own operator does all images and classes in one node.
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
from ..deploy.metadata import IMAGE_REGIONS
from ..export import DEFAULT_OPSET
from .models.yolov3 import YOLOv3


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
    from .models.yolov3 import LETTERBOX_FILL

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
        append_nms(proto, model.num_classes, score, iou, cap, size)
    meta = detector_metadata(classes=class_names(model.num_classes, classes), input_size=size,
                             letterbox_fill=LETTERBOX_FILL, model="yolov3", dataset=dataset)
    set_metadata(proto, {**meta, "score_thresh": float(score), "nms_thresh": float(iou), "detections_per_img": int(cap)})
    onnx.checker.check_model(proto)
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    return path


def append_nms(proto, num_classes: int, score_thresh: float, nms_thresh: float, max_detections: int,
               input_size: int) -> None:
    """Append corner boxes, scores, ``NonMaxSuppression`` and a per-image cap after ``predictions`` (in place).

    As :func:`.yolov3.postprocess`: candidates with no area inside their image are dropped before NMS and
    each image keeps its ``max_detections`` best. Where each image lies in its letterboxed input comes from
    the optional input ``image_regions`` ((N, 4) or (1, 4) float ``x1, y1, x2, y2`` in input pixels;
    :mod:`backbonekit.deploy` feeds it); left out, it is the whole input (an initializer of the same name
    is its default)."""
    from onnx import TensorProto, helper

    graph = proto.graph
    pred = graph.output[0].name

    def const(name: str, values: list, dtype: int, dims: list[int] | None = None) -> str:
        graph.initializer.append(helper.make_tensor(name, dtype, [len(values)] if dims is None else dims, values))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    i64, f32 = TensorProto.INT64, TensorProto.FLOAT
    graph.input.append(helper.make_tensor_value_info(IMAGE_REGIONS, f32, ["regions", 4]))
    const(IMAGE_REGIONS, [0.0, 0.0, float(input_size), float(input_size)], f32, [1, 4])
    nodes: list = []
    axis2, zero, one, two, four, five = (const(f"nms_{n}", [v], i64) for n, v in
                                         (("axis2", 2), ("0", 0), ("1", 1), ("2", 2), ("4", 4), ("5", 5)))
    zero_s, one_s = const("nms_0s", [0], i64, []), const("nms_1s", [1], i64, [])  # scalars (Range, CumSum)
    xy = node("Slice", [pred, zero, two, axis2], "nms_xy")
    wh = node("Slice", [pred, two, four, axis2], "nms_wh")
    obj = node("Slice", [pred, four, five, axis2], "nms_obj")
    cls = node("Slice", [pred, five, const("nms_end", [5 + num_classes], i64), axis2], "nms_cls")
    half = node("Mul", [wh, const("nms_half", [0.5], f32)], "nms_half_wh")
    x1y1, x2y2 = node("Sub", [xy, half], "nms_x1y1"), node("Add", [xy, half], "nms_x2y2")
    boxes = node("Concat", [x1y1, x2y2], "nms_boxes", axis=2)  # (N, R, 4), unclipped as postprocess's NMS
    # a candidate counts when its box clipped to its image's region keeps a positive width and height
    region = node("Unsqueeze", [IMAGE_REGIONS, one], "nms_region")  # (N or 1, 1, 4)
    low = node("Slice", [region, zero, two, axis2], "nms_region_low")
    high = node("Slice", [region, two, four, axis2], "nms_region_high")
    sides = node("Sub", [node("Min", [x2y2, high], "nms_clip_high"), node("Max", [x1y1, low], "nms_clip_low")],
                 "nms_sides")
    width = node("Slice", [sides, zero, one, axis2], "nms_width")
    height = node("Slice", [sides, one, two, axis2], "nms_height")
    positive = node("And", [node("Greater", [width, const("nms_0f", [0.0], f32)], "nms_width_positive"),
                            node("Greater", [height, "nms_0f"], "nms_height_positive")], "nms_positive")
    has_area = node("Cast", [positive], "nms_has_area", to=f32)  # (N, R, 1): 1 or 0
    scores = node("Mul", [node("Mul", [obj, cls], "nms_raw_scores"), has_area], "nms_scores")  # (N, R, C)
    scores_t = node("Transpose", [scores], "nms_scores_t", perm=[0, 2, 1])  # (N, C, R)
    found = node("NonMaxSuppression", [boxes, scores_t, const("nms_max", [max_detections], i64),
                                       const("nms_iou", [nms_thresh], f32), const("nms_score", [score_thresh], f32)],
                 "nms_found")  # (K, 3): image, class, box; at most max_detections per class and image
    # the per-image cap: sort by (image, score descending), keep each image's first max_detections
    found_scores = node("GatherND", [scores_t, found], "nms_found_scores")
    image = node("Squeeze", [node("Gather", [found, zero], "nms_image_col", axis=1), one], "nms_image")
    key = node("Sub", [node("Mul", [node("Cast", [image], "nms_image_f", to=TensorProto.DOUBLE),
                                    const("nms_2d", [2.0], TensorProto.DOUBLE)], "nms_image_2"),
                       node("Cast", [found_scores], "nms_scores_d", to=TensorProto.DOUBLE)], "nms_key")
    count = node("Shape", [found_scores], "nms_count")
    order = "nms_order"
    nodes.append(helper.make_node("TopK", [key, count], ["nms_sorted_key", order], largest=0, sorted=1))
    sorted_image = node("Gather", [image, order], "nms_sorted_image")
    batch = node("Squeeze", [node("Slice", [node("Shape", [pred], "nms_pred_shape"), zero, one], "nms_batch_1"),
                             zero], "nms_batch")
    images = node("Range", [zero_s, batch, one_s], "nms_images")
    member = node("Cast", [node("Equal", [node("Unsqueeze", [sorted_image, one], "nms_sorted_image_col"),
                                          node("Unsqueeze", [images, zero], "nms_images_row")], "nms_member")],
                  "nms_member_i", to=i64)  # (K, N)
    per_image = node("ReduceSum", [member, zero], "nms_per_image", keepdims=0)
    first = node("Gather", [node("CumSum", [per_image, zero_s], "nms_starts", exclusive=1),
                            sorted_image], "nms_first")
    position = node("Range", [zero_s, node("Squeeze", [count, zero], "nms_count_s"),
                              one_s], "nms_position")
    keep = node("Less", [node("Sub", [position, first], "nms_rank"), const("nms_cap", [max_detections], i64)],
                "nms_keep")
    selected = node("Gather", [found, node("Compress", [order, keep], "nms_kept", axis=0)], "selected", axis=0)
    image_box = node("Gather", [selected, const("nms_image_box", [0, 2], i64)], "nms_ib", axis=1)
    node("GatherND", [boxes, image_box], "boxes")
    node("GatherND", [scores_t, selected], "scores")
    node("Squeeze", [node("Gather", [selected, one], "nms_label_col", axis=1), one], "labels")
    graph.node.extend(nodes)
    graph.output.extend([helper.make_tensor_value_info("selected", i64, ["detections", 3]),
                         helper.make_tensor_value_info("boxes", f32, ["detections", 4]),
                         helper.make_tensor_value_info("scores", f32, ["detections"]),
                         helper.make_tensor_value_info("labels", i64, ["detections"])])

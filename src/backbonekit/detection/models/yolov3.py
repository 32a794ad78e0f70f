"""YOLOv3 (Redmon & Farhadi, "YOLOv3: An Incremental Improvement", arXiv 1804.02767).

The detector is five parts called in order, as torchvision's detectors are: ``transform``
(letterbox each image to the input size with :func:`~backbonekit.detection.data.transforms.letterbox`, the
same function training and evaluation use), ``backbone`` (Darknet-53's C3-C5, or
any registered backbone's three maps at strides 8, 16 and 32), ``neck`` (:mod:`.neck`), ``head``
(:mod:`.head`) and ``postprocess`` (decode with :mod:`backbonekit.detection.task.coder`, score threshold,
class-aware NMS, boxes back into each image's pixels).

Three ways in:

* ``model(images)`` in eval mode, ``images`` a list of float (3, H, W) tensors in [0, 1] of any sizes:
  one dict per image with ``boxes`` (xyxy, original pixels), ``scores`` and ``labels``.
* ``model(x)`` or ``model.forward_raw(x)`` with a batch tensor (N, 3, S, S) already at the input size:
  the decoded predictions (N, sum of 3*H*W, 5 + C) in Darknet's order (the contract shared with any
  cfg-driven port, and what export and profiling trace).
* ``model(images, targets)`` in train mode: the loss dict from ``model.loss_fn(levels, targets)``.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_area, box_convert

from ...models import Backbone
from ...models._registry import ModelInfo, register_model
from ..data.transforms import LETTERBOX_FILL, LetterboxGeometry, letterbox_geometry, letterbox_images
from ..task.anchors import COCO_ANCHORS, YOLOV3_MASKS, anchor_tensor
from ..task.coder import decode_level
from .head import YOLOv3Head
from .neck import YOLOV3_NECK_CHANNELS, YOLOv3Neck

LEVEL_STRIDES = (8, 16, 32)  # the backbone maps the neck takes, shallow to deep
# old YOLOv3 argument name -> new one: checkpoints written before the rename record the old names in model_kwargs
RENAMED_KWARGS = {"input_mean": "image_mean", "input_std": "image_std"}
# ``backbonekit.detection.models.yolov3.letterbox``, the path the docs showed, is the LIST letterbox
# (transforms.letterbox_images), not the one-image transforms.letterbox: call letterbox_images.
letterbox = letterbox_images
__all__ = ["LETTERBOX_FILL", "LEVEL_STRIDES", "LetterboxGeometry", "RENAMED_KWARGS", "YOLOv3", "build_backbone",
           "check_images", "current_kwargs", "letterbox", "letterbox_geometry", "letterbox_images", "postprocess",
           "yolov3"]


def check_images(images: Sequence[Tensor] | Tensor) -> list[Tensor]:
    """A list of float (3, H, W) images; one ValueError line naming the first bad one otherwise."""
    if isinstance(images, Tensor):
        if images.dim() != 4:
            raise ValueError(f"expected a list of (3, H, W) images or a (N, 3, H, W) batch, found a tensor of "
                             f"shape {tuple(images.shape)}")
        images = list(images.unbind(0))
    if not isinstance(images, (list, tuple)) or len(images) == 0:
        raise ValueError(f"expected a non-empty list of (3, H, W) image tensors, found "
                         f"{'an empty list' if isinstance(images, (list, tuple)) else type(images).__name__}")
    for i, image in enumerate(images):
        if not isinstance(image, Tensor):
            raise ValueError(f"image {i}: expected a (3, H, W) tensor, found {type(image).__name__}")
        if image.dim() != 3 or image.shape[0] != 3 or image.shape[1] < 1 or image.shape[2] < 1:
            raise ValueError(f"image {i}: expected a 3-channel (3, H, W) tensor, found shape {tuple(image.shape)}")
        if not image.is_floating_point():
            raise ValueError(f"image {i}: expected float values in [0, 1], found dtype {image.dtype} "
                             f"(divide uint8 images by 255)")
    return list(images)


class YOLOv3(nn.Module):
    """YOLOv3: backbone (C3-C5), :class:`YOLOv3Neck`, :class:`YOLOv3Head`, Darknet's decoding.

    Args:
        backbone: a ``features_only`` backbone returning three maps at strides 8, 16 and 32.
        num_classes: object classes (80 for COCO).
        anchors: (width, height) pairs in input pixels (default Darknet's nine COCO anchors).
        masks: the anchors of each output level, deepest (stride 32) first.
        neck_channels: ``n`` of each detection block, deepest first (Darknet: 512, 256, 128).
        input_size: the letterboxed input size of ``model(images)`` (a multiple of 32).
        score_thresh, nms_thresh, detections_per_img: postprocessing defaults (arguments of :meth:`detect`).
        image_mean, image_std: per-channel normalisation applied inside the network, ``(x - mean) / std``
            on the [0, 1] input, for a backbone trained on normalised images (a ``backbonekit train`` run);
            default None: Darknet's raw [0, 1] input. torchvision's detectors' names; :func:`yolov3` also
            takes the old ``input_mean``/``input_std`` (:data:`RENAMED_KWARGS`).
    """

    def __init__(self, backbone: Backbone, num_classes: int = 80,
                 anchors: Sequence[Sequence[float]] = COCO_ANCHORS,
                 masks: Sequence[Sequence[int]] = YOLOV3_MASKS,
                 neck_channels: Sequence[int] = YOLOV3_NECK_CHANNELS, input_size: int = 416,
                 score_thresh: float = 0.05, nms_thresh: float = 0.45, detections_per_img: int = 100,
                 image_mean: Sequence[float] | None = None, image_std: Sequence[float] | None = None) -> None:
        super().__init__()
        strides = tuple(info.stride for info in getattr(backbone, "feature_info", []))
        if not getattr(backbone, "features_only", False) or strides != LEVEL_STRIDES:
            raise ValueError(f"expected a features_only backbone with maps at strides {LEVEL_STRIDES}, "
                             f"found strides {strides}")
        with torch.device("cpu"):  # checked on the CPU even when the model is built on the meta device
            table = anchor_tensor(anchors)
        masks = tuple(tuple(int(i) for i in m) for m in masks)
        if len(masks) != len(strides) or any(not 0 <= i < len(table) for m in masks for i in m):
            raise ValueError(f"expected {len(strides)} masks of indices into the {len(table)} anchors, found {masks}")
        if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 32 or input_size % 32:
            raise ValueError(f"input_size must be a positive multiple of 32, found {input_size!r}")
        self.num_classes = num_classes
        self.masks = masks
        self.strides = tuple(reversed(strides))  # output order: stride 32, 16, 8
        self.input_size = input_size
        self.in_chans = 3
        self.score_thresh, self.nms_thresh, self.detections_per_img = score_thresh, nms_thresh, detections_per_img
        self.register_buffer("anchors", table, persistent=False)  # (K, 2) px; recorded in model_kwargs, not weights
        mean, std = input_normalisation(image_mean, image_std)  # recorded in model_kwargs, not weights
        self.register_buffer("image_mean", mean, persistent=False)
        self.register_buffer("image_std", std, persistent=False)
        self.backbone = backbone
        self.neck = YOLOv3Neck([info.channels for info in backbone.feature_info], neck_channels)
        self.head = YOLOv3Head(self.neck.out_channels, num_classes, [len(m) for m in masks])
        self.loss_fn: Callable[[list[Tensor], Any], dict[str, Tensor]] | None = None  # set by the training code

    # -- the network -------------------------------------------------------------------------
    def check_input(self, x: Tensor) -> None:
        """One ValueError line for a batch the network cannot take."""
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != 3:
            found = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"expected a (N, 3, H, W) batch, found {found}")
        if x.shape[2] % 32 or x.shape[3] % 32 or x.shape[2] < 32 or x.shape[3] < 32:
            raise ValueError(f"expected height and width that are positive multiples of 32 (YOLOv3's stride), "
                             f"found {x.shape[2]}x{x.shape[3]}")

    def forward_levels(self, x: Tensor) -> list[Tensor]:
        """Raw head outputs, stride 32, 16, 8: each (N, A*(5+C), H, W), anchor-major channels.

        ``x`` holds [0, 1] pixels; with ``image_mean``/``image_std`` the backbone sees them normalised."""
        if self.image_mean is not None:
            x = (x - self.image_mean) / self.image_std
        return self.head(self.neck(self.backbone.forward_levels(x, self.backbone.out_indices)))

    def level_anchors(self) -> list[Tensor]:
        """Each output level's (A, 2) anchors, in output order."""
        return [self.anchors[list(m)] for m in self.masks]

    def decode(self, levels: Sequence[Tensor]) -> Tensor:
        """Raw level outputs -> (N, R, 5+C): cx, cy, w, h (input pixels), objectness, class probabilities."""
        return torch.cat([decode_level(raw, anchors, stride) for raw, anchors, stride
                          in zip(levels, self.level_anchors(), self.strides)], 1)

    def forward_raw(self, x: Tensor) -> Tensor:
        """Darknet's decoded predictions for a batch already at the input size, values in [0, 1] (with the
        default ``image_mean``/``image_std`` of None, exactly Darknet's contract; otherwise the network
        normalises them first)."""
        self.check_input(x)
        return self.decode(self.forward_levels(x))

    # -- images in, detections out -------------------------------------------------------------
    def postprocess(self, decoded: Tensor, boxes: Sequence[LetterboxGeometry], score_thresh: float, nms_thresh: float,
                    detections_per_img: int) -> list[dict[str, Tensor]]:
        """:func:`postprocess` (the model's own thresholds are :meth:`detect`'s defaults, not used here)."""
        return postprocess(decoded, boxes, score_thresh, nms_thresh, detections_per_img)

    @torch.no_grad()
    def detect(self, images: Sequence[Tensor] | Tensor, *, score_thresh: float | None = None,
               nms_thresh: float | None = None, detections_per_img: int | None = None) -> list[dict[str, Tensor]]:
        """Letterbox, run, decode, threshold, NMS: one ``{boxes, scores, labels}`` dict per image."""
        images = check_images(images)
        batch, boxes = letterbox_images(images, self.input_size)
        decoded = self.forward_raw(batch)
        return self.postprocess(decoded, boxes, self.score_thresh if score_thresh is None else score_thresh,
                                self.nms_thresh if nms_thresh is None else nms_thresh,
                                self.detections_per_img if detections_per_img is None else detections_per_img)

    def forward(self, images: Sequence[Tensor] | Tensor, targets: Any = None) -> Any:
        if self.training:
            if self.loss_fn is None:
                raise NotImplementedError("training YOLOv3 needs its loss, which lands with the training issue: "
                                          "set model.loss_fn = fn(levels, targets) -> dict of losses")
            batch = images if isinstance(images, Tensor) else torch.stack(check_images(images))
            self.check_input(batch)
            return self.loss_fn(self.forward_levels(batch), targets)
        if isinstance(images, Tensor) and images.dim() == 4:
            return self.forward_raw(images)
        return self.detect(images)


def postprocess(decoded: Tensor, boxes: Sequence[LetterboxGeometry], score_thresh: float, nms_thresh: float,
                detections_per_img: int) -> list[dict[str, Tensor]]:
    """Darknet's decoded predictions (N, K, 5 + C) -> one ``{boxes, scores, labels}`` dict per image: score =
    objectness x class probability (each class its own candidate, as Darknet), drop scores <= ``score_thresh``
    and boxes with no area inside the image (those in the letterbox padding: clipped, nothing is left),
    class-aware NMS, keep the best ``detections_per_img``, map boxes back into the original image.
    The exported graph (:func:`backbonekit.detection.export.append_nms`) does the same, operation for operation."""
    results = []
    for pred, box in zip(decoded, boxes):
        scores = pred[:, 4:5] * pred[:, 5:]
        index, labels = (scores > score_thresh).nonzero(as_tuple=True)
        xyxy = box_convert(pred[index, :4], "cxcywh", "xyxy")
        scores = scores[index, labels]
        inside = has_area_in_image(xyxy, box)
        xyxy, scores, labels = xyxy[inside], scores[inside], labels[inside]
        keep = batched_nms(xyxy, scores, labels, nms_thresh)[:detections_per_img]
        original = box.to_original(xyxy[keep])
        kept = box_area(original) > 0  # float rounding at the image's edge, after the rescale
        results.append({"boxes": original[kept], "scores": scores[keep][kept], "labels": labels[keep][kept]})
    return results


def has_area_in_image(xyxy: Tensor, box: LetterboxGeometry) -> Tensor:
    """Which boxes (xyxy, letterboxed canvas pixels) keep a positive width and height once clipped to the
    part of the canvas the image fills."""
    low = xyxy.new_tensor([box.left, box.top])
    high = low + xyxy.new_tensor([box.new_w, box.new_h])
    sides = torch.minimum(xyxy[:, 2:], high) - torch.maximum(xyxy[:, :2], low)
    return (sides > 0).all(1)


def input_normalisation(mean: Sequence[float] | None, std: Sequence[float] | None) -> tuple[Tensor | None, Tensor | None]:
    """(1, 3, 1, 1) mean and std buffers, or (None, None) for Darknet's raw input; one ValueError line otherwise."""
    if mean is None and std is None:
        return None, None
    values = [list(v) if isinstance(v, (list, tuple)) else v for v in (mean, std)]
    if any(not isinstance(v, list) or len(v) != 3 or not all(isinstance(x, (int, float)) for x in v) for v in values):
        raise ValueError(f"image_mean and image_std must both be 3 numbers (one per RGB channel), found "
                         f"image_mean={mean!r}, image_std={std!r}")
    if min(values[1]) <= 0:
        raise ValueError(f"image_std must be positive, found {values[1]}")
    with torch.device("cpu"):
        return torch.tensor(values[0]).view(1, 3, 1, 1), torch.tensor(values[1]).view(1, 3, 1, 1)


# -- building -----------------------------------------------------------------------------------
def current_kwargs(model_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``model_kwargs`` with YOLOv3's old argument names (:data:`RENAMED_KWARGS`) replaced by today's: what
    a checkpoint written before the rename records still builds the same model."""
    out = dict(model_kwargs)
    for old, new in RENAMED_KWARGS.items():
        if old in out:
            value = out.pop(old)
            if out.get(new, value) != value:
                raise ValueError(f"{old} and {new} name the same YOLOv3 argument ({old} is its old name), found "
                                 f"{old}={value!r} and {new}={out[new]!r}")
            out[new] = value
    return out

def build_backbone(name: str, **kwargs: Any) -> Backbone:
    """A registered backbone as a features_only model of its maps at strides 8, 16 and 32."""
    from ...models import create_model
    from ...models import model_info

    if model_info(name).task != "classification":
        raise ValueError(f"backbone must be a registered backbone (list_models()), found the detector {name!r}")
    body = create_model(name, num_classes=0, **kwargs)
    by_stride = {info.stride: info.index for info in body.feature_info}
    missing = [s for s in LEVEL_STRIDES if s not in by_stride]
    if missing:
        raise ValueError(f"backbone {name} has no feature maps at strides {missing}: YOLOv3 needs strides "
                         f"{LEVEL_STRIDES}, found {sorted(by_stride)}")
    return body.as_features([by_stride[s] for s in LEVEL_STRIDES])


YOLOV3_INFO = ModelInfo(
    name="yolov3", paper="arXiv:1804.02767", input_size=416, params=61_949_149, gmacs=32.932037632,
    task="detection",
    source="params: 61,949,149 for 80 classes (yolov3.weights: 62,001,757 floats incl. BatchNorm statistics, "
           "AlexeyAB/darknet#1910); MACs: Darknet prints 65.86 BFLOPs (=2 x MACs) at 416, 38.97 at 320, 140.69 at 608",
    extra={"bflops": {320: 38.97, 416: 65.86, 608: 140.69}, "macs_416": 32_932_037_632},
)


@register_model(YOLOV3_INFO)
def yolov3(*, num_classes: int | None = None, in_chans: int = 3, pretrained: str | os.PathLike | None = None,
           backbone: str | None = None, backbone_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> YOLOv3:
    """YOLOv3 on ``backbone`` (default: the checkpoint's, else Darknet-53; any registered backbone).

    ``num_classes`` defaults to the weights file's (Darknet ``.weights`` files tell it by their size),
    else 80. ``pretrained``: a Darknet detector ``.weights`` file (``yolov3.weights``,
    ``yolov3-voc.weights``, any class count), a backbone file (``darknet53.conv.74``: the neck and head
    start from scratch, as YOLOv3's training recipe does), or a backbonekit checkpoint.
    ``kwargs``: :class:`YOLOv3` options (``anchors``, ``masks``, ``neck_channels``, ``input_size``,
    thresholds, ``image_mean``/``image_std``; the old names ``input_mean``/``input_std`` are read too).
    """
    from ..weights import load_pretrained, read_pretrained

    kwargs = current_kwargs(kwargs)
    if in_chans != 3:
        raise ValueError(f"YOLOv3 takes RGB images: expected in_chans=3, found {in_chans}")
    source = read_pretrained(pretrained, "yolov3", kwargs.get("neck_channels", YOLOV3_NECK_CHANNELS)) \
        if pretrained is not None else None
    if source is not None:
        recorded = {**source.input_norm, **current_kwargs(source.model_kwargs)}  # normalisation: the weights' own
        backbone = backbone or recorded.pop("backbone", None)
        backbone_kwargs = backbone_kwargs or recorded.pop("backbone_kwargs", None)
        for key, value in recorded.items():
            if key not in ("backbone", "backbone_kwargs"):
                kwargs.setdefault(key, value)
        if source.num_classes and num_classes not in (None, source.num_classes):
            raise ValueError(f"{pretrained} holds a {source.num_classes}-class detector, found num_classes={num_classes}")
        num_classes = num_classes or source.num_classes
    num_classes = 80 if num_classes is None else num_classes
    backbone = backbone or "darknet53"
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1 for a detector, found {num_classes!r}")
    model = YOLOv3(build_backbone(backbone, **(backbone_kwargs or {})), num_classes, **kwargs)
    # what a checkpoint records to rebuild this model (create_model("yolov3", **model_kwargs))
    model.model_kwargs = {"backbone": backbone, **({"backbone_kwargs": backbone_kwargs} if backbone_kwargs else {}),
                          **{k: [list(v) for v in val] if k in ("anchors", "masks") else
                             (list(val) if isinstance(val, tuple) else val) for k, val in kwargs.items()}}
    if source is not None:
        message = load_pretrained(model, source)
        if message:
            warnings.warn(message, stacklevel=3)
    return model

"""The transforms model, training, evaluation and export share: the letterbox and box bookkeeping.

The letterbox is Darknet's ``letterbox_image`` (keep the aspect ratio, bilinear without
antialiasing, centre on grey): :meth:`YOLOv3.detect`, the training and evaluation datasets, ONNX
evaluation and int8 calibration all call :func:`letterbox`, and the torch-free deploy runtime takes
the same geometry from :func:`backbonekit.images.letterbox_fit`. The random training
augmentations are in :mod:`.augment`.

Boxes are xyxy in pixels, continuous coordinates (the left edge of pixel column ``j`` is ``x = j``),
so a geometric map of the image maps box edges exactly; after every geometric change boxes are
clipped to the image and dropped when thinner than ``min_size`` pixels or when less than
``min_visible`` of their area is left inside the image (:func:`clip_and_keep`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import clip_boxes_to_image

from ...images import LetterboxPlace, letterbox_fit

Size = int | tuple[int, int]


def size_hw(size: Size) -> tuple[int, int]:
    """(height, width) of a size given as one side or as (height, width)."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def fill_value(image: Tensor, fill: float) -> float:
    """A fill given as a fraction of white, in ``image``'s own scale (0-255 for uint8)."""
    return float(round(fill * 255)) if image.dtype == torch.uint8 else float(fill)


# ---------------------------------------------------------------------------------------------
# Targets: per-box fields, packing a batch's boxes into one tensor, sanitising after a geometric map
# ---------------------------------------------------------------------------------------------

def per_box_keys(target: dict) -> list[str]:
    """Keys whose tensors have one row per box (``boxes``, ``labels``, ``difficult``...)."""
    n = len(target["boxes"])
    return [k for k, v in target.items() if isinstance(v, Tensor) and v.dim() >= 1 and len(v) == n]


def select_boxes(target: dict, keep: Tensor, boxes: Tensor | None = None) -> dict:
    """``target`` with only the boxes where ``keep`` is True (every per-box field), optionally new ``boxes``."""
    keys = per_box_keys(target)
    out = {k: (v[keep] if k in keys else v) for k, v in target.items()}
    if boxes is not None:
        out["boxes"] = boxes[keep]
    return out


def pack_targets(targets: Sequence[dict]) -> tuple[Tensor, Tensor]:
    """All boxes of a batch as one (M, 4) float tensor, and each box's image index (M,)."""
    counts = torch.tensor([len(t["boxes"]) for t in targets])
    boxes = torch.cat([t["boxes"].float().reshape(-1, 4) for t in targets]) if targets else torch.zeros(0, 4)
    return boxes, torch.arange(len(targets)).repeat_interleave(counts)


def unpack_targets(targets: Sequence[dict], boxes: Tensor, keep: Tensor) -> list[dict]:
    """Put packed ``boxes`` back into per-image targets, keeping the boxes where ``keep`` is True."""
    counts = [len(t["boxes"]) for t in targets]
    return [select_boxes(t, k, b) for t, b, k in zip(targets, boxes.split(counts), keep.split(counts))]


def visible(before: Tensor, after: Tensor, min_size: float, min_visible: float) -> Tensor:
    """Which clipped boxes ``after`` to keep: both sides >= ``min_size`` and >= ``min_visible`` of the area ``before`` clipping."""
    wh = after[:, 2:] - after[:, :2]
    area_before = (before[:, 2:] - before[:, :2]).prod(1)
    return (wh >= min_size).all(1) & (wh.prod(1) >= min_visible * area_before)


def clip_and_keep(boxes: Tensor, height: int, width: int, min_size: float = 2.0,
                  min_visible: float = 0.2) -> tuple[Tensor, Tensor]:
    """Boxes clipped to an image of (height, width), and which of them to keep (see :func:`visible`)."""
    clipped = clip_boxes_to_image(boxes, (height, width))
    return clipped, visible(boxes, clipped, min_size, min_visible)


# ---------------------------------------------------------------------------------------------
# Letterbox (training, evaluation and inference alike): keep the aspect ratio, pad with grey
# ---------------------------------------------------------------------------------------------

LETTERBOX_FILL = 0.5  # Darknet's letterbox_image fills the border with grey (0.5)


@dataclass(frozen=True)
class LetterboxGeometry(LetterboxPlace):
    """Where an image of ``height`` x ``width`` pixels went in the letterboxed canvas: scaled to
    ``new_w`` x ``new_h`` and placed at (``left``, ``top``). A point (x, y) of the image lands at
    (x * new_w / width + left, y * new_h / height + top)."""

    def _offset_scale(self, boxes: Tensor) -> tuple[Tensor, Tensor]:
        offset = boxes.new_tensor([self.left, self.top, self.left, self.top])
        scale = boxes.new_tensor([self.new_w / self.width, self.new_h / self.height] * 2)
        return offset, scale

    def to_letterbox(self, boxes: Tensor) -> Tensor:
        """xyxy boxes in the original image's pixels -> xyxy boxes in the letterboxed canvas."""
        offset, scale = self._offset_scale(boxes)
        return boxes * scale + offset

    def to_original(self, boxes: Tensor, clip: bool = True) -> Tensor:
        """xyxy boxes in the letterboxed canvas -> xyxy boxes in the original image's pixels, clipped to it."""
        offset, scale = self._offset_scale(boxes)
        out = (boxes - offset) / scale
        return clip_boxes_to_image(out, (self.height, self.width)) if clip else out


def letterbox_geometry(height: int, width: int, size: Size, *, stride: int = 32,
                       auto: bool = False) -> LetterboxGeometry:
    """Darknet's ``letterbox_image`` geometry: the side that fills first takes the target size, the
    other is floored (``im.h * w / im.w`` in integers), the image is centred (padding floored on the
    top/left). ``size`` is an int or (height, width); ``auto=True`` shrinks the canvas to the next
    multiple of ``stride`` around the scaled image."""
    new_h, new_w = letterbox_fit(height, width, *size_hw(size))
    th, tw = _canvas_hw(new_h, new_w, size, stride, auto)
    return LetterboxGeometry.centred(height, width, new_h, new_w, th, tw)


def _canvas_hw(new_h: int, new_w: int, size: Size, stride: int, auto: bool) -> tuple[int, int]:
    """The letterboxed canvas: ``size``, or with ``auto`` the next multiples of ``stride`` around the image."""
    return (math.ceil(new_h / stride) * stride, math.ceil(new_w / stride) * stride) if auto else size_hw(size)


def _resize(image: Tensor, hw: tuple[int, int]) -> Tensor:
    """Bilinear, no antialiasing (``F.interpolate``, as Darknet and the deploy runtime resize); uint8 stays
    uint8, computed in float and rounded so that every device gives the same bytes."""
    if tuple(image.shape[-2:]) == hw:
        return image
    batch = image if image.dim() == 4 else image[None]
    out = F.interpolate(batch.float(), size=hw, mode="bilinear", align_corners=False)
    if image.dtype == torch.uint8:
        out = out.round_().clamp_(0, 255).to(torch.uint8)
    else:
        out = out.to(image.dtype)
    return out if image.dim() == 4 else out[0]


def letterbox(image: Tensor, size: Size, *, fill: float = LETTERBOX_FILL, stride: int = 32,
              auto: bool = False) -> tuple[Tensor, LetterboxGeometry]:
    """The one letterbox of the package (training, evaluation, ``model(images)``): resize ``image``
    ((3, H, W) or a batch (N, 3, H, W) of one size, uint8 or float) keeping its aspect ratio with
    Darknet's geometry (:func:`letterbox_geometry`), bilinear without antialiasing, and pad it,
    centred, with grey ``fill`` (a fraction of white). Returns the canvas and where the image went
    (map boxes with :meth:`LetterboxGeometry.to_letterbox` / :meth:`~LetterboxGeometry.to_original`).
    """
    if image.dim() not in (3, 4) or image.shape[-3] != 3:
        raise ValueError(f"expected an image (3, H, W) or a batch (N, 3, H, W), found shape {tuple(image.shape)}")
    box = letterbox_geometry(int(image.shape[-2]), int(image.shape[-1]), size, stride=stride, auto=auto)
    th, tw = _canvas_hw(box.new_h, box.new_w, size, stride, auto)
    canvas = image.new_full((*image.shape[:-2], th, tw), fill_value(image, fill))
    canvas[..., box.top:box.top + box.new_h, box.left:box.left + box.new_w] = _resize(image, (box.new_h, box.new_w))
    return canvas, box


def letterbox_images(images: Sequence[Tensor], size: int,
                     fill: float = LETTERBOX_FILL) -> tuple[Tensor, list[LetterboxGeometry]]:
    """Letterbox each (3, H, W) image of any size (:func:`letterbox`) into one (N, 3, size, size) batch."""
    pairs = [letterbox(image, size, fill=fill) for image in images]
    return torch.stack([canvas for canvas, _ in pairs]), [box for _, box in pairs]


class Letterbox:
    """``(image, target) -> (image, target)`` letterboxed to ``size`` (a dataset ``transform``); drops no box."""

    def __init__(self, size: Size, fill: float = LETTERBOX_FILL, auto: bool = False) -> None:
        self.size, self.fill, self.auto = size, fill, auto

    def __call__(self, image: Tensor, target: dict) -> tuple[Tensor, dict]:
        out, box = letterbox(image, self.size, fill=self.fill, auto=self.auto)
        return out, {**target, "boxes": box.to_letterbox(target["boxes"].float())}

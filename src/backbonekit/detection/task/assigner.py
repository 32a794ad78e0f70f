"""YOLOv3's target assignment: which prediction answers for which ground-truth box.

Paper (Redmon & Farhadi, arXiv 1804.02767, section 2.1) and Darknet's ``yolo_layer.c``
(``forward_yolo_layer``): every ground-truth box goes to the one anchor, of all nine, whose shape
overlaps it best (IoU of the two boxes placed on a common corner, positions ignored), on the level
that anchor's mask puts it on, in the cell of that level holding the box centre. That prediction
regresses ``tx, ty`` (the centre's offset inside the cell, in [0, 1)), ``tw, th``
(``log(w / anchor_w)``, ``log(h / anchor_h)``) and learns objectness 1 and the box's class. With
``iou_thresh`` < 1 (AlexeyAB's Darknet) every other anchor whose shape IoU with the box is above it
gets the box too, in the same way.

Two boxes claiming the same slot (image, level, anchor, cell): as in Darknet, whose truth loop
writes the slot's deltas box after box, the later box (in the order of the image's target list)
gives the box and objectness targets, and the class targets are the union of both boxes' classes
(Darknet's ``delta_yolo_class`` keeps an earlier class it finds set and adds the new one).

Everything is tensor work over all boxes of the batch at once (a box list flattened with a batch
index); the only Python loop is over the output levels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import Tensor


@dataclass(frozen=True)
class FlatTargets:
    """All ground-truth boxes of a batch in one tensor each, ordered image by image."""

    boxes: Tensor  # (G, 4) xyxy in input pixels
    labels: Tensor  # (G,) int64
    batch: Tensor  # (G,) int64 image index
    num_images: int


@dataclass(frozen=True)
class LevelTargets:
    """The positive slots of one output level, one row per slot (collisions already resolved)."""

    batch: Tensor  # (P,) image index
    anchor: Tensor  # (P,) anchor index within the level (position in its mask)
    row: Tensor  # (P,) cell row
    col: Tensor  # (P,) cell column
    txy: Tensor  # (P, 2) centre offset inside the cell, in [0, 1)
    twh: Tensor  # (P, 2) log(size / anchor size)
    scale: Tensor  # (P,) Darknet's box-loss scale, 2 - w * h with w, h relative to the input size
    classes: Tensor  # (P, C) class targets, 1 for every class that a box in the slot has
    gt_index: Tensor  # (P,) index into FlatTargets of the box that won the slot


def flatten_targets(targets: Sequence[Mapping[str, Tensor]], num_classes: int,
                    device: torch.device, dtype: torch.dtype = torch.float32) -> FlatTargets:
    """Concatenate per-image ``{"boxes": (M, 4) xyxy, "labels": (M,)}`` dicts into one batch.

    Boxes with a non-positive width or height (augmentation can crop a box to nothing) are
    dropped: they have no shape to match and no log-size to regress. A malformed target (wrong
    shape, non-finite coordinates, a label outside ``[0, num_classes)``) is one ``ValueError`` line.
    """
    boxes, labels = [], []
    for i, t in enumerate(targets):
        if "boxes" not in t or "labels" not in t:
            raise ValueError(f"target {i}: expected a dict with 'boxes' and 'labels', found keys {sorted(t)}")
        b, lab = torch.as_tensor(t["boxes"]), torch.as_tensor(t["labels"])
        if b.dim() != 2 or b.shape[1] != 4 or lab.shape != (b.shape[0],):
            raise ValueError(f"target {i}: expected boxes (M, 4) and labels (M,), "
                             f"found {tuple(b.shape)} and {tuple(lab.shape)}")
        boxes.append(b.to(device, dtype))
        labels.append(lab.to(device, torch.int64))
    box = torch.cat(boxes) if boxes else torch.zeros(0, 4, device=device, dtype=dtype)
    label = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64, device=device)
    counts = torch.tensor([len(b) for b in boxes], device=device, dtype=torch.int64)
    batch = torch.repeat_interleave(torch.arange(len(boxes), device=device), counts)
    if not bool(torch.isfinite(box).all()):
        raise ValueError("target boxes must be finite, found NaN or inf")
    bad = (label < 0) | (label >= num_classes)
    if bool(bad.any()):
        raise ValueError(f"target labels must be in [0, {num_classes}), found {label[bad].unique().tolist()}")
    keep = (box[:, 2] > box[:, 0]) & (box[:, 3] > box[:, 1])
    return FlatTargets(box[keep], label[keep], batch[keep], len(boxes))


def shape_iou(wh: Tensor, anchors: Tensor) -> Tensor:
    """IoU of (G, 2) box sizes with (K, 2) anchor sizes, both placed on the same corner: (G, K)."""
    inter = torch.minimum(wh[:, None, 0], anchors[None, :, 0]) * torch.minimum(wh[:, None, 1], anchors[None, :, 1])
    area = wh[:, 0:1] * wh[:, 1:2]
    return inter / (area + (anchors[:, 0] * anchors[:, 1])[None] - inter)


def assign_targets(flat: FlatTargets, anchors: Tensor, masks: Sequence[Sequence[int]],
                   strides: Sequence[int], grid_sizes: Sequence[tuple[int, int]],
                   input_size: tuple[int, int], num_classes: int, iou_thresh: float = 1.0) -> list[LevelTargets]:
    """Assign every box to its best anchor's slot; one :class:`LevelTargets` per output level.

    ``anchors`` is the full (K, 2) table in input pixels; ``masks[l]`` lists level ``l``'s anchors;
    ``grid_sizes[l]`` is its (H, W); ``input_size`` is (height, width) in pixels. Ties between
    anchors go to the first (Darknet's strict ``iou > best_iou``); a box whose best anchor is in
    no mask is not assigned (as in Darknet). ``iou_thresh`` < 1 (AlexeyAB's Darknet ``[yolo]
    iou_thresh``, 0.213 in ``yolov4.cfg``) also assigns the box to every other anchor whose shape IoU
    with it is above the threshold, in the same cell of that anchor's level.
    """
    anchors = anchors.to(flat.boxes.device, flat.boxes.dtype)
    xy = (flat.boxes[:, :2] + flat.boxes[:, 2:]) / 2
    wh = flat.boxes[:, 2:] - flat.boxes[:, :2]
    ious = shape_iou(wh, anchors) if len(wh) else wh.new_zeros(0, len(anchors))
    best = ious.argmax(1) if len(wh) else torch.zeros(0, dtype=torch.int64, device=wh.device)
    chosen = (ious > iou_thresh)
    chosen[torch.arange(len(best), device=best.device), best] = True
    scale = 2 - wh[:, 0] * wh[:, 1] / (input_size[0] * input_size[1])
    return [_level_targets(flat, xy, wh, chosen, scale, anchors, mask, stride, hw, num_classes)
            for mask, stride, hw in zip(masks, strides, grid_sizes)]


def _level_targets(flat: FlatTargets, xy: Tensor, wh: Tensor, chosen: Tensor, scale: Tensor,
                   anchors: Tensor, mask: Sequence[int], stride: int, hw: tuple[int, int],
                   num_classes: int) -> LevelTargets:
    h, w = hw
    mask_t = torch.as_tensor(list(mask), device=chosen.device, dtype=torch.int64)
    gt, anchor = chosen[:, mask_t].nonzero().unbind(1)  # one row per (box, anchor of this level) chosen
    grid = xy[gt] / stride
    col = grid[:, 0].floor().long().clamp_(0, w - 1)
    row = grid[:, 1].floor().long().clamp_(0, h - 1)
    batch = flat.batch[gt]
    slot = ((batch * len(mask) + anchor) * h + row) * w + col
    # the later box wins a shared slot: keep, per slot, the box with the largest index
    winner = torch.full((flat.num_images * len(mask) * h * w,), -1, dtype=torch.int64, device=chosen.device)
    winner.scatter_reduce_(0, slot, gt, reduce="amax")
    keep = winner[slot] == gt
    # class targets: every box in a slot adds its class to the winner's row
    kept = int(keep.sum())
    row_of_slot = torch.full_like(winner, -1)
    row_of_slot[slot[keep]] = torch.arange(kept, device=chosen.device)
    classes = torch.zeros(kept, num_classes, device=xy.device, dtype=xy.dtype)
    classes[row_of_slot[slot], flat.labels[gt]] = 1
    g = gt[keep]
    cell = torch.stack((col[keep], row[keep]), 1).to(xy.dtype)
    return LevelTargets(
        batch=batch[keep], anchor=anchor[keep], row=row[keep], col=col[keep],
        txy=grid[keep] - cell, twh=torch.log(wh[g] / anchors[mask_t[anchor[keep]]]),
        scale=scale[g], classes=classes, gt_index=g,
    )


def padded_boxes(flat: FlatTargets) -> tuple[Tensor, Tensor]:
    """The boxes as an (N, M, 4) tensor padded per image, with an (N, M) validity mask."""
    n, device = flat.num_images, flat.boxes.device
    counts = torch.bincount(flat.batch, minlength=n)
    m = int(counts.max()) if n and len(flat.batch) else 0
    start = torch.cumsum(counts, 0) - counts
    pos = torch.arange(len(flat.batch), device=device) - start[flat.batch]
    boxes = torch.zeros(n, m, 4, device=device, dtype=flat.boxes.dtype)
    valid = torch.zeros(n, m, dtype=torch.bool, device=device)
    boxes[flat.batch, pos] = flat.boxes
    valid[flat.batch, pos] = True
    return boxes, valid


def batched_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of (N, P, 4) with (N, M, 4) xyxy boxes, image by image: (N, P, M).

    ``torchvision.ops.box_iou`` on each image's pair, computed for all images at once.
    """
    lt = torch.maximum(a[:, :, None, :2], b[:, None, :, :2])
    rb = torch.minimum(a[:, :, None, 2:], b[:, None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).prod(-1)
    union = area_a[:, :, None] + area_b[:, None, :] - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)

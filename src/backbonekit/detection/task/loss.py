"""YOLOv3's loss, with the same gradients as Darknet's ``yolo_layer.c`` (``iou_loss=mse``, the
``cfg/yolov3.cfg`` setting).

Darknet writes no loss function: ``forward_yolo_layer`` writes, per output, a delta that it sends
back as the negative gradient of the raw output. Each delta is the gradient of a familiar loss,
which is what this module computes, so autograd reproduces Darknet's update exactly:

- ``xy``: delta ``s * (t - sigmoid(tx))``, ``t`` the centre's offset in its cell; loss
  ``s * BCE_with_logits(tx, t)``.
- ``wh``: delta ``s * (log(w / anchor_w) - tw)``; loss ``s * (tw - log(w / anchor_w))**2 / 2``.
- ``obj``: delta ``1 - sigmoid(to)`` on an assigned slot; loss ``BCE_with_logits(to, 1)``.
- ``noobj``: delta ``0 - sigmoid(to)`` elsewhere, 0 in the ignore region; loss ``BCE_with_logits(to, 0)``.
- ``cls``: delta ``target_c - sigmoid(tc)`` for every class ``c`` on an assigned slot; loss
  ``BCE_with_logits(tc, target_c)``, each class on its own (no softmax).

with ``s = 2 - w * h`` (box size relative to the input), which weighs small boxes up to twice as
much as the largest. mmdetection's ``YOLOV3Head`` uses the same BCE on the xy offsets and a squared
error on log sizes, with a fixed weight 2 on both (and an ``MSELoss`` without the 1/2) instead of
Darknet's size-dependent scale. We take Darknet's: its gradients are the ones the published
weights were trained with, so Darknet's recipe (learning rate, ``darknet53.conv.74`` then YOLOv3)
carries over unchanged, and its scale gives small boxes, whose few pixels of error cost the most
IoU, more weight than large ones, which a fixed weight does not. BCE on the offsets (rather than a
squared error on ``sigmoid(tx)``) keeps the gradient from vanishing where the sigmoid saturates;
its value at the optimum is the target's entropy, not 0 (only its gradient is 0 there).

The ignore region (paper section 2.1; cfg ``ignore_thresh = .7``): a prediction that is not
assigned a box, but whose decoded box overlaps some ground-truth box of its image with IoU above
``ignore_thresh``, gets no objectness loss at all; the decoded boxes are detached (Darknet sends no
gradient through this test either).

Normalisation: every part is summed over slots, boxes and classes, then divided by the number of
images. That is Darknet's (it sums the deltas of a batch and scales the learning rate by
``1/batch``), and it keeps the loss, and so the learning rate, independent of the batch size,
while the balance between objectness on empty cells and the box terms stays the paper's; dividing
by the number of boxes instead would make an image's background weigh more the fewer objects it has.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .anchors import COCO_ANCHORS, YOLOV3_MASKS, YOLOV3_STRIDES, anchor_tensor
from .assigner import (
    LevelTargets,
    assign_targets,
    batched_box_iou,
    flatten_targets,
    padded_boxes,
)
from .coder import decode_level, split_level

PARTS = ("xy", "wh", "obj", "noobj", "cls")


class YOLOv3Loss(nn.Module):
    """YOLOv3's training loss: ``loss_fn(levels, targets) -> {"loss_xy", ..., "loss"}``.

    Args:
        anchors: all anchors as (width, height) in input pixels (Darknet's nine COCO ones by default).
        masks: the anchors of each output level, in output order.
        strides: each level's stride, in output order.
        num_classes: number of classes C.
        ignore_thresh: IoU above which an unassigned prediction gets no objectness loss.
        iou_thresh: shape IoU above which a box is also assigned to anchors other than its best one
            (AlexeyAB's Darknet ``iou_thresh``, 0.213 in ``yolov4.cfg``); 1 (``yolov3.cfg``) turns it off.
        weights: a multiplier per part (``xy``, ``wh``, ``obj``, ``noobj``, ``cls``), 1 by default;
            Darknet's ``iou_normalizer`` and ``cls_normalizer`` (the objectness multiplier) map to
            ``xy``/``wh`` and ``obj``/``noobj``.

    ``levels`` are the head's raw outputs, one (N, A*(5+C), H, W) tensor per level in ``strides``'
    order; ``targets`` one dict per image with ``boxes`` (M, 4) xyxy in input pixels and ``labels``
    (M,) in ``[0, C)``, M possibly 0. The input size is taken as each level's grid times its stride.
    """

    def __init__(self, anchors: Sequence[Sequence[float]] = COCO_ANCHORS,
                 masks: Sequence[Sequence[int]] = YOLOV3_MASKS, strides: Sequence[int] = YOLOV3_STRIDES,
                 num_classes: int = 80, *, ignore_thresh: float = 0.7,
                 iou_thresh: float = 1.0, weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        table = anchor_tensor(anchors)
        if len(masks) != len(strides):
            raise ValueError(f"expected one mask per stride, found {len(masks)} masks and {len(strides)} strides")
        flat_mask = [i for m in masks for i in m]
        if not all(0 <= i < len(table) for i in flat_mask) or any(len(m) == 0 for m in masks):
            raise ValueError(f"masks must be non-empty lists of anchor indices in [0, {len(table)}), found {masks}")
        unknown = set(weights or {}) - set(PARTS)
        if unknown:
            raise ValueError(f"loss weights must be among {PARTS}, found {sorted(unknown)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, found {num_classes}")
        self.register_buffer("anchors", table, persistent=False)
        self.masks = tuple(tuple(int(i) for i in m) for m in masks)
        self.strides = tuple(int(s) for s in strides)
        self.num_classes = num_classes
        self.ignore_thresh = float(ignore_thresh)
        self.iou_thresh = float(iou_thresh)
        self.weights = {p: float((weights or {}).get(p, 1.0)) for p in PARTS}

    def forward(self, levels: Sequence[Tensor], targets: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
        """The loss parts (``loss_xy``, ``loss_wh``, ``loss_obj``, ``loss_noobj``, ``loss_cls``),
        each already weighted and divided by the number of images, and their sum ``loss``."""
        input_size = self._check(levels, targets)
        # half-precision outputs (autocast) are scored in float32: log-size targets and IoUs need it
        levels = [r.float() if r.dtype in (torch.float16, torch.bfloat16) else r for r in levels]
        ref = levels[0]
        flat = flatten_targets(targets, self.num_classes, ref.device, ref.dtype)
        grids = [(int(r.shape[2]), int(r.shape[3])) for r in levels]
        assigned = assign_targets(flat, self.anchors, self.masks, self.strides, grids, input_size,
                                  self.num_classes, self.iou_thresh)
        gt_boxes, gt_valid = padded_boxes(flat)
        sums = {p: ref.new_zeros(()) for p in PARTS}
        for raw, mask, stride, tgt in zip(levels, self.masks, self.strides, assigned):
            for p, v in self._level_loss(raw, self.anchors[list(mask)], stride, tgt, gt_boxes, gt_valid).items():
                sums[p] = sums[p] + v
        out = {f"loss_{p}": sums[p] * self.weights[p] / len(targets) for p in PARTS}
        out["loss"] = sum(out.values())
        return out

    def _check(self, levels: Sequence[Tensor], targets: Sequence[Mapping[str, Tensor]]) -> tuple[int, int]:
        if len(levels) != len(self.masks):
            raise ValueError(f"expected {len(self.masks)} output levels, found {len(levels)}")
        sizes = set()
        for raw, mask, stride in zip(levels, self.masks, self.strides):
            want = len(mask) * (5 + self.num_classes)
            if raw.dim() != 4 or raw.shape[1] != want:
                raise ValueError(f"expected each level as (N, {want}, H, W), found {tuple(raw.shape)}")
            sizes.add((int(raw.shape[2]) * stride, int(raw.shape[3]) * stride))
        if len(sizes) != 1:
            raise ValueError(f"levels' grid x stride must give one input size, found {sorted(sizes)}")
        if len(targets) != levels[0].shape[0]:
            raise ValueError(f"expected one target per image ({levels[0].shape[0]}), found {len(targets)}")
        return sizes.pop()

    def _level_loss(self, raw: Tensor, anchors: Tensor, stride: int, tgt: LevelTargets,
                    gt_boxes: Tensor, gt_valid: Tensor) -> dict[str, Tensor]:
        a = anchors.shape[0]
        p = split_level(raw, a)  # (N, A, H, W, 5+C)
        obj = p[..., 4]
        negative = ~self._ignored(raw, anchors, stride, gt_boxes, gt_valid).view_as(obj)
        negative[tgt.batch, tgt.anchor, tgt.row, tgt.col] = False
        pos = p[tgt.batch, tgt.anchor, tgt.row, tgt.col]  # (P, 5+C)
        scale = tgt.scale[:, None]
        return {
            "xy": (scale * F.binary_cross_entropy_with_logits(pos[:, :2], tgt.txy, reduction="none")).sum(),
            "wh": (scale * (pos[:, 2:4] - tgt.twh).square()).sum() / 2,
            "obj": F.binary_cross_entropy_with_logits(pos[:, 4], torch.ones_like(pos[:, 4]), reduction="sum"),
            "noobj": F.softplus(obj[negative]).sum(),  # BCE with logits against 0
            "cls": F.binary_cross_entropy_with_logits(pos[:, 5:], tgt.classes, reduction="sum"),
        }

    def _ignored(self, raw: Tensor, anchors: Tensor, stride: int, gt_boxes: Tensor, gt_valid: Tensor) -> Tensor:
        """(N, A*H*W) mask of predictions whose decoded box overlaps a box of their image > ignore_thresh."""
        n, _, h, w = raw.shape
        a = anchors.shape[0]
        if gt_boxes.shape[1] == 0:
            return torch.zeros(n, a * h * w, dtype=torch.bool, device=raw.device)
        # decode only the box and objectness channels: the classes play no part here
        box_raw = raw.detach().view(n, a, -1, h, w)[:, :, :5].reshape(n, a * 5, h, w)
        cxcywh = decode_level(box_raw, anchors, stride)[..., :4]
        xyxy = torch.cat((cxcywh[..., :2] - cxcywh[..., 2:] / 2, cxcywh[..., :2] + cxcywh[..., 2:] / 2), -1)
        iou = batched_box_iou(xyxy, gt_boxes).masked_fill_(~gt_valid[:, None, :], 0)
        return iou.amax(2) > self.ignore_thresh


"""YOLOv3's target assignment and loss, on hand-built cases and against a loop-by-loop transcription
of Darknet's ``forward_yolo_layer`` (pjreddie/darknet ``src/yolo_layer.c``, ``iou_loss=mse``; with
``iou_thresh``, the extra-anchor loop of AlexeyAB/darknet's version of that function).

Raw outputs follow the head's contract: one (N, A*(5+C), H, W) tensor per level, strides 32, 16, 8,
channel ``a * (5 + C) + k`` = item ``k`` (tx, ty, tw, th, to, classes) of anchor ``a``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from backbonekit.detection.task.anchors import COCO_ANCHORS, YOLOV3_MASKS, YOLOV3_STRIDES, anchor_tensor
from backbonekit.detection.task.assigner import (
    assign_targets,
    batched_box_iou,
    flatten_targets,
    padded_boxes,
)
from backbonekit.detection.task.coder import decode_level
from backbonekit.detection.task.loss import YOLOv3Loss

LOG2 = math.log(2.0)


def zeros_levels(n: int, size: int, c: int) -> list[torch.Tensor]:
    return [torch.zeros(n, 3 * (5 + c), size // s, size // s, dtype=torch.float64) for s in YOLOV3_STRIDES]


def randn_levels(n: int, size: int, c: int, scale: float = 1.0) -> list[torch.Tensor]:
    return [scale * torch.randn(n, 3 * (5 + c), size // s, size // s, dtype=torch.float64) for s in YOLOV3_STRIDES]


def target(boxes: list[list[float]], labels: list[int]) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64)}


def box_cxcywh(cx: float, cy: float, w: float, h: float) -> list[float]:
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def channel(c: int, anchor: int, item: int) -> int:
    return anchor * (5 + c) + item


def loss_and_grads(loss_fn: YOLOv3Loss, levels: list[torch.Tensor], targets: list) -> tuple[dict, list]:
    levels = [r.clone().requires_grad_(True) for r in levels]
    out = loss_fn(levels, targets)
    out["loss"].backward()
    return out, [r.grad for r in levels]


# ---------------------------------------------------------------------------------------------
# An independent reference: Darknet's loops, written out one slot and one box at a time.
# ---------------------------------------------------------------------------------------------

def _iou_cxcywh(a: tuple, b: tuple) -> float:
    ix = min(a[0] + a[2] / 2, b[0] + b[2] / 2) - max(a[0] - a[2] / 2, b[0] - b[2] / 2)
    iy = min(a[1] + a[3] / 2, b[1] + b[3] / 2) - max(a[1] - a[3] / 2, b[1] - b[3] / 2)
    inter = max(ix, 0.0) * max(iy, 0.0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _bce(x: float, t: float) -> float:
    return max(x, 0.0) - x * t + math.log1p(math.exp(-abs(x)))


def darknet_reference(levels, targets, c, ignore_thresh, anchors=COCO_ANCHORS, masks=YOLOV3_MASKS,
                      strides=YOLOV3_STRIDES, iou_thresh=1.0):
    """Darknet's deltas (minus the gradient of the summed loss) per level, and the summed loss parts."""
    parts = dict.fromkeys(("xy", "wh", "obj", "noobj", "cls"), 0.0)
    deltas = [torch.zeros_like(r) for r in levels]
    ignored = 0
    for raw, delta, mask, stride in zip(levels, deltas, masks, strides):
        n_img, _, lh, lw = raw.shape
        net_h, net_w = lh * stride, lw * stride
        for b in range(n_img):
            truths = [(((x1 + x2) / 2), ((y1 + y2) / 2), x2 - x1, y2 - y1, int(lab))
                      for (x1, y1, x2, y2), lab in zip(targets[b]["boxes"].tolist(), targets[b]["labels"].tolist())]
            obj_t = {}
            for j in range(lh):
                for i in range(lw):
                    for n, k in enumerate(mask):
                        r = [raw[b, channel(c, n, q), j, i].item() for q in range(4)]
                        pred = ((i + _sig(r[0])) * stride, (j + _sig(r[1])) * stride,
                                math.exp(r[2]) * anchors[k][0], math.exp(r[3]) * anchors[k][1])
                        best = max([_iou_cxcywh(pred, t[:4]) for t in truths], default=0.0)
                        obj_t[(n, j, i)] = None if best > ignore_thresh else 0.0
            box_t, cls_t = {}, {}
            for cx, cy, w, h, lab in truths:
                shape_ious = [_iou_cxcywh((0, 0, w, h), (0, 0, aw, ah)) for aw, ah in anchors]
                best_n = max(range(len(anchors)), key=lambda q: (shape_ious[q], -q))
                # AlexeyAB's iou_thresh: every other anchor shaped like the box too, in the same cell
                for k in [best_n] + [q for q in range(len(anchors)) if q != best_n and shape_ious[q] > iou_thresh]:
                    if k not in mask:
                        continue
                    n = mask.index(k)
                    i, j = int(cx / stride), int(cy / stride)
                    scale = 2 - (w / net_w) * (h / net_h)
                    box_t[(n, j, i)] = (cx / stride - i, cy / stride - j,
                                        math.log(w / anchors[k][0]), math.log(h / anchors[k][1]), scale)
                    obj_t[(n, j, i)] = 1.0
                    cls_t.setdefault((n, j, i), set()).add(lab)  # delta_yolo_class: a set slot keeps its classes
            ignored += sum(v is None for v in obj_t.values())
            for (n, j, i), t in obj_t.items():
                if t is None:
                    continue
                x = raw[b, channel(c, n, 4), j, i].item()
                delta[b, channel(c, n, 4), j, i] = t - _sig(x)
                parts["obj" if t == 1.0 else "noobj"] += _bce(x, t)
            for (n, j, i), (tx, ty, tw, th, s) in box_t.items():
                r = [raw[b, channel(c, n, q), j, i].item() for q in range(4)]
                for q, t in ((0, tx), (1, ty)):
                    delta[b, channel(c, n, q), j, i] = s * (t - _sig(r[q]))
                    parts["xy"] += s * _bce(r[q], t)
                for q, t in ((2, tw), (3, th)):
                    delta[b, channel(c, n, q), j, i] = s * (t - r[q])
                    parts["wh"] += s * (r[q] - t) ** 2 / 2
                for k in range(c):
                    x = raw[b, channel(c, n, 5 + k), j, i].item()
                    t = float(k in cls_t[(n, j, i)])
                    delta[b, channel(c, n, 5 + k), j, i] = t - _sig(x)
                    parts["cls"] += _bce(x, t)
    return deltas, parts, ignored


@pytest.mark.parametrize("ignore_thresh, iou_thresh", [(0.7, 1.0), (0.25, 1.0), (0.7, 0.213)])
def test_matches_darknet_loops(ignore_thresh: float, iou_thresh: float) -> None:
    c, size = 3, 128
    levels = randn_levels(3, size, c)
    targets = [
        target([box_cxcywh(30, 40, 20, 28), box_cxcywh(90, 70, 100, 80), box_cxcywh(64, 64, 40, 110),
                box_cxcywh(10, 120, 8, 6)], [0, 1, 2, 1]),
        target([], []),
        # two boxes with the same best anchor in one cell, different classes: a collision
        target([box_cxcywh(50, 50, 30, 60), box_cxcywh(52, 60, 28, 64)], [2, 0]),
    ]
    loss_fn = YOLOv3Loss(num_classes=c, ignore_thresh=ignore_thresh, iou_thresh=iou_thresh)
    out, grads = loss_and_grads(loss_fn, levels, targets)
    deltas, parts, ignored = darknet_reference(levels, targets, c, ignore_thresh, iou_thresh=iou_thresh)
    positives = sum(int((d[:, 4::c + 5] > 0).sum()) for d in deltas)
    assert positives > 6 if iou_thresh < 1 else positives <= 6  # 6 boxes, a collision: extra anchors exercised
    if ignore_thresh < 0.5:
        assert ignored > 0  # the ignore region is exercised, not just empty
    for g, d in zip(grads, deltas):
        torch.testing.assert_close(-g * len(targets), d)
    for p, v in parts.items():
        assert out[f"loss_{p}"].item() == pytest.approx(v / len(targets), rel=1e-9, abs=1e-12)
    assert out["loss"].item() == pytest.approx(sum(parts.values()) / len(targets), rel=1e-9)


# ---------------------------------------------------------------------------------------------
# Hand-built cases
# ---------------------------------------------------------------------------------------------

def test_one_box_by_hand() -> None:
    # 64x64 input: grids 2, 4, 8. A 32x56 box best matches anchor 3 (30x61, shape IoU 0.865), which
    # is mask (3,4,5) on stride 16, anchor 0; its centre (20, 44) is in column 1, row 2.
    c, size = 2, 64
    targets = [target([box_cxcywh(20, 44, 32, 56)], [1])]
    flat = flatten_targets(targets, c, torch.device("cpu"), torch.float64)
    assigned = assign_targets(flat, anchor_tensor(COCO_ANCHORS), YOLOV3_MASKS, YOLOV3_STRIDES,
                              [(2, 2), (4, 4), (8, 8)], (size, size), c)
    assert [len(t.batch) for t in assigned] == [0, 1, 0]
    t = assigned[1]
    assert (t.batch.item(), t.anchor.item(), t.row.item(), t.col.item()) == (0, 0, 2, 1)
    torch.testing.assert_close(t.txy, torch.tensor([[0.25, 0.75]], dtype=torch.float64))
    torch.testing.assert_close(t.twh, torch.tensor([[math.log(32 / 30), math.log(56 / 61)]], dtype=torch.float64))
    assert t.classes.tolist() == [[0.0, 1.0]]

    # all logits 0: every BCE is log 2; no anchor box at a cell centre overlaps the box above 0.7
    out = YOLOv3Loss(num_classes=c)(zeros_levels(1, size, c), targets)
    s = 2 - 32 * 56 / size**2
    assert out["loss_xy"].item() == pytest.approx(s * 2 * LOG2)
    assert out["loss_wh"].item() == pytest.approx(s * (math.log(32 / 30) ** 2 + math.log(56 / 61) ** 2) / 2)
    assert out["loss_obj"].item() == pytest.approx(LOG2)
    assert out["loss_noobj"].item() == pytest.approx((3 * (4 + 16 + 64) - 1) * LOG2)
    assert out["loss_cls"].item() == pytest.approx(2 * LOG2)


@pytest.mark.parametrize("iou_thresh, expected", [
    (1.0, {(1, 0)}),  # yolov3.cfg: the best anchor only (anchor 3, 30x61: mask 3,4,5 on stride 16)
    # shape IoUs of a 32x56 box with the COCO anchors 0-5 (masks 0,1,2 on stride 8; 3,4,5 on 16):
    # 0.073, 0.268, 0.406, 0.865, 0.458, 0.255; anchors 6-8 (stride 32) 0.172, 0.058, 0.015
    (0.3, {(1, 0), (1, 1), (2, 2)}),
    (0.25, {(1, 0), (1, 1), (1, 2), (2, 1), (2, 2)}),
])
def test_iou_thresh_adds_every_anchor_shaped_like_the_box(iou_thresh: float, expected: set) -> None:
    c, size = 2, 64
    targets = [target([box_cxcywh(20, 44, 32, 56)], [1])]
    flat = flatten_targets(targets, c, torch.device("cpu"), torch.float64)
    assigned = assign_targets(flat, anchor_tensor(COCO_ANCHORS), YOLOV3_MASKS, YOLOV3_STRIDES,
                              [(2, 2), (4, 4), (8, 8)], (size, size), c, iou_thresh=iou_thresh)
    found = {(level, a) for level, t in enumerate(assigned) for a in t.anchor.tolist()}
    assert found == expected
    for level, t in enumerate(assigned):  # each in the cell of its level that holds the centre (20, 44)
        stride = YOLOV3_STRIDES[level]
        assert t.col.tolist() == [20 // stride] * len(t.col) and t.row.tolist() == [44 // stride] * len(t.row)
        anchors = torch.tensor([COCO_ANCHORS[YOLOV3_MASKS[level][a]] for a in t.anchor.tolist()],
                               dtype=torch.float64).reshape(-1, 2)
        torch.testing.assert_close(t.twh, torch.log(torch.tensor([32.0, 56.0], dtype=torch.float64) / anchors))
        assert t.classes.tolist() == [[0.0, 1.0]] * len(t.col)


def test_no_box_is_only_objectness_negatives() -> None:
    c = 4
    levels = randn_levels(2, 96, c)
    out, grads = loss_and_grads(YOLOv3Loss(num_classes=c), levels, [target([], []), target([], [])])
    obj = torch.cat([r[:, [channel(c, a, 4) for a in range(3)]].flatten() for r in levels])
    expected = F.binary_cross_entropy_with_logits(obj, torch.zeros_like(obj), reduction="sum") / 2
    assert out["loss_noobj"].item() == pytest.approx(expected.item(), rel=1e-12)
    for p in ("xy", "wh", "obj", "cls"):
        assert out[f"loss_{p}"].item() == 0.0
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-12)
    for g in grads:  # only the objectness channels get a gradient
        other = [k for k in range(g.shape[1]) if k % (5 + c) != 4]
        assert not g[:, other].any() and g[:, [channel(c, a, 4) for a in range(3)]].abs().min() > 0


def test_two_boxes_in_one_cell_the_later_wins_and_classes_add() -> None:
    # both best match anchor 3 (stride 16, anchor 0) and have their centres in cell (row 2, col 1)
    c, size = 3, 64
    first, second = box_cxcywh(20, 44, 32, 56), box_cxcywh(28, 36, 28, 64)
    loss_fn = YOLOv3Loss(num_classes=c, ignore_thresh=1.0)
    for boxes, labels in (([first, second], [0, 2]), ([second, first], [2, 0])):
        flat = flatten_targets([target(boxes, labels)], c, torch.device("cpu"), torch.float64)
        t = assign_targets(flat, anchor_tensor(COCO_ANCHORS), YOLOV3_MASKS, YOLOV3_STRIDES,
                           [(2, 2), (4, 4), (8, 8)], (size, size), c)[1]
        assert len(t.batch) == 1 and t.gt_index.tolist() == [1]
        cx, cy = (boxes[1][0] + boxes[1][2]) / 2, (boxes[1][1] + boxes[1][3]) / 2
        torch.testing.assert_close(t.txy, torch.tensor([[cx / 16 - 1, cy / 16 - 2]], dtype=torch.float64))
        assert t.classes.tolist() == [[1.0, 0.0, 1.0]]
        out = loss_fn(zeros_levels(1, size, c), [target(boxes, labels)])
        w, h = boxes[1][2] - boxes[1][0], boxes[1][3] - boxes[1][1]
        assert out["loss_obj"].item() == pytest.approx(LOG2)  # one positive, not two
        assert out["loss_xy"].item() == pytest.approx((2 - w * h / size**2) * 2 * LOG2)
        assert out["loss_noobj"].item() == pytest.approx((3 * 84 - 1) * LOG2)


def test_two_boxes_in_one_cell_with_different_anchors_are_both_positive() -> None:
    c, size = 1, 64
    boxes = [box_cxcywh(20, 44, 32, 56), box_cxcywh(20, 44, 60, 46)]  # anchors 3 and 4: same level and cell
    out = YOLOv3Loss(num_classes=c, ignore_thresh=1.0)(zeros_levels(1, size, c), [target(boxes, [0, 0])])
    assert out["loss_obj"].item() == pytest.approx(2 * LOG2)
    assert out["loss_noobj"].item() == pytest.approx((3 * 84 - 2) * LOG2)


def test_box_exactly_at_an_anchor_shape_has_zero_log_size_target() -> None:
    c, size = 2, 256
    targets = [target([box_cxcywh(100, 150, 116, 90)], [0])]  # anchor 6: stride 32, anchor 0
    flat = flatten_targets(targets, c, torch.device("cpu"), torch.float64)
    assigned = assign_targets(flat, anchor_tensor(COCO_ANCHORS), YOLOV3_MASKS, YOLOV3_STRIDES,
                              [(8, 8), (16, 16), (32, 32)], (size, size), c)
    t = assigned[0]
    assert (t.anchor.item(), t.row.item(), t.col.item()) == (0, 4, 3)
    assert torch.equal(t.twh, torch.zeros(1, 2, dtype=torch.float64))  # log(116/116) is exactly 0
    out, grads = loss_and_grads(YOLOv3Loss(num_classes=c), zeros_levels(1, size, c), targets)
    assert out["loss_wh"].item() == 0.0
    assert not grads[0][0, [channel(c, 0, 2), channel(c, 0, 3)], 4, 3].any()
    assert grads[0][0, [channel(c, 0, 0), channel(c, 0, 1)], 4, 3].abs().min() > 0


@pytest.mark.parametrize("iou, ignored", [(0.8, True), (0.6, False)])
def test_ignore_region(iou: float, ignored: bool) -> None:
    # The box (centre 28, 28, size 32x56) is assigned on stride 16. On stride 8, the prediction of
    # anchor 0 (10x13) in cell (3, 3) is set to decode to the box shrunk by k about its centre, so
    # its IoU with the box is k**2; its objectness logit is 2.
    c, size, logit = 1, 64, 2.0
    k = math.sqrt(iou)
    levels = zeros_levels(1, size, c)
    levels[2][0, channel(c, 0, 2), 3, 3] = math.log(k * 32 / 10)
    levels[2][0, channel(c, 0, 3), 3, 3] = math.log(k * 56 / 13)
    levels[2][0, channel(c, 0, 4), 3, 3] = logit
    decoded = decode_level(levels[2], anchor_tensor(COCO_ANCHORS)[[0, 1, 2]], 8)[0, 3 * 8 + 3, :4]
    assert decoded.tolist() == pytest.approx([28, 28, k * 32, k * 56])
    targets = [target([box_cxcywh(28, 28, 32, 56)], [0])]
    out, grads = loss_and_grads(YOLOv3Loss(num_classes=c), levels, targets)
    g = grads[2][0, channel(c, 0, 4), 3, 3].item()
    assert g == (0.0 if ignored else pytest.approx(_sig(logit)))
    levels[2][0, channel(c, 0, 4), 3, 3] = 0.0
    base = YOLOv3Loss(num_classes=c)(levels, targets)["loss_noobj"].item()
    assert out["loss_noobj"].item() - base == pytest.approx(0.0 if ignored else _bce(logit, 0) - LOG2)


def test_gradients_reach_only_the_assigned_slot_box_and_class_channels() -> None:
    c, size = 3, 64
    levels = randn_levels(2, size, c)
    targets = [target([box_cxcywh(20, 44, 32, 56)], [2]), target([], [])]
    _, grads = loss_and_grads(YOLOv3Loss(num_classes=c, ignore_thresh=1.0), levels, targets)
    non_obj = [k for k in range(3 * (5 + c)) if k % (5 + c) != 4]
    obj = [channel(c, a, 4) for a in range(3)]
    for lvl, g in enumerate(grads):
        nonzero = g[:, non_obj].abs().sum(1).nonzero().tolist()
        assert nonzero == ([[0, 2, 1]] if lvl == 1 else [])
        sig = levels[lvl][:, obj].sigmoid()
        expected = sig.clone()
        if lvl == 1:
            expected[0, 0, 2, 1] -= 1  # the positive: BCE against 1
        torch.testing.assert_close(g[:, obj] * 2, expected)
    slot = grads[1][0, :, 2, 1]
    assert slot[: 5 + c].abs().min() > 0 and not slot[5 + c:][torch.arange(2 * (5 + c)) % (5 + c) != 4].any()


def test_batch_loss_is_the_mean_of_the_images_losses() -> None:
    c, size = 2, 64
    levels = randn_levels(2, size, c)
    targets = [target([box_cxcywh(20, 44, 32, 56)], [1]), target([box_cxcywh(40, 20, 10, 14)], [0])]
    loss_fn = YOLOv3Loss(num_classes=c)
    both = loss_fn(levels, targets)
    each = [loss_fn([r[i: i + 1] for r in levels], [targets[i]]) for i in range(2)]
    for key in both:
        assert both[key].item() == pytest.approx((each[0][key] + each[1][key]).item() / 2)


def test_a_box_of_zero_width_is_dropped_like_no_box() -> None:
    c = 2
    levels = randn_levels(1, 64, c)
    loss_fn = YOLOv3Loss(num_classes=c)
    degenerate = loss_fn(levels, [target([[10, 10, 10, 30]], [0])])
    empty = loss_fn(levels, [target([], [])])
    assert degenerate["loss"].item() == empty["loss"].item()


def test_loss_falls_and_the_optimised_outputs_decode_onto_the_box() -> None:
    c, size = 3, 64
    gt = box_cxcywh(20, 44, 32, 56)
    targets = [target([gt], [2])]
    levels = [torch.nn.Parameter(0.1 * r) for r in randn_levels(1, size, c)]
    loss_fn = YOLOv3Loss(num_classes=c)
    opt = torch.optim.Adam(levels, lr=0.1)
    losses = []
    for _ in range(60):
        out = loss_fn(levels, targets)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < losses[0] / 10
    anchors = anchor_tensor(COCO_ANCHORS)
    with torch.no_grad():
        dets = torch.cat([decode_level(r, anchors[list(m)], s)
                          for r, m, s in zip(levels, YOLOV3_MASKS, YOLOV3_STRIDES)], 1)[0]
    scores, classes = (dets[:, 4:5] * dets[:, 5:]).max(1)
    top = dets[scores.argmax()]
    xyxy = torch.cat((top[:2] - top[2:4] / 2, top[:2] + top[2:4] / 2))[None]
    assert box_iou(xyxy, torch.tensor([gt], dtype=torch.float64)).item() > 0.9
    assert classes[scores.argmax()].item() == 2 and scores.max() > 0.5


def test_half_precision_outputs_are_scored_in_float32() -> None:
    c = 2
    levels = [r.to(torch.bfloat16) for r in randn_levels(2, 64, c)]
    targets = [target([box_cxcywh(20, 44, 32, 56)], [1]), target([box_cxcywh(40, 20, 10, 14)], [0])]
    half, grads = loss_and_grads(YOLOv3Loss(num_classes=c), levels, targets)
    full = YOLOv3Loss(num_classes=c)([r.double() for r in levels], targets)
    assert half["loss"].dtype == torch.float32 and grads[0].dtype == torch.bfloat16
    for key in full:
        assert half[key].item() == pytest.approx(full[key].item(), rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Pieces and bad input
# ---------------------------------------------------------------------------------------------

def test_batched_box_iou_matches_torchvision_per_image() -> None:
    def rand_boxes(*shape: int) -> torch.Tensor:
        xy = torch.rand(*shape, 2) * 50
        return torch.cat((xy, xy + 1 + torch.rand(*shape, 2) * 30), -1)

    a, b = rand_boxes(3, 7), rand_boxes(3, 5)
    got = batched_box_iou(a, b)
    for i in range(3):
        torch.testing.assert_close(got[i], box_iou(a[i], b[i]))


def test_padded_boxes_puts_each_image_s_boxes_in_its_row() -> None:
    targets = [target([[0, 0, 1, 1], [0, 0, 2, 2]], [0, 0]), target([], []), target([[0, 0, 3, 3]], [0])]
    boxes, valid = padded_boxes(flatten_targets(targets, 1, torch.device("cpu"), torch.float64))
    assert valid.tolist() == [[True, True], [False, False], [True, False]]
    assert boxes[0].tolist() == [[0, 0, 1, 1], [0, 0, 2, 2]] and boxes[2, 0].tolist() == [0, 0, 3, 3]


@pytest.mark.parametrize("levels, targets, match", [
    (zeros_levels(1, 64, 2), [target([[0, 0, 5, 5]], [2])], r"labels must be in \[0, 2\), found \[2\]"),
    (zeros_levels(1, 64, 2), [{"boxes": torch.zeros(1, 5), "labels": torch.zeros(1)}], r"boxes \(M, 4\)"),
    (zeros_levels(1, 64, 2), [{"boxes": torch.zeros(0, 4)}], "'boxes' and 'labels'"),
    (zeros_levels(1, 64, 2)[:2], [target([], [])], "expected 3 output levels, found 2"),
    (zeros_levels(1, 64, 3), [target([], [])], r"expected each level as \(N, 21, H, W\)"),
    (zeros_levels(1, 64, 2), [target([], []), target([], [])], r"one target per image \(1\), found 2"),
    (zeros_levels(1, 64, 2)[:2] + zeros_levels(1, 128, 2)[2:], [target([], [])], "one input size"),
    (zeros_levels(1, 64, 2), [target([[0, 0, float("nan"), 5]], [0])], "finite"),
])
def test_bad_input_is_one_line(levels, targets, match) -> None:
    with pytest.raises(ValueError, match=match) as err:
        YOLOv3Loss(num_classes=2)(levels, targets)
    assert "\n" not in str(err.value)


def test_bad_configuration_is_one_line() -> None:
    with pytest.raises(ValueError, match="among"):
        YOLOv3Loss(weights={"box": 1.0})
    with pytest.raises(ValueError, match="anchor indices in"):
        YOLOv3Loss(masks=((6, 7, 9), (3, 4, 5), (0, 1, 2)))
    with pytest.raises(ValueError, match="one mask per stride"):
        YOLOv3Loss(strides=(32, 16))


def test_weights_scale_their_part() -> None:
    c = 2
    levels, targets = randn_levels(1, 64, c), [target([box_cxcywh(20, 44, 32, 56)], [1])]
    plain = YOLOv3Loss(num_classes=c)(levels, targets)
    weighted = YOLOv3Loss(num_classes=c, weights={"noobj": 0.5, "xy": 3.0})(levels, targets)
    assert weighted["loss_noobj"].item() == pytest.approx(plain["loss_noobj"].item() * 0.5)
    assert weighted["loss_xy"].item() == pytest.approx(plain["loss_xy"].item() * 3.0)
    assert weighted["loss_cls"].item() == pytest.approx(plain["loss_cls"].item())

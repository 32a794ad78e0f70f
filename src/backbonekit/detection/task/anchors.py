"""Anchor boxes (priors): Darknet's COCO set, and how they are spread over the output levels.

YOLOv3 (Redmon & Farhadi, arXiv 1804.02767, section 2.3) predicts at three strides with three
anchors each; ``cfg/yolov3.cfg`` lists nine anchors in input pixels, smallest first, and each
``[yolo]`` layer's ``mask`` picks its three (6,7,8 on stride 32, 3,4,5 on 16, 0,1,2 on 8).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ..data.datasets import training_target
from ...engine.config import check_range

# (width, height) in input pixels at 416x416, from Darknet's cfg/yolov3.cfg
COCO_ANCHORS: tuple[tuple[float, float], ...] = (
    (10, 13), (16, 30), (33, 23),
    (30, 61), (62, 45), (59, 119),
    (116, 90), (156, 198), (373, 326),
)
# which anchors each output level uses, in output order (stride 32, 16, 8), as Darknet's masks
YOLOV3_MASKS: tuple[tuple[int, ...], ...] = ((6, 7, 8), (3, 4, 5), (0, 1, 2))
YOLOV3_STRIDES: tuple[int, ...] = (32, 16, 8)


def anchor_tensor(anchors: Sequence[Sequence[float]]) -> Tensor:
    """Anchors as a float (K, 2) tensor of (width, height); one line naming what is wrong otherwise."""
    table = torch.as_tensor([tuple(a) for a in anchors], dtype=torch.float32)
    if table.dim() != 2 or table.shape[1] != 2 or table.shape[0] == 0:
        raise ValueError(f"anchors must be a non-empty list of (width, height) pairs, found shape {tuple(table.shape)}")
    if not bool((table > 0).all()) or not bool(torch.isfinite(table).all()):
        raise ValueError(f"anchor widths and heights must be finite and > 0, found {table.tolist()}")
    return table


# ---------------------------------------------------------------------------------------------
# Anchors for a dataset: k-means on box shapes with 1 - IoU as the distance (YOLOv2, Redmon &
# Farhadi, arXiv 1612.08242, section 2 "Dimension Clusters"): boxes are compared by shape only,
# as if aligned at a common corner, so large boxes do not dominate as they would with Euclidean
# distance.
#
# Which threshold "best possible recall" uses: Darknet's YOLOv3 assigns every ground truth to the
# single anchor (of nine) whose shape IoU with it is highest, with no threshold (``truth_thresh =
# 1`` in cfg/yolov3.cfg, so no second anchor is ever added). Every box therefore gets an anchor;
# what varies is how well that anchor fits. We report BPR as the fraction of boxes whose best
# anchor has shape IoU >= 0.5, the threshold the paper names for priors (section 2.1: a prior that
# overlaps a ground truth "by more than some threshold" is ignored, "we use the threshold of .5").
# ---------------------------------------------------------------------------------------------

BPR_IOU_THRESHOLD = 0.5


def shape_iou(wh: Tensor, anchors: Tensor) -> Tensor:
    """IoU of boxes and anchors aligned at a common corner: (M, 2) and (K, 2) widths/heights -> (M, K)."""
    inter = torch.minimum(wh[:, None, 0], anchors[None, :, 0]) * torch.minimum(wh[:, None, 1], anchors[None, :, 1])
    union = (wh[:, 0] * wh[:, 1])[:, None] + (anchors[:, 0] * anchors[:, 1])[None, :] - inter
    return inter / union


def _check_wh(wh: Tensor, k: int) -> Tensor:
    check_range("num (anchors)", k, 1)
    wh = torch.as_tensor(wh, dtype=torch.float64)
    if wh.dim() != 2 or wh.shape[1] != 2:
        raise ValueError(f"expected box shapes as an (M, 2) tensor of (width, height), found shape {tuple(wh.shape)}")
    if not bool(torch.isfinite(wh).all()) or not bool((wh > 0).all()):
        raise ValueError("box widths and heights must be finite and > 0, found "
                         f"{int((~torch.isfinite(wh) | (wh <= 0)).any(1).sum())} boxes that are not")
    distinct = torch.unique(wh, dim=0).shape[0]
    if distinct < k:
        raise ValueError(f"k-means with k={k} needs at least {k} distinct box shapes, found {distinct} "
                         f"(in {wh.shape[0]} boxes)")
    return wh


def _kmeans_pp_init(wh: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """k-means++ seeding with 1 - IoU as the distance."""
    centres = [wh[torch.randint(wh.shape[0], (1,), generator=gen)].squeeze(0)]
    dist = 1 - shape_iou(wh, centres[0][None])[:, 0]
    for _ in range(1, k):
        weights = dist.clamp_min(0) ** 2
        centres.append(wh[torch.multinomial(weights, 1, generator=gen)].squeeze(0))
        dist = torch.minimum(dist, 1 - shape_iou(wh, centres[-1][None])[:, 0])
    return torch.stack(centres)


def _lloyd(wh: Tensor, centres: Tensor, iters: int) -> Tensor:
    """Assign each box to its highest-IoU centre, move each centre to its members' mean; until stable."""
    k = centres.shape[0]
    assign = None
    for _ in range(iters):
        iou = shape_iou(wh, centres)
        best_iou, new_assign = iou.max(1)
        if assign is not None and torch.equal(new_assign, assign):
            break
        assign = new_assign
        counts = torch.bincount(assign, minlength=k).to(wh.dtype)
        sums = torch.zeros_like(centres).index_add_(0, assign, wh)
        empty = counts == 0
        centres = torch.where(empty[:, None], centres, sums / counts.clamp_min(1)[:, None])
        if bool(empty.any()):  # an empty cluster restarts at the worst-fitted boxes
            worst = best_iou.argsort()[: int(empty.sum())]
            centres[empty] = wh[worst]
    return centres


def kmeans_anchors(wh: Tensor, k: int = 9, iters: int = 300, seed: int = 0, restarts: int = 3) -> tuple[Tensor, float]:
    """Anchors for box shapes ``wh`` (M, 2) by k-means with 1 - IoU as the distance (YOLOv2's method).

    k-means++ seeding, then Lloyd iterations (mean of each cluster's widths and heights) until the
    assignment stops changing or ``iters`` passes; the best of ``restarts`` runs (by mean IoU) wins.
    Returns the (k, 2) float32 anchors sorted by area, smallest first (the order Darknet's masks
    index), and the mean over boxes of the IoU with their best anchor.
    """
    wh = _check_wh(wh, k)
    gen = torch.Generator().manual_seed(seed)
    best, best_score = None, -1.0
    for _ in range(max(1, restarts)):
        centres = _lloyd(wh, _kmeans_pp_init(wh, k, gen), iters)
        score = float(shape_iou(wh, centres).max(1).values.mean())
        if score > best_score:
            best, best_score = centres, score
    order = (best[:, 0] * best[:, 1]).argsort()
    return best[order].float(), best_score


def best_possible_recall(wh: Tensor, anchors: Tensor, threshold: float = BPR_IOU_THRESHOLD) -> float:
    """Fraction of boxes whose best anchor (by shape IoU, as YOLOv3 assigns) has IoU >= ``threshold``."""
    wh = torch.as_tensor(wh, dtype=torch.float64)
    if wh.numel() == 0:
        raise ValueError("best possible recall needs at least one box, found none")
    iou = shape_iou(wh, anchor_tensor(anchors).to(torch.float64))
    return float((iou.max(1).values >= threshold).to(torch.float64).mean())


def mean_best_iou(wh: Tensor, anchors: Tensor) -> float:
    """Mean over boxes of the shape IoU with their best anchor."""
    iou = shape_iou(torch.as_tensor(wh, dtype=torch.float64), anchor_tensor(anchors).to(torch.float64))
    return float(iou.max(1).values.mean())


@dataclass(frozen=True)
class AnchorFit:
    """What :func:`anchors_for_dataset` found."""

    anchors: Tensor  # (k, 2) width, height in input pixels, smallest area first
    mean_iou: float
    recall: float  # best possible recall at ``threshold``
    threshold: float
    num_boxes: int


def dataset_box_shapes(dataset, input_size: int) -> Tensor:
    """Widths and heights (M, 2) of every box of ``dataset``, scaled as the letterbox to ``input_size`` scales them.

    Uses the dataset's ``targets`` and ``sizes`` (height, width per image) when it has them, so no
    image is decoded; otherwise iterates the dataset.
    """
    if hasattr(dataset, "targets") and hasattr(dataset, "sizes"):
        targets, sizes = dataset.targets, torch.as_tensor(dataset.sizes, dtype=torch.float64)
    else:
        pairs = [dataset[i] for i in range(len(dataset))]
        targets = [t for _, t in pairs]
        sizes = torch.tensor([tuple(img.shape[-2:]) for img, _ in pairs], dtype=torch.float64)
    if len(targets) == 0:
        return torch.zeros(0, 2, dtype=torch.float64)
    targets = [training_target(t) for t in targets]  # crowd regions are not objects to fit anchors to
    counts = torch.tensor([len(t["boxes"]) for t in targets])
    boxes = torch.cat([torch.as_tensor(t["boxes"], dtype=torch.float64).reshape(-1, 4) for t in targets])
    scale = (input_size / sizes.max(1).values).repeat_interleave(counts)
    return (boxes[:, 2:] - boxes[:, :2]) * scale[:, None]


def anchors_for_dataset(dataset, num: int = 9, input_size: int = 416, *, iters: int = 300, seed: int = 0,
                        threshold: float = BPR_IOU_THRESHOLD) -> AnchorFit:
    """k-means anchors for ``dataset``'s boxes as the model sees them (letterboxed to ``input_size``)."""
    from ..training.config import check_fraction, check_input_size

    check_range("num (anchors)", num, 1)
    check_input_size(input_size)
    check_fraction("threshold", threshold)
    wh = dataset_box_shapes(dataset, input_size)
    wh = wh[(wh > 0).all(1)]
    if wh.shape[0] == 0:
        raise ValueError("cannot fit anchors: the dataset has no boxes")
    anchors, mean_iou = kmeans_anchors(wh, num, iters=iters, seed=seed)
    return AnchorFit(anchors, mean_iou, best_possible_recall(wh, anchors, threshold), threshold, int(wh.shape[0]))

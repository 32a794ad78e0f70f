"""Anchor boxes (priors): Darknet's COCO set, and how they are spread over the output levels.

YOLOv3 (Redmon & Farhadi, arXiv 1804.02767, section 2.3) predicts at three strides with three
anchors each; ``cfg/yolov3.cfg`` lists nine anchors in input pixels, smallest first, and each
``[yolo]`` layer's ``mask`` picks its three (6,7,8 on stride 32, 3,4,5 on 16, 0,1,2 on 8).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

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

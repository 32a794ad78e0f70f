"""YOLOv3's box coder: raw head outputs to boxes in input pixels, as Darknet computes them.

Paper section 2.1 and Darknet's ``yolo_layer.c``: a cell at column ``cx``, row ``cy`` of a level
with stride ``s`` predicts, per anchor of size ``(pw, ph)``, ``tx, ty, tw, th, to`` and one logit
per class; the box is ``x = (sigmoid(tx) + cx) * s``, ``y = (sigmoid(ty) + cy) * s``,
``w = pw * exp(tw)``, ``h = ph * exp(th)``; objectness and every class are independent sigmoids
(no softmax). A level's channels are anchor-major: channel ``a * (5 + C) + k`` is item ``k`` of
anchor ``a``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def split_level(raw: Tensor, num_anchors: int) -> Tensor:
    """(N, A*(5+C), H, W) raw output -> (N, A, H, W, 5+C) view in Darknet's channel layout."""
    n, channels, h, w = raw.shape
    if channels % num_anchors or channels // num_anchors < 5:
        raise ValueError(f"expected A*(5+C) channels for A={num_anchors} anchors, found {channels}")
    return raw.view(n, num_anchors, channels // num_anchors, h, w).permute(0, 1, 3, 4, 2)


def cell_offsets(h: int, w: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Column and row index of every cell, each (H, W)."""
    rows, cols = torch.meshgrid(torch.arange(h, device=device, dtype=dtype),
                                torch.arange(w, device=device, dtype=dtype), indexing="ij")
    return cols, rows


def decode_level(raw: Tensor, anchors: Tensor, stride: int) -> Tensor:
    """Decode one level: (N, A*(5+C), H, W) logits -> (N, A*H*W, 5+C).

    Rows are in Darknet's order (anchor, then row, then column); columns are the box centre x, y,
    width, height in input pixels, the objectness probability, then the class probabilities.
    ``anchors`` is this level's (A, 2) tensor of (width, height) in input pixels.
    """
    p = split_level(raw, anchors.shape[0])
    n, a, h, w, k = p.shape
    cols, rows = cell_offsets(h, w, raw.device, raw.dtype)
    anchors = anchors.to(raw.device, raw.dtype).view(1, a, 1, 1, 2)
    xy = (p[..., :2].sigmoid() + torch.stack((cols, rows), -1)) * stride
    wh = p[..., 2:4].exp() * anchors
    return torch.cat((xy, wh, p[..., 4:].sigmoid()), -1).reshape(n, a * h * w, k)

"""Random training augmentation for detection: scale/translate/flip, HSV jitter, Mosaic, multi-scale, and
the DataLoader's collate.

Boxes follow :mod:`.transforms`' conventions (xyxy pixels, clipped and filtered after every geometric
change); the letterbox that training, evaluation and inference share lives there too.

The training path is batched, as the classification path is (cifar10-airbench's lesson): a whole
uint8 batch of equal-sized images (already letterboxed, or the in-memory ``photodigits``) gets its
random scale, translation and flip from ONE ``grid_sample`` with a per-image affine matrix, and its
HSV jitter from ONE per-image 3x3 colour matrix; box maps are done on all boxes of the batch at
once (packed with an image index), no Python loop over boxes. ``benchmarks/bench_detection_data.py``
compares it with torchvision's per-image transforms. Mosaic works per image (in DataLoader workers).

Defaults follow Darknet's ``cfg/yolov3.cfg``: ``hue=.1`` (a fraction of the colour circle),
``saturation=1.5`` and ``exposure=1.5`` (factors drawn in [1/1.5, 1.5]), grey fill (0.5), and
multi-scale ``random=1`` (every 10 batches, a size from 320..608 in steps of 32 for 416 input).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from .transforms import (Letterbox, Size, clip_and_keep, fill_value, pack_targets, per_box_keys, select_boxes,
                         size_hw, unpack_targets)

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, the weights torchvision's grayscale uses
DARKNET_MULTISCALE = (10 / 13, 19 / 13)  # Darknet: (rand() % 10 + 10) * 32 = 320..608 for 416 input


# ---------------------------------------------------------------------------------------------
# Flip and colour
# ---------------------------------------------------------------------------------------------

def hflip(image: Tensor, target: dict) -> tuple[Tensor, dict]:
    """Mirror an image left-right and its boxes with it."""
    width = image.shape[-1]
    b = target["boxes"]
    return image.flip(-1), {**target, "boxes": torch.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], 1)}


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, generator=generator) * (high - low) + low


def hsv_matrices(n: int, hue: float, saturation: float, value: float,
                 generator: torch.Generator | None = None) -> Tensor:
    """(n, 3, 3) random colour matrices for RGB: value x hue rotation x saturation.

    Darknet's HSV jitter as linear maps: value (exposure) scales all channels; saturation blends
    with luma (torchvision's ``adjust_saturation``); hue rotates colours about the grey axis by up to
    ``hue`` of a full turn. Factors are log-uniform in [1/s, s]. Greys stay grey (up to ``value``).
    """
    v = torch.exp(_uniform(n, -math.log(value), math.log(value), generator))
    s = torch.exp(_uniform(n, -math.log(saturation), math.log(saturation), generator))
    turns = _uniform(n, -hue, hue, generator)
    return colour_matrix(v, s, turns)


def colour_matrix(value: Tensor, saturation: Tensor, hue_turns: Tensor) -> Tensor:
    """(n, 3, 3) RGB matrices: scale by ``value``, saturation blend with luma, rotate about grey by ``hue_turns`` turns."""
    eye = torch.eye(3)
    v, s, theta = value.float(), saturation.float(), hue_turns.float() * 2 * math.pi
    luma = torch.ones(3, 1) @ torch.tensor([LUMA])
    sat = s[:, None, None] * eye + (1 - s)[:, None, None] * luma
    k = torch.full((3,), 1 / math.sqrt(3))
    cross = torch.tensor([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    c, sn = theta.cos()[:, None, None], theta.sin()[:, None, None]
    rot = c * eye + sn * cross + (1 - c) * torch.outer(k, k)
    return v[:, None, None] * rot @ sat


def apply_colour(images: Tensor, matrices: Tensor) -> Tensor:
    """Apply per-image (N, 3, 3) colour matrices to float images (N, 3, H, W) in [0, 255], clamped."""
    return torch.einsum("nij,njhw->nihw", matrices.to(images), images).clamp_(0, 255)


def hsv_jitter(images: Tensor, hue: float = 0.1, saturation: float = 1.5, value: float = 1.5,
               generator: torch.Generator | None = None) -> Tensor:
    """HSV jitter of a uint8 batch (N, 3, H, W) (boxes are unchanged); returns uint8."""
    out = apply_colour(images.float(), hsv_matrices(len(images), hue, saturation, value, generator))
    return out.round_().to(torch.uint8)


# ---------------------------------------------------------------------------------------------
# The batched training path: scale + translate + flip in one grid_sample, then colour
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentation of a training batch (see :func:`augment_batch`)."""

    scale: tuple[float, float] = (0.75, 1.25)  # of the letterbox fit
    translate: float = 0.1  # of the output side, each way
    hflip: float = 0.5  # probability
    hue: float = 0.1
    saturation: float = 1.5
    value: float = 1.5
    fill: float = 0.5
    min_size: float = 2.0
    min_visible: float = 0.2


NO_AUGMENT = AugmentConfig(scale=(1.0, 1.0), translate=0.0, hflip=0.0, hue=0.0, saturation=1.0, value=1.0)


def _affine(n: int, in_hw: tuple[int, int], out_hw: tuple[int, int], cfg: AugmentConfig,
            generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image scale s (n,), translation t (n, 2) in output pixels, and flip sign f (n,): a point
    (x, y) of the input goes to (W'/2 + tx + f s (x - W/2), H'/2 + ty + s (y - H/2))."""
    (h, w), (oh, ow) = in_hw, out_hw
    s = min(oh / h, ow / w) * _uniform(n, cfg.scale[0], cfg.scale[1], generator)
    t = (torch.rand(n, 2, generator=generator) * 2 - 1) * cfg.translate * torch.tensor([ow, oh])
    f = torch.where(torch.rand(n, generator=generator) < cfg.hflip, -1.0, 1.0)
    return s, t, f


def _map_boxes(boxes: Tensor, index: Tensor, s: Tensor, t: Tensor, f: Tensor,
               in_hw: tuple[int, int], out_hw: tuple[int, int]) -> Tensor:
    (h, w), (oh, ow) = in_hw, out_hw
    sx, sy = (f * s)[index, None], s[index, None]
    xs = ow / 2 + t[index, 0:1] + sx * (boxes[:, 0::2] - w / 2)
    ys = oh / 2 + t[index, 1:2] + sy * (boxes[:, 1::2] - h / 2)
    return torch.stack([xs.min(1).values, ys[:, 0], xs.max(1).values, ys[:, 1]], 1)


def augment_batch(images: Tensor, targets: Sequence[dict], size: Size, cfg: AugmentConfig = AugmentConfig(),
                  generator: torch.Generator | None = None) -> tuple[Tensor, list[dict]]:
    """Randomly scale, translate and flip a batch of equal-sized images to ``size`` and jitter its colours.

    ``images``: (N, 3, H, W) uint8 (or float in [0, 255]); ``targets``: N dicts with ``boxes`` in
    those images' pixels. Returns float images (N, 3, h, w) in [0, 1] and new targets, boxes clipped
    and filtered. With :data:`NO_AUGMENT` this is a plain letterbox to ``size`` (bilinear).
    """
    if images.dim() != 4 or images.shape[1] != 3 or len(images) != len(targets):
        raise ValueError(f"expected images (N, 3, H, W) and N targets, found shape {tuple(images.shape)} "
                         f"and {len(targets)} targets")
    n, in_hw, out_hw = len(images), tuple(images.shape[-2:]), size_hw(size)
    s, t, f = _affine(n, in_hw, out_hw, cfg, generator)
    (h, w), (oh, ow) = in_hw, out_hw
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = ow / (f * s * w), -2 * t[:, 0] / (f * s * w)
    theta[:, 1, 1], theta[:, 1, 2] = oh / (s * h), -2 * t[:, 1] / (s * h)
    fill = cfg.fill * 255
    x = images.float() - fill  # zero padding outside the image then becomes the grey fill
    grid = F.affine_grid(theta.to(x.device), [n, 3, oh, ow], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).add_(fill)
    if cfg.hue or cfg.saturation != 1 or cfg.value != 1:
        out = apply_colour(out, hsv_matrices(n, cfg.hue, cfg.saturation, cfg.value, generator).to(out.device))
    boxes, index = pack_targets(targets)
    mapped = _map_boxes(boxes, index, s, t, f, in_hw, out_hw)
    clipped, keep = clip_and_keep(mapped, oh, ow, cfg.min_size, cfg.min_visible)
    return out.div_(255).clamp_(0, 1), unpack_targets(targets, clipped, keep)


# ---------------------------------------------------------------------------------------------
# Mosaic: four images in one
# ---------------------------------------------------------------------------------------------

def mosaic(images: Sequence[Tensor], targets: Sequence[dict], size: Size, *,
           center: tuple[int, int] | None = None, tile_scale: float = 0.5, fill: float = 0.5,
           min_size: float = 2.0, min_visible: float = 0.2,
           generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
    """Four images in one (YOLOv4's Mosaic): each image is resized (aspect kept) so its long side is
    ``tile_scale`` x the output's, and placed in one quadrant around a centre (random in the middle
    half, or ``center`` = (x, y)) with its inner corner at the centre; what falls outside the
    output is cut, and boxes are cut with it. Returns one image (3, h, w), same dtype, and one target
    (the four targets' boxes, ``image_id`` of the first)."""
    if len(images) != 4 or len(targets) != 4:
        raise ValueError(f"mosaic takes 4 images and 4 targets, found {len(images)} and {len(targets)}")
    oh, ow = size_hw(size)
    if center is None:
        xy = torch.rand(2, generator=generator) * 0.5 + 0.25
        center = (int(xy[0] * ow), int(xy[1] * oh))
    xc, yc = center
    canvas = images[0].new_full((3, oh, ow), fill_value(images[0], fill))
    parts = []
    for quadrant, (image, target) in enumerate(zip(images, targets)):
        h, w = image.shape[-2:]
        scale = tile_scale * max(oh, ow) / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        tile = TF.resize(image, [nh, nw], antialias=True) if (nh, nw) != (h, w) else image
        ox = xc - nw if quadrant in (0, 2) else xc  # 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right
        oy = yc - nh if quadrant in (0, 1) else yc
        x0, y0, x1, y1 = max(ox, 0), max(oy, 0), min(ox + nw, ow), min(oy + nh, oh)
        if x1 > x0 and y1 > y0:
            canvas[:, y0:y1, x0:x1] = tile[:, y0 - oy:y1 - oy, x0 - ox:x1 - ox]
        factor = torch.tensor([nw / w, nh / h, nw / w, nh / h])
        boxes = target["boxes"].float() * factor + torch.tensor([ox, oy, ox, oy], dtype=torch.float32)
        clipped, keep = clip_and_keep(boxes, oh, ow, min_size, min_visible)
        parts.append(select_boxes(target, keep, clipped))
    keys = per_box_keys(targets[0])
    out = {k: torch.cat([p[k] for p in parts]) for k in keys}
    out.update({k: v for k, v in targets[0].items() if k not in keys})
    return canvas, out


class Mosaic(Dataset):
    """A dataset of mosaics: item ``i`` is image ``i`` with three random others (torch's RNG, which
    DataLoader seeds per worker), with probability ``p``; otherwise image ``i`` letterboxed to ``size``."""

    def __init__(self, dataset: Dataset, size: Size, p: float = 1.0, tile_scale: float = 0.5,
                 fill: float = 0.5) -> None:
        self.dataset, self.size, self.p, self.tile_scale, self.fill = dataset, size, p, tile_scale, fill
        self.classes = getattr(dataset, "classes", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        if float(torch.rand(())) >= self.p:
            return Letterbox(self.size, self.fill)(*self.dataset[index])
        others = torch.randint(len(self.dataset), (3,)).tolist()
        pairs = [self.dataset[i] for i in [index, *others]]
        return mosaic([p[0] for p in pairs], [p[1] for p in pairs], self.size, tile_scale=self.tile_scale,
                      fill=self.fill)


# ---------------------------------------------------------------------------------------------
# Multi-scale training and batching
# ---------------------------------------------------------------------------------------------

def multiscale_sizes(base: int, scale_range: tuple[float, float] = DARKNET_MULTISCALE, stride: int = 32) -> list[int]:
    """The input sizes multi-scale training draws from: multiples of ``stride`` within ``scale_range`` x ``base``."""
    low, high = math.ceil(base * scale_range[0] / stride - 1e-9), math.floor(base * scale_range[1] / stride + 1e-9)
    sizes = [k * stride for k in range(max(low, 1), high + 1)]
    return sizes or [max(stride, round(base / stride) * stride)]


def multiscale_size(step: int, base: int, *, every: int = 10, scale_range: tuple[float, float] = DARKNET_MULTISCALE,
                    stride: int = 32, seed: int = 0) -> int:
    """The input size for training step ``step`` (Darknet's ``random=1``): a new random multiple of
    ``stride`` every ``every`` steps, the same for a given (seed, step) so resumed runs and all ranks agree."""
    sizes = multiscale_sizes(base, scale_range, stride)
    g = torch.Generator().manual_seed(seed * 1_000_003 + step // every)
    return sizes[int(torch.randint(len(sizes), (1,), generator=g))]


def collate_detection(batch: Sequence[tuple[Tensor, dict]], stride: int = 32,
                      fill: float = 0.5) -> tuple[Tensor, list[dict]]:
    """A DataLoader ``collate_fn``: images padded at the bottom and right (boxes unchanged) to the
    batch's largest height and width, rounded up to a multiple of ``stride``, in one tensor; targets as a list."""
    if not batch:
        raise ValueError("expected a non-empty batch of (image, target) pairs, found none")
    images, targets = zip(*batch)
    h = math.ceil(max(i.shape[-2] for i in images) / stride) * stride
    w = math.ceil(max(i.shape[-1] for i in images) / stride) * stride
    out = images[0].new_full((len(images), 3, h, w), fill_value(images[0], fill))
    for slot, image in zip(out, images):
        slot[:, :image.shape[-2], :image.shape[-1]] = image
    return out, list(targets)

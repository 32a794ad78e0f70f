"""``photodigits``: the built-in detection dataset with real pixels, generated offline in about a second.

scikit-learn's handwritten digits (``load_digits``: 1,797 8x8 scans, values 0-16) are pasted at
random sizes and positions onto random crops of scikit-learn's two bundled photos
(``load_sample_images``: china.jpg and flower.jpg, 427x640). Each digit is cut to the tight box of
its strokes, upscaled with nearest-neighbour interpolation (crisp strokes, and every border
row/column of the upscaled patch still holds a stroke pixel, so the box is exactly the patch) and
blended with its intensity as alpha, dark on a light background and light on a dark one, so it is
visible. Digits never overlap. Val images use only the scans of the classification ``digits`` set's
test split, train images only its train split: val handwriting is unseen by the detector and by a
backbone pretrained with ``backbonekit train --dataset digits``. See ``docs/detection-data.md`` for the sizes and why.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .datasets import InMemoryDetection, make_target

CLASSES = tuple(str(d) for d in range(10))
FAINT = 3  # digit pixels below this (of 16) are scanner noise: zeroed before the tight box is cut
FULL_ALPHA = 8  # intensity (of 16) at which a stroke is fully opaque
PLACEMENT_TRIES = 30
MIN_ASPECT = 0.4  # width / height of the narrowest pasted digit


@dataclass(frozen=True)
class PhotoDigitsSpec:
    """Sizes of the generated set (the defaults are ``photodigits``)."""

    image_size: int = 128
    num_train: int = 1000
    num_val: int = 200
    digits_per_image: tuple[int, int] = (1, 4)  # inclusive range
    digit_height: tuple[int, int] = (16, 48)  # pixels, inclusive; width: the digit's shape x 0.8-1.25, >= 0.4 x height
    seed: int = 0


DEFAULT_SPEC = PhotoDigitsSpec()


def photodigits(split: str = "train", spec: PhotoDigitsSpec = DEFAULT_SPEC) -> InMemoryDetection:
    """The ``train`` or ``val`` split of the generated set (cached in memory after the first call)."""
    if split not in ("train", "val"):
        raise ValueError(f"expected split 'train' or 'val', found '{split}'")
    images, targets, _, _ = _generate(spec, split, False)
    return InMemoryDetection(images, [dict(t) for t in targets], CLASSES, name="photodigits")


def generate_with_masks(split: str, spec: PhotoDigitsSpec) -> tuple[Tensor, list[dict], list[Tensor], Tensor]:
    """Images, targets, each object's alpha mask ((N_i, H, W) float per image) and the backgrounds
    before pasting (uint8, like the images): for tests and figures."""
    return _generate(spec, split, True)


@functools.lru_cache(maxsize=1)
def _sources() -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Digits (1797, 8, 8) and labels, and the background photos at full and half size (uint8 HWC)."""
    from PIL import Image
    from sklearn.datasets import load_digits, load_sample_images

    digits = load_digits()
    photos = []
    for photo in load_sample_images().images:
        photos.append(photo)
        half = Image.fromarray(photo).resize((photo.shape[1] // 2, photo.shape[0] // 2), Image.Resampling.LANCZOS)
        photos.append(np.asarray(half))
    return digits.images.astype(np.float32), digits.target.astype(np.int64), photos


def _digit_pool(split: str) -> np.ndarray:
    """Indices of the digit scans a split may use: the classification ``digits`` set's train or test
    split (80/20, stratified, fixed), so a backbone trained on ``digits`` never saw val handwriting."""
    from ...digits import digits_split

    train, test = digits_split(_sources()[1])
    return np.sort(np.asarray(test if split == "val" else train))


def _tight(digit: np.ndarray) -> np.ndarray:
    """The digit with faint pixels zeroed, cut to the rows and columns that hold strokes."""
    digit = np.where(digit >= FAINT, digit, 0)
    rows, cols = np.flatnonzero(digit.any(1)), np.flatnonzero(digit.any(0))
    return digit[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _upscale(digit: np.ndarray, h: int, w: int) -> np.ndarray:
    """Nearest-neighbour resize to (h, w) >= the digit's size: output row i reads row floor(i * rows / h)."""
    rows = np.arange(h) * digit.shape[0] // h
    cols = np.arange(w) * digit.shape[1] // w
    return digit[rows][:, cols]


def _background(rng: np.random.Generator, photos: list[np.ndarray], size: int) -> np.ndarray:
    photo = photos[rng.integers(len(photos))]
    y, x = rng.integers(photo.shape[0] - size + 1), rng.integers(photo.shape[1] - size + 1)
    crop = photo[y:y + size, x:x + size].astype(np.float32)
    return crop[:, ::-1].copy() if rng.random() < 0.5 else crop


def _place(rng: np.random.Generator, h: int, w: int, size: int, boxes: list) -> tuple[int, int] | None:
    """A top-left corner for an (h, w) patch that overlaps no box already placed (None after some tries)."""
    for _ in range(PLACEMENT_TRIES):
        x, y = int(rng.integers(size - w + 1)), int(rng.integers(size - h + 1))
        if all(x >= bx2 or x + w <= bx1 or y >= by2 or y + h <= by1 for bx1, by1, bx2, by2 in boxes):
            return x, y
    return None


def _paste(canvas: np.ndarray, alpha: np.ndarray, x: int, y: int, rng: np.random.Generator) -> None:
    """Blend a stroke colour into ``canvas`` with ``alpha``: dark on light backgrounds, light on dark ones."""
    h, w = alpha.shape
    region = canvas[y:y + h, x:x + w]
    under_strokes = (region.mean(2) * alpha).sum() / alpha.sum()  # the background the strokes will cover
    light_background = under_strokes > 127.5
    base = rng.uniform(0, 40) if light_background else rng.uniform(215, 255)
    colour = np.clip(base + rng.uniform(-15, 15, size=3), 0, 255).astype(np.float32)
    a = alpha[..., None]
    region *= 1 - a
    region += a * colour


def _one_image(rng: np.random.Generator, spec: PhotoDigitsSpec, pool: np.ndarray,
               with_masks: bool) -> tuple[np.ndarray, list, list, list]:
    digits, labels, photos = _sources()
    size = spec.image_size
    canvas = _background(rng, photos, size)
    boxes, classes, masks = [], [], [canvas.copy()] if with_masks else []
    for _ in range(int(rng.integers(spec.digits_per_image[0], spec.digits_per_image[1] + 1))):
        index = int(pool[rng.integers(len(pool))])
        digit = _tight(digits[index])
        h = int(rng.integers(spec.digit_height[0], spec.digit_height[1] + 1))
        w = int(round(h * digit.shape[1] / digit.shape[0] * np.exp(rng.uniform(np.log(0.8), np.log(1.25)))))
        w = min(max(w, digit.shape[1], round(MIN_ASPECT * h)), size)  # a thin '1' stays detectable
        corner = _place(rng, h, w, size, boxes)
        if corner is None:
            continue
        x, y = corner
        alpha = np.clip(_upscale(digit, h, w) / FULL_ALPHA, 0, 1)
        _paste(canvas, alpha, x, y, rng)
        boxes.append((x, y, x + w, y + h))
        classes.append(int(labels[index]))
        if with_masks:
            mask = np.zeros((size, size), np.float32)
            mask[y:y + h, x:x + w] = alpha
            masks.append(mask)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), boxes, classes, masks


@functools.lru_cache(maxsize=4)
def _generate(spec: PhotoDigitsSpec, split: str,
              with_masks: bool) -> tuple[Tensor, list[dict], list[Tensor], Tensor | None]:
    if spec.digit_height[1] > spec.image_size or spec.digit_height[0] < 8 or spec.digits_per_image[0] < 0:
        raise ValueError(f"expected digit heights in [8, image_size={spec.image_size}] and a non-negative "
                         f"digit count, found heights {spec.digit_height}, counts {spec.digits_per_image}")
    photos = _sources()[2]
    if spec.image_size > min(p.shape[0] for p in photos):
        raise ValueError(f"image_size must be at most {min(p.shape[0] for p in photos)} (the smallest background), "
                         f"found {spec.image_size}")
    count = spec.num_train if split == "train" else spec.num_val
    rng = np.random.default_rng([spec.seed, 0 if split == "train" else 1])
    pool = _digit_pool(split)
    images = np.empty((count, spec.image_size, spec.image_size, 3), np.uint8)
    targets, masks, backgrounds = [], [], []
    for i in range(count):
        images[i], boxes, classes, object_masks = _one_image(rng, spec, pool, with_masks)
        targets.append(make_target(boxes, classes, i))
        if with_masks:  # the first "mask" is the background before pasting
            backgrounds.append(np.clip(np.rint(object_masks[0]), 0, 255).astype(np.uint8))
            masks.append(torch.from_numpy(np.stack(object_masks[1:]) if len(object_masks) > 1
                                          else np.zeros((0, spec.image_size, spec.image_size), np.float32)))
    to_nchw = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    return to_nchw(images), targets, masks, (to_nchw(np.stack(backgrounds)) if with_masks else None)


# ---------------------------------------------------------------------------------------------
# Writing a dataset to disk in YOLO format (what `backbonekit detect make-data` calls)
# ---------------------------------------------------------------------------------------------

def _yolo_rows(target: dict, height: int, width: int) -> str:
    boxes = target["boxes"].double().reshape(-1, 4)
    scale = torch.tensor([width, height, width, height], dtype=torch.float64)
    b = boxes / scale
    rows = torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1)
    return "".join(f"{int(c)} {r[0]:.6f} {r[1]:.6f} {r[2]:.6f} {r[3]:.6f}\n"
                   for c, r in zip(target["labels"].tolist(), rows.tolist()))


def write_yolo_dataset(splits: Mapping[str, Dataset], out_dir: str | os.PathLike) -> Path:
    """Write datasets (e.g. ``{"train": ..., "val": ...}``) as a YOLO folder: ``images/{split}/NNNNNN.png``,
    ``labels/{split}/NNNNNN.txt`` (``class cx cy w h``, normalised, 6 decimals) and ``data.yaml``.

    Everything is written into a temporary folder beside ``out_dir`` and renamed into place at the
    end, so an interrupted write leaves nothing half-done (and a killed one leaves a temporary that the
    next write there removes: :func:`backbonekit.checkpoint.temporary_folder`); an existing non-empty
    ``out_dir`` is refused.
    """
    import yaml
    from PIL import Image

    from ...checkpoint import temporary_folder

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"expected a new or empty folder to write the dataset to, found existing {out}")
    classes = list(next(iter(splits.values())).classes)
    out.parent.mkdir(parents=True, exist_ok=True)
    with temporary_folder(out) as folder:
        tmp = folder / out.name
        for split, dataset in splits.items():
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "labels" / split).mkdir(parents=True)
            for i in range(len(dataset)):
                image, target = dataset[i]
                Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp / "images" / split / f"{i:06d}.png")
                (tmp / "labels" / split / f"{i:06d}.txt").write_text(_yolo_rows(target, *image.shape[-2:]))
        meta = {"path": ".", **{s: f"images/{s}" for s in splits}, "nc": len(classes), "names": classes}
        (tmp / "data.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    return out


def make_data(out: str | os.PathLike, *, image_size: int | None = None, num_train: int | None = None,
              num_val: int | None = None, seed: int | None = None) -> Path:
    """Write the built-in ``photodigits`` set (or a resized/recounted one) to ``out`` as a YOLO folder."""
    changes = {k: v for k, v in dict(image_size=image_size, num_train=num_train, num_val=num_val,
                                     seed=seed).items() if v is not None}
    spec = replace(DEFAULT_SPEC, **changes)
    return write_yolo_dataset({"train": photodigits("train", spec), "val": photodigits("val", spec)}, out)

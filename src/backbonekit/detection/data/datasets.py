"""What every detection dataset is, whatever its format: the target convention, the two dataset classes,
image probing and decoding, and the bad-label report the format readers (:mod:`.yolo`, :mod:`.coco`,
:mod:`.voc`) share. :func:`~.formats.load_detection_dataset` picks the reader for a dataset spec.

Every dataset follows torchvision's detection convention: ``dataset[i]`` is ``(image, target)``
with ``image`` a **uint8** tensor (3, H, W) (uint8 because the batched augmentation in
augmentation (:mod:`.augment`) works on uint8 batches and a quarter of float32's memory; divide by 255 for the
model's [0, 1] input), and ``target`` a dict with ``boxes`` (N, 4) float32 xyxy in that image's
pixels, ``labels`` (N,) int64 counted from 0, and ``image_id`` (an int64 scalar); VOC targets also
carry ``difficult`` (N,) bool, COCO targets ``iscrowd`` (N,) bool (crowd regions: ignored by evaluation,
left out of training by :func:`training_target`) and ``area`` (N,) float32 (the file's; 0 where it
gives none). N may be 0: an image with no objects is a valid negative.

Datasets know their ``classes`` (names), every image's ``sizes`` (height, width) and every
``targets`` entry without decoding an image (anchors and statistics need no pixels).

All checking happens when a dataset is indexed, before training starts: a bad label row (class
outside the known classes, coordinates outside [0, 1], a non-positive size, a malformed line)
raises one ValueError naming the file and the line, or with ``skip_bad_labels=True`` the row is
dropped and one warning gives the count; a missing label file means no objects, with one summary
warning; every image's header is read (its size), and an unreadable one raises one OSError
naming it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ...images import image_size, read_rgb

SPLITS = ("train", "val")
Transform = Callable[[Tensor, dict], "tuple[Tensor, dict]"]


def make_target(boxes: Any, labels: Any, image_id: int, **extra: Any) -> dict:
    """A target dict in the package's convention (float32 boxes (N, 4), int64 labels (N,), image_id)."""
    target = {"boxes": torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
              "labels": torch.as_tensor(np.asarray(labels, dtype=np.int64).reshape(-1)),
              "image_id": torch.tensor(image_id, dtype=torch.int64)}
    target.update(extra)
    return target


def training_target(target: dict) -> dict:
    """``boxes`` and ``labels`` to train on: crowd regions (``iscrowd``) are left out, as pycocotools
    never counts them as objects to find."""
    boxes, labels = target["boxes"], target["labels"]
    crowd = target.get("iscrowd")
    if crowd is not None and bool(crowd.any()):
        keep = ~crowd.bool()
        boxes, labels = boxes[keep], labels[keep]
    return {"boxes": boxes, "labels": labels}


def copy_target(target: dict) -> dict:
    """A target whose tensors can be changed without touching the dataset's."""
    return {k: v.clone() if isinstance(v, Tensor) else v for k, v in target.items()}


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------

class DetectionDataset(Dataset):
    """Images on disk with validated targets; images are decoded in ``__getitem__`` (uint8, RGB)."""

    def __init__(self, paths: Sequence[Path], targets: list[dict], sizes: Sequence[tuple[int, int]],
                 classes: Sequence[str], *, name: str, category_ids: Sequence[int] | None = None,
                 transform: Transform | None = None) -> None:
        self.paths = [Path(p) for p in paths]
        self.targets = targets
        self.sizes = torch.as_tensor(list(sizes), dtype=torch.int64).reshape(-1, 2)
        self.classes = list(classes)
        self.name = name
        # label -> the file's own category id (COCO's are not contiguous), to write results back; None: the label
        self.category_ids = list(category_ids) if category_ids is not None else None
        self.transform = transform
        self.skipped_labels = 0
        self.missing_labels = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        image = read_image_uint8(self.paths[index], tuple(self.sizes[index].tolist()))
        target = copy_target(self.targets[index])
        return self.transform(image, target) if self.transform else (image, target)


class InMemoryDetection(Dataset):
    """A dataset held as one uint8 tensor (N, 3, H, W) with its targets (the generated ``photodigits``)."""

    def __init__(self, images: Tensor, targets: list[dict], classes: Sequence[str], *, name: str,
                 transform: Transform | None = None) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or len(images) != len(targets):
            raise ValueError(f"expected uint8 images (N, 3, H, W) and N targets, found {images.dtype} "
                             f"{tuple(images.shape)} and {len(targets)} targets")
        self.images = images
        self.targets = targets
        self.sizes = torch.tensor([tuple(images.shape[-2:])] * len(images), dtype=torch.int64).reshape(-1, 2)
        self.classes = list(classes)
        self.category_ids = None  # results use the label as the category id
        self.name = name
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        image, target = self.images[index].clone(), copy_target(self.targets[index])
        return self.transform(image, target) if self.transform else (image, target)


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------

def probe_image(path: Path, verify: bool = False) -> tuple[int, int]:
    """(height, width) of an image from its header (EXIF rotation applied); ``verify`` decodes it fully.

    One OSError naming the file when it cannot be read (:mod:`backbonekit.images`' rules).
    """
    return tuple(read_rgb(path).shape[:2]) if verify else image_size(path)


def read_image_uint8(path: Path, expected: tuple[int, int] | None = None) -> Tensor:
    """Decode an image file to uint8 RGB (3, H, W) (the datasets' items; the model's float input is this / 255,
    :func:`backbonekit.detection.predict.read_image`) with :func:`backbonekit.images.read_rgb` (EXIF rotation
    applied, every Pillow mode handled); one OSError naming it on failure."""
    image = torch.from_numpy(read_rgb(path).copy()).permute(2, 0, 1).contiguous()
    if expected is not None and tuple(image.shape[-2:]) != tuple(expected):
        raise OSError(f"image {path} decodes to {tuple(image.shape[-2:])} (height, width) but its header "
                      f"said {tuple(expected)} when the dataset was indexed; has the file changed?")
    return image


# ---------------------------------------------------------------------------------------------
# Bad labels: collected while indexing, then one error line or one warning
# ---------------------------------------------------------------------------------------------

@dataclass
class LabelProblems:
    """Bad label rows and missing label files found while indexing one split."""

    what: str
    skip_bad: bool
    bad: list[str] = field(default_factory=list)
    missing: int = 0

    def report(self, dataset: DetectionDataset, total: int, missing_note: str) -> None:
        """Raise on the first bad row (unless ``skip_bad``), else record the counts on ``dataset`` and warn once each."""
        if self.bad and not self.skip_bad:
            more = f" (and {len(self.bad) - 1} more bad rows)" if len(self.bad) > 1 else ""
            raise ValueError(f"{self.bad[0]}{more}; fix the labels or pass skip_bad_labels=True "
                             "(--skip-bad-data) to drop bad rows")
        dataset.skipped_labels, dataset.missing_labels = len(self.bad), self.missing
        if self.bad:
            warnings.warn(f"{self.what}: skipped {len(self.bad)} bad label rows, the first: {self.bad[0]}",
                          stacklevel=3)
        if self.missing:
            warnings.warn(f"{self.what}: {self.missing} of {total} images have no {missing_note}; "
                          "they are treated as images with no objects", stacklevel=3)

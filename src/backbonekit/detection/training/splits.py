"""What a run trains on, checked before anything is written: the train and val splits (same classes, same
category ids, at least one batch) and the anchors (Darknet's, k-means on the training boxes, or given)."""

from __future__ import annotations

import warnings

import torch

from ..._text import few
from ...engine import dist
from ..data.formats import load_detection_dataset
from ..task.anchors import COCO_ANCHORS, anchors_for_dataset, dataset_box_shapes
from .config import DetectConfig, parse_anchors


def load_splits(cfg: DetectConfig):
    """The training and validation sets, every label checked (one error line, or a count with skip_bad_data)."""
    train_set = load_detection_dataset(cfg.dataset, cfg.data_dir, "train", skip_bad_labels=cfg.skip_bad_data)
    val_set = load_detection_dataset(cfg.dataset, cfg.data_dir, "val", skip_bad_labels=cfg.skip_bad_data)
    if list(train_set.classes) != list(val_set.classes):
        raise ValueError(f"{cfg.dataset}: the train and val splits name different classes "
                         f"({few(list(train_set.classes))} vs {few(list(val_set.classes))})")
    if category_ids(train_set) != category_ids(val_set):
        raise ValueError(f"{cfg.dataset}: the train and val files give the classes different category ids "
                         f"({category_ids(train_set)} vs {category_ids(val_set)})")
    if len(train_set) < cfg.batch_size * dist.world_size():
        raise ValueError(f"dataset {cfg.dataset} has {len(train_set)} training images, fewer than one batch "
                         f"({cfg.batch_size} x {dist.world_size()} processes)")
    if len(val_set) == 0:
        raise ValueError(f"dataset {cfg.dataset} has no validation images: expected a 'val' split")
    return train_set, val_set


def category_ids(dataset) -> list[int] | None:
    """The dataset's own category id of each label (a COCO file's), or None when its labels are the ids."""
    ids = getattr(dataset, "category_ids", None)
    return [int(i) for i in ids] if ids is not None else None


def resolve_anchors(spec: str | list, train_set, input_size: int) -> list[list[float]]:
    """``coco``: Darknet's nine; ``auto``: k-means (1 - IoU) on the training boxes at ``input_size``; or the list."""
    spec = parse_anchors(spec)
    if spec == "coco":
        return [list(map(float, a)) for a in COCO_ANCHORS]
    if spec == "auto":
        shapes = dataset_box_shapes(train_set, input_size)
        if len(torch.unique(shapes[(shapes > 0).all(1)], dim=0)) < 9:
            warnings.warn("--anchors auto: the training set has fewer than 9 distinct box shapes for k-means; "
                          "using Darknet's COCO anchors", stacklevel=2)
            return resolve_anchors("coco", train_set, input_size)
        fit = anchors_for_dataset(train_set, 9, input_size)
        return [[round(float(w), 2), round(float(h), 2)] for w, h in fit.anchors.tolist()]
    return spec

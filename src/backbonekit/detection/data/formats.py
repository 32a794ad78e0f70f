"""One entry point to every detection dataset: a spec (``photodigits``, ``yolo:PATH``, ``coco:FILE.json``,
``voc:PATH``) names the format and where it is; the format's reader does the rest."""

from __future__ import annotations

import os

from torch.utils.data import Dataset

from .coco import read_coco_split
from .datasets import SPLITS
from .photodigits import photodigits
from .voc import read_voc
from .yolo import read_yolo

FORMATS = ("photodigits", "yolo:PATH", "coco:ANNOTATIONS.json[,VAL.json]", "voc:PATH")


def load_detection_dataset(spec: str = "photodigits", data_dir: str | os.PathLike | None = None,
                           split: str = "train", *, skip_bad_labels: bool = False,
                           verify_images: bool = False) -> Dataset:
    """The dataset named by ``spec``: ``photodigits`` (built in, generated in memory), ``yolo:PATH``,
    ``coco:ANNOTATIONS.json`` (images in ``data_dir``; with one file a fixed 80/20 split, with
    ``coco:TRAIN.json,VAL.json`` one file each; ``split="all"`` for a whole file) or ``voc:PATH``.

    Everything is checked here, before any training step: see :mod:`.datasets`.
    """
    kind, _, path = spec.partition(":")
    if split not in SPLITS + ("test", "all"):
        raise ValueError(f"expected split 'train', 'val' or 'test', found '{split}'")
    options = {"skip_bad_labels": skip_bad_labels, "verify_images": verify_images}
    if kind == "photodigits" and not path:
        if split not in SPLITS:
            raise ValueError(f"photodigits has 'train' and 'val' splits, found '{split}'")
        return photodigits(split)
    if not path:
        raise ValueError(f"expected a dataset as one of {', '.join(FORMATS)}, found '{spec}'")
    if kind == "coco":
        if split == "test":
            raise ValueError("a COCO dataset has 'train' and 'val' (coco:TRAIN.json,VAL.json) or 'all', found "
                             "split 'test'; give the test file as the val one (coco:TRAIN.json,TEST.json)")
        return read_coco_split(path, data_dir, split, **options)
    if split == "all":
        raise ValueError(f"split 'all' is for a single COCO file, found '{spec}'")
    if kind == "yolo":
        return read_yolo(path, split, **options)
    if kind == "voc":
        return read_voc(path, split, **options)
    raise ValueError(f"expected a dataset as one of {', '.join(FORMATS)}, found '{spec}'")

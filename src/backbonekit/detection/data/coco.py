"""COCO instances files (read with pycocotools): one JSON file, or one per split."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from ..._text import few, first_line
from .datasets import SPLITS, DetectionDataset, LabelProblems, make_target, probe_image

COCO_VAL_FRACTION = 0.2  # one COCO file given: this fraction of its images (fixed seed) is the val split
COCO_SPLIT_SEED = 0


def _load_coco(path: Path):
    try:
        from pycocotools.coco import COCO
    except ImportError:
        raise ImportError("reading COCO files needs pycocotools: pip install pycocotools") from None
    if not path.is_file():
        raise FileNotFoundError(f"expected a COCO instances file (JSON), found no file at {path}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco = COCO(str(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot parse {path} as JSON: {first_line(exc)}") from None
    except (KeyError, TypeError, AssertionError) as exc:
        raise ValueError(f"{path}: expected a COCO instances file with 'images', 'annotations' and 'categories', "
                         f"found a file pycocotools cannot index ({type(exc).__name__}: {first_line(exc)})") from None
    _check_unique_image_ids(coco.dataset.get("images", []), path)
    return coco


def _check_unique_image_ids(images: Sequence[dict], path: Path) -> None:
    """pycocotools keeps the last image of an id and gives it every annotation of that id: refuse instead."""
    seen: dict[Any, dict] = {}
    for image in images:
        first = seen.setdefault(image.get("id"), image)
        if first is not image:
            raise ValueError(f"{path}: image id {image.get('id')} is used twice, by '{first.get('file_name')}' "
                             f"and '{image.get('file_name')}'; expected one id per image")


def _coco_image_dir(path: Path, data_dir: str | os.PathLike | None, first_file: str) -> Path:
    """The folder holding the images: ``data_dir`` or the JSON's folder, or their ``train2017``-style subfolder."""
    tag = path.stem.split("_", 1)[-1]  # instances_val2017 -> val2017
    bases = [Path(data_dir)] if data_dir is not None else [path.parent, path.parent.parent]
    candidates = [d for b in bases for d in (b, b / tag, b / "images", b / "images" / tag)]
    for folder in candidates:
        if (folder / first_file).is_file():
            return folder
    raise FileNotFoundError(f"cannot find the images of {path}: expected {first_file} in one of "
                            f"{few([str(c) for c in candidates], 6)}; pass the image folder as data_dir (--data-dir)")


def _coco_boxes(coco, image: dict, path: Path, cat_to_label: dict[int, int],
                problems: LabelProblems) -> tuple[list, list, list, list]:
    """(boxes, labels, crowd flags, areas) of one image's annotations; bad ones go to ``problems``."""
    boxes, labels, crowd, areas = [], [], [], []
    width, height = image["width"], image["height"]
    for ann in coco.imgToAnns.get(image["id"], []):
        where = f"{path}: annotation id {ann.get('id')} (image '{image.get('file_name')}')"
        bbox = ann.get("bbox")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or \
                not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox):
            problems.bad.append(f"{where}: expected bbox [x, y, width, height], found {bbox!r}")
            continue
        x, y, w, h = (float(v) for v in bbox)
        if ann.get("category_id") not in cat_to_label:
            problems.bad.append(f"{where}: category_id {ann.get('category_id')} is not in 'categories'")
        elif w <= 0 or h <= 0:
            problems.bad.append(f"{where}: box width and height must be > 0, found {w} x {h}")
        elif x < -1 or y < -1 or x + w > width + 1 or y + h > height + 1:
            problems.bad.append(f"{where}: box {bbox} lies outside the {width} x {height} image")
        else:
            boxes.append([max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)])
            labels.append(cat_to_label[ann["category_id"]])
            crowd.append(bool(ann.get("iscrowd", 0)))
            area = ann.get("area")  # pycocotools sorts boxes into small/medium/large by the file's area
            areas.append(float(area) if isinstance(area, (int, float)) and math.isfinite(area) and area > 0 else 0.0)
    return boxes, labels, crowd, areas


def read_coco(annotations: str | os.PathLike, data_dir: str | os.PathLike | None = None, *,
              image_ids: Sequence[int] | None = None, skip_bad_labels: bool = False,
              verify_images: bool = False) -> DetectionDataset:
    """A COCO instances file read with pycocotools: categories become labels 0..C-1 in id order
    (``dataset.category_ids[label]`` maps back), ``[x, y, w, h]`` becomes xyxy, and ``image_id`` is COCO's
    id. Crowd regions stay in the targets flagged ``iscrowd`` (evaluation ignores detections on them, as
    pycocotools does; training leaves them out), with the file's ``area`` (0 where it gives none).
    ``image_ids`` restricts the dataset to those images."""
    path = Path(annotations)
    coco = _load_coco(path)
    cats = sorted(coco.cats.values(), key=lambda c: c["id"])
    cat_to_label = {c["id"]: i for i, c in enumerate(cats)}
    ids = sorted(coco.imgs) if image_ids is None else list(image_ids)
    if not ids:
        raise ValueError(f"{path}: expected at least one image, found none")
    image_dir = _coco_image_dir(path, data_dir, coco.imgs[ids[0]]["file_name"])
    problems = LabelProblems(str(path), skip_bad_labels)
    paths, targets, sizes = [], [], []
    for image_id in ids:
        image = coco.imgs[image_id]
        file = image_dir / image["file_name"]
        height, width = probe_image(file, verify_images)
        if (image.get("height"), image.get("width")) != (height, width):
            raise OSError(f"image {file} is {width} x {height} but {path} says "
                          f"{image.get('width')} x {image.get('height')} (width x height)")
        boxes, labels, crowd, areas = _coco_boxes(coco, image, path, cat_to_label, problems)
        paths.append(file)
        targets.append(make_target(boxes, labels, image_id, iscrowd=torch.tensor(crowd, dtype=torch.bool),
                                   area=torch.tensor(areas, dtype=torch.float32)))
        sizes.append((height, width))
    dataset = DetectionDataset(paths, targets, sizes, [c["name"] for c in cats], name=f"coco:{path}",
                               category_ids=[c["id"] for c in cats])
    problems.report(dataset, len(paths), "annotations")
    return dataset


def read_coco_split(annotations: str, data_dir: str | os.PathLike | None, split: str, **kwargs: Any) -> DetectionDataset:
    files = [f for f in annotations.split(",") if f]
    if len(files) == 2:
        return read_coco(files[SPLITS.index(split)], data_dir, **kwargs)
    if len(files) != 1:
        raise ValueError(f"expected coco:ANNOTATIONS.json or coco:TRAIN.json,VAL.json, found {len(files)} files")
    if split == "all":
        return read_coco(files[0], data_dir, **kwargs)
    ids = sorted(_load_coco(Path(files[0])).imgs)
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(COCO_SPLIT_SEED)).tolist()
    n_val = max(1, round(len(ids) * COCO_VAL_FRACTION)) if len(ids) > 1 else 0
    chosen = order[:n_val] if split == "val" else order[n_val:]
    if not chosen:
        raise ValueError(f"{files[0]} has {len(ids)} image(s): too few to split into train and val")
    return read_coco(files[0], data_dir, image_ids=sorted(ids[i] for i in chosen), **kwargs)

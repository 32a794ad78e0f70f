"""Pascal VOC folders: ``Annotations/*.xml``, ``JPEGImages/``, ``ImageSets/Main/{split}.txt``."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Sequence
from xml.parsers import expat

import torch

from .datasets import DetectionDataset, LabelProblems, make_target, probe_image

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")


def _parse_voc_xml(path: Path) -> dict:
    """filename, size and objects (each with its start line) of one VOC annotation file."""
    parser = expat.ParserCreate()
    stack: list[str] = []
    text: list[str] = []
    result: dict = {"objects": []}

    def start(name: str, attrs: dict) -> None:
        stack.append(name)
        text.clear()
        if stack == ["annotation", "object"]:
            result["objects"].append({"line": parser.CurrentLineNumber})

    def end(name: str) -> None:
        value = "".join(text).strip()
        key = "/".join(stack[1:])
        if key.startswith("object/") and result["objects"]:
            result["objects"][-1][key[len("object/"):]] = value
        elif key in ("filename", "size/width", "size/height"):
            result[key] = value
        stack.pop()
        text.clear()

    parser.StartElementHandler, parser.EndElementHandler = start, end
    parser.CharacterDataHandler = text.append
    try:
        parser.Parse(path.read_bytes(), True)
    except expat.ExpatError as exc:
        raise ValueError(f"{path}:{exc.lineno}: malformed XML ({expat.ErrorString(exc.code)})") from None
    return result


def _voc_box(obj: dict, width: int, height: int) -> tuple[str | None, list[float]]:
    """VOC boxes are 1-based inclusive pixel indices: pixel i covers [i - 1, i], so xyxy = (xmin - 1, ymin - 1, xmax, ymax)."""
    try:
        xmin, ymin, xmax, ymax = (float(obj[f"bndbox/{k}"]) for k in ("xmin", "ymin", "xmax", "ymax"))
    except KeyError:
        return "expected <bndbox> with xmin, ymin, xmax, ymax", []
    except ValueError:
        return "expected numbers in <bndbox>", []
    if xmax < xmin or ymax < ymin:
        return f"box has a non-positive size (xmin {xmin:g} > xmax {xmax:g} or ymin {ymin:g} > ymax {ymax:g})", []
    if xmin < 0 or ymin < 0 or xmax > width + 1 or ymax > height + 1:
        return f"box ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) lies outside the {width} x {height} image", []
    return None, [max(xmin - 1, 0.0), max(ymin - 1, 0.0), min(xmax, width), min(ymax, height)]


def _voc_classes(annotation_dir: Path) -> list[str]:
    """VOC's 20 classes when every object name is one of them, else the sorted names found in all files."""
    names = set()
    for path in annotation_dir.glob("*.xml"):
        with contextlib.suppress(ValueError):
            names.update(o.get("name", "") for o in _parse_voc_xml(path)["objects"])
    names.discard("")
    return list(VOC_CLASSES) if names <= set(VOC_CLASSES) else sorted(names)


def read_voc(root: str | os.PathLike, split: str = "train", *, classes: Sequence[str] | None = None,
             skip_bad_labels: bool = False, verify_images: bool = False) -> DetectionDataset:
    """A Pascal VOC folder (e.g. ``VOCdevkit/VOC2007``); ``difficult`` objects are kept, flagged in
    ``target['difficult']``. Classes default to VOC's 20 (or the names found, when others appear)."""
    root = Path(root)
    list_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not list_file.is_file() or not (root / "Annotations").is_dir():
        found = sorted(p.name for p in root.iterdir()) if root.is_dir() else "no such folder"
        raise FileNotFoundError(f"expected a VOC folder with Annotations/, JPEGImages/ and ImageSets/Main/{split}.txt "
                                f"in {root}, found {found}")
    classes = list(classes) if classes is not None else _voc_classes(root / "Annotations")
    label_of = {name: i for i, name in enumerate(classes)}
    ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
    problems = LabelProblems(f"{root} ({split})", skip_bad_labels)
    paths, targets, sizes = [], [], []
    for index, image_id in enumerate(ids):
        xml = root / "Annotations" / f"{image_id}.xml"
        parsed = _parse_voc_xml(xml) if xml.is_file() else {"objects": []}
        problems.missing += not xml.is_file()
        image_path = root / "JPEGImages" / parsed.get("filename", f"{image_id}.jpg")
        if not image_path.is_file():
            image_path = root / "JPEGImages" / f"{image_id}.jpg"
        height, width = probe_image(image_path, verify_images)
        boxes, labels, difficult = [], [], []
        for obj in parsed["objects"]:
            error, box = _voc_box(obj, width, height)
            if error is None and obj.get("name") not in label_of:
                error = f"class '{obj.get('name')}' is not one of the {len(classes)} known classes"
            if error:
                problems.bad.append(f"{xml}:{obj['line']}: {error}")
                continue
            boxes.append(box)
            labels.append(label_of[obj["name"]])
            difficult.append(obj.get("difficult", "0") == "1")
        paths.append(image_path)
        targets.append(make_target(boxes, labels, index, difficult=torch.tensor(difficult, dtype=torch.bool)))
        sizes.append((height, width))
    dataset = DetectionDataset(paths, targets, sizes, classes, name=f"voc:{root}")
    problems.report(dataset, len(paths), "annotation file")
    return dataset

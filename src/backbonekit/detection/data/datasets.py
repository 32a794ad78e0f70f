"""Detection datasets: YOLO (Darknet/ultralytics), COCO and Pascal VOC folders, and the built-in ``photodigits``.

Every dataset follows torchvision's detection convention: ``dataset[i]`` is ``(image, target)``
with ``image`` a **uint8** tensor (3, H, W) (uint8 because the batched augmentation in
:mod:`.augment` works on uint8 batches and a quarter of float32's memory; divide by 255 for the
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

import contextlib
import io
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence
from xml.parsers import expat

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..._text import few, first_line
from ...images import IMAGE_EXTENSIONS, image_files, image_size, read_rgb

FORMATS = ("photodigits", "yolo:PATH", "coco:ANNOTATIONS.json[,VAL.json]", "voc:PATH")
SPLITS = ("train", "val")
COCO_VAL_FRACTION = 0.2  # one COCO file given: this fraction of its images (fixed seed) is the val split
COCO_SPLIT_SEED = 0
EDGE_TOLERANCE = 0.01  # YOLO rows: a box edge may pass the image edge by 1% of its size (then it is clipped)
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")
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
        image = read_image(self.paths[index], tuple(self.sizes[index].tolist()))
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


def read_image(path: Path, expected: tuple[int, int] | None = None) -> Tensor:
    """Decode an image file to uint8 RGB (3, H, W) with :func:`backbonekit.images.read_rgb` (EXIF rotation
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
class _Problems:
    """Bad label rows and missing label files found while indexing one split."""

    what: str
    skip_bad: bool
    bad: list[str] = field(default_factory=list)
    missing: int = 0

    def report(self, dataset: DetectionDataset, total: int, missing_note: str) -> None:
        if self.bad and not self.skip_bad:
            more = f" (and {len(self.bad) - 1} more bad rows)" if len(self.bad) > 1 else ""
            raise ValueError(f"{self.bad[0]}{more}; fix the labels or pass skip_bad_labels=True "
                             "(--skip-bad-labels) to drop bad rows")
        dataset.skipped_labels, dataset.missing_labels = len(self.bad), self.missing
        if self.bad:
            warnings.warn(f"{self.what}: skipped {len(self.bad)} bad label rows, the first: {self.bad[0]}",
                          stacklevel=3)
        if self.missing:
            warnings.warn(f"{self.what}: {self.missing} of {total} images have no {missing_note}; "
                          "they are treated as images with no objects", stacklevel=3)


# ---------------------------------------------------------------------------------------------
# YOLO (Darknet / ultralytics): data.yaml naming the splits, or images/{split}/ and labels/{split}/
# ---------------------------------------------------------------------------------------------

YOLO_YAML_NAMES = ("data.yaml", "data.yml", "dataset.yaml")
YOLO_SPLIT_KEYS = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}


@dataclass
class YoloLayout:
    """Where a YOLO dataset's images are: the splits its ``data.yaml`` names, else ``root/images/{split}/``."""

    root: Path
    yaml: Path | None
    names: list[str] | None
    splits: dict[str, list[Path]] | None  # split -> the folders, list files and images it names; None: no keys

    def sources(self, split: str) -> list[Path]:
        if self.splits is None:
            return [self.root / "images" / split]
        if split not in self.splits:
            raise ValueError(f"{self.yaml}: expected a '{split}:' entry naming the {split} images, found "
                             f"entries for {few(sorted(self.splits))}")
        return self.splits[split]

    def images(self, split: str) -> list[Path]:
        """Every image file of ``split``, sorted, each once."""
        sources = self.sources(split)
        if self.splits is None and not sources[0].is_dir():
            found = sorted(p.name for p in self.root.iterdir()) if self.root.is_dir() else "no such folder"
            raise FileNotFoundError(f"expected a YOLO dataset in {self.root}: a data.yaml naming its splits, or "
                                    f"images/{split}/ and labels/{split}/; found {found}")
        files = sorted({image for source in sources for image in _split_images(source, self.yaml, split)})
        if not files:
            raise FileNotFoundError(f"expected images ({', '.join(IMAGE_EXTENSIONS)}) in "
                                    f"{', '.join(map(str, sources))}, found none")
        return files


def yolo_layout(path: str | os.PathLike) -> YoloLayout:
    """Read a YOLO dataset's description as the YOLO tools do: ``path`` is the dataset folder (its
    ``data.yaml``, if any, is read) or the yaml file itself.

    In the yaml, ``path`` is the dataset root (absolute, or relative to the yaml's folder; default the
    yaml's folder); ``train``/``val``/``test`` are each a folder of images, a list of them, or a ``.txt``
    file listing image paths, relative to the root; ``names`` is a list or ``{index: name}``, ``nc`` the
    class count. Without a yaml (or with one naming no split), images are in ``images/{split}/``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"expected a YOLO dataset folder or its data.yaml, found no such file or folder {path}")
    yaml_path = path if path.is_file() else next((path / n for n in YOLO_YAML_NAMES if (path / n).is_file()), None)
    if yaml_path is None:
        return YoloLayout(path, None, _darknet_names(path), None)
    if yaml_path.suffix.lower() not in (".yaml", ".yml"):
        raise ValueError(f"expected a YOLO dataset folder or its data.yaml, found the file {yaml_path}")
    data = _read_yaml(yaml_path)
    root = yaml_path.parent / str(data["path"]) if data.get("path") else yaml_path.parent
    splits = {split: [_resolve_entry(root, entry) for entry in entries]
              for split, entries in _split_entries(data, yaml_path).items()}
    return YoloLayout(_normal(root), yaml_path, _names_from_yaml(data, yaml_path), splits or None)


def _normal(path: Path) -> Path:
    """``path`` absolute with ``..`` folded (not resolving links: the label path follows the name given)."""
    return Path(os.path.normpath(path.absolute()))


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot parse {path}: {first_line(exc)}") from None
    if not isinstance(data, dict) or ("names" not in data and "nc" not in data):
        raise ValueError(f"{path}: expected a mapping with 'names' (a list, or a dict from class index to name) "
                         f"or 'nc', found {type(data).__name__} with keys "
                         f"{few(sorted(map(str, data)) if isinstance(data, dict) else [])}")
    return data


def _split_entries(data: dict, path: Path) -> dict[str, list[str]]:
    """split -> the yaml's entries for it (a string or a list of strings), for the splits it names."""
    entries = {}
    for split, keys in YOLO_SPLIT_KEYS.items():
        value = next((data[k] for k in keys if data.get(k)), None)
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, str) and v for v in values):
            raise ValueError(f"{path}: '{split}' must be a folder, a .txt list of images or a list of them, "
                             f"found {value!r}")
        entries[split] = values
    return entries


def _resolve_entry(root: Path, entry: str) -> Path:
    """A split entry relative to the dataset root; an entry ``../x`` that is not there is read as ``x``
    beside the yaml, as ultralytics does (Roboflow's exports say ``train: ../train/images`` with the yaml
    next to ``train/``)."""
    resolved = _normal(root / entry)
    if not resolved.exists() and entry.startswith("../") and (root / entry[3:]).exists():
        return _normal(root / entry[3:])
    return resolved


def _split_images(source: Path, yaml_path: Path | None, split: str) -> list[Path]:
    """The images a split entry names: a folder's (recursively), one image, or a list file's."""
    if source.is_dir():
        return [_normal(p) for p in image_files(source)]
    if source.is_file():
        return [source] if source.suffix.lower() in IMAGE_EXTENSIONS else _listed_images(source)
    where = f"{yaml_path}: '{split}'" if yaml_path else split
    raise FileNotFoundError(f"{where} names {source}, expected a folder of images or a .txt list of images, "
                            "found nothing there")


def _listed_images(path: Path) -> list[Path]:
    """The image paths a Darknet/ultralytics list file names, one per line: ``./x`` is relative to the
    list's folder, other relative paths to the current folder (as ultralytics reads them); lines that
    are not images are skipped, as ultralytics does."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise OSError(f"cannot read the image list {path}: {first_line(exc)}") from None
    images = []
    for lineno, line in enumerate(lines, 1):
        entry = line.strip()
        if not entry or Path(entry).suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        image = path.parent / entry[2:] if entry.startswith("./") else Path(entry)
        if not image.is_file():
            raise FileNotFoundError(f"{path}:{lineno}: expected an image file, found nothing at {image}")
        images.append(_normal(image))
    return images


def yolo_label_path(image: Path) -> Path:
    """The label file of an image: the last ``images`` folder in its path becomes ``labels``, the suffix ``.txt``."""
    parts = image.parts
    folders = [i for i, part in enumerate(parts[:-1]) if part == "images"]
    if folders:
        parts = parts[:folders[-1]] + ("labels",) + parts[folders[-1] + 1:]
    return Path(*parts).with_suffix(".txt")


def _darknet_names(root: Path) -> list[str] | None:
    """Class names from a Darknet ``.names`` (or ``classes.txt``) file in ``root``, if there is one."""
    names_files = sorted(root.glob("*.names")) + ([root / "classes.txt"] if (root / "classes.txt").is_file() else [])
    if names_files:
        return [line.strip() for line in names_files[0].read_text().splitlines() if line.strip()]
    return None


def _names_from_yaml(data: dict, path: Path) -> list[str]:
    """``names`` as a list or a {index: name} dict (indices 0..n-1), or ``nc`` numbered classes."""
    names = data.get("names")
    if isinstance(names, dict):
        try:
            names = {int(k): v for k, v in names.items()}
        except (TypeError, ValueError):
            raise ValueError(f"{path}: 'names' keys must be the class indices, found "
                             f"{few([str(k) for k in names])}") from None
        keys = sorted(names)
        if keys != list(range(len(keys))):
            raise ValueError(f"{path}: 'names' keys must be the class indices 0..{len(keys) - 1}, found {few([str(k) for k in keys])}")
        names = [str(names[k]) for k in keys]
    elif isinstance(names, list):
        names = [str(n) for n in names]
    elif names is None:
        names = [str(i) for i in range(_class_count(data, path))]
    else:
        raise ValueError(f"{path}: 'names' must be a list or a dict, found {type(names).__name__}")
    if "nc" in data and _class_count(data, path) != len(names):
        raise ValueError(f"{path}: nc is {data['nc']} but 'names' lists {len(names)} classes")
    return names


def _class_count(data: dict, path: Path) -> int:
    nc = data.get("nc")
    if not isinstance(nc, int) or isinstance(nc, bool) or nc < 1:
        raise ValueError(f"{path}: expected 'nc' to be a positive whole number of classes, found {nc!r}")
    return nc


def _parse_yolo_row(fields: list[str], num_classes: int) -> tuple[str | None, tuple[float, ...]]:
    """(error or None, (class, cx, cy, w, h)) for one label line."""
    if len(fields) != 5:
        return f"expected 5 numbers 'class cx cy w h', found {len(fields)} fields", ()
    try:
        values = tuple(float(v) for v in fields)
    except ValueError:
        return "expected numbers 'class cx cy w h', found text", ()
    cls, cx, cy, w, h = values
    if not all(math.isfinite(v) for v in values):
        return "expected finite numbers", ()
    if cls != int(cls) or not 0 <= cls < num_classes:
        return f"class id {fields[0]} is outside the known classes 0..{num_classes - 1}", ()
    if not all(0.0 <= v <= 1.0 for v in (cx, cy, w, h)):
        return "coordinates must be normalised to [0, 1] (divide pixels by the image size)", ()
    if w <= 0 or h <= 0:
        return "box width and height must be > 0", ()
    if cx - w / 2 < -EDGE_TOLERANCE or cx + w / 2 > 1 + EDGE_TOLERANCE or \
            cy - h / 2 < -EDGE_TOLERANCE or cy + h / 2 > 1 + EDGE_TOLERANCE:
        return "box extends past the image edge (are these 'x1 y1 x2 y2' rather than 'cx cy w h'?)", ()
    return None, values


def _read_yolo_labels(path: Path, num_classes: int, problems: _Problems) -> np.ndarray:
    """Valid rows (K, 5) of one label file; bad rows go to ``problems`` with file and line."""
    rows = []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        problems.bad.append(f"{path}: cannot read the label file ({first_line(exc)})")
        return np.zeros((0, 5))
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        error, values = _parse_yolo_row(line.split(), num_classes)
        if error:
            problems.bad.append(f"{path}:{lineno}: {error}, found '{line.strip()[:80]}'")
        else:
            rows.append(values)
    return np.asarray(rows, dtype=np.float64).reshape(-1, 5)


def _infer_num_classes(label_files: Sequence[Path]) -> int:
    top = -1
    for path in label_files:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            token = line.split(maxsplit=1)[0] if line.strip() else ""
            with contextlib.suppress(ValueError):
                top = max(top, int(float(token)))
    return top + 1


def read_yolo(root: str | os.PathLike, split: str = "train", *, skip_bad_labels: bool = False,
              verify_images: bool = False) -> DetectionDataset:
    """A YOLO dataset (Darknet, ultralytics, Roboflow's export): ``root`` is its folder or its ``data.yaml``
    (read by :func:`yolo_layout`); each image's labels are in the file :func:`yolo_label_path` names
    (``class cx cy w h`` rows, normalised). Without a yaml, images are in ``images/{split}/`` and class names
    come from a Darknet ``.names`` file, else are numbered up to the largest id found (with a warning)."""
    layout = yolo_layout(root)
    paths = layout.images(split)
    labels = [yolo_label_path(p) for p in paths]
    names = layout.names
    if names is None:
        num = _infer_num_classes(labels)
        names = [str(i) for i in range(max(num, 1))]
        warnings.warn(f"{layout.root}: no data.yaml with class names; using {len(names)} numbered classes "
                      "(the largest class id in the label files + 1)", stacklevel=2)
    if split != "train":
        _warn_if_not_held_out(layout, split, paths)
    problems = _Problems(f"{root} ({split})", skip_bad_labels)
    targets, sizes = [], []
    for index, (path, label_path) in enumerate(zip(paths, labels)):
        height, width = probe_image(path, verify_images)
        if label_path.is_file():
            rows = _read_yolo_labels(label_path, len(names), problems)
        else:
            problems.missing += 1
            rows = np.zeros((0, 5))
        scale = np.array([width, height, width, height], dtype=np.float64)
        xyxy = np.concatenate([rows[:, 1:3] - rows[:, 3:5] / 2, rows[:, 1:3] + rows[:, 3:5] / 2], 1)
        xyxy = np.clip(xyxy, 0.0, 1.0) * scale
        targets.append(make_target(xyxy, rows[:, 0], index))
        sizes.append((height, width))
    dataset = DetectionDataset(paths, targets, sizes, names, name=f"yolo:{root}")
    missing = next((str(l) for l in labels if not l.is_file()), "")
    problems.report(dataset, len(paths), f"label file (the image's path with its last images/ folder "
                                         f"read as labels/ and .txt, e.g. {missing})")
    return dataset


def _warn_if_not_held_out(layout: YoloLayout, split: str, paths: Sequence[Path]) -> None:
    """One warning when images of ``split`` are training images too (train and val name the same folder)."""
    try:
        train = set(layout.images("train"))
    except (OSError, ValueError):
        return
    shared = sum(p in train for p in paths)
    if shared:
        warnings.warn(f"{layout.yaml or layout.root}: {shared} of the {len(paths)} {split} images are also training "
                      f"images: the {split} split is not held out, so its mAP measures how well the training "
                      "images are fitted, not how the detector does on new ones", stacklevel=3)


# ---------------------------------------------------------------------------------------------
# COCO instances files (pycocotools)
# ---------------------------------------------------------------------------------------------

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
                problems: _Problems) -> tuple[list, list, list, list]:
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
    problems = _Problems(str(path), skip_bad_labels)
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


def _coco_split(annotations: str, data_dir: str | os.PathLike | None, split: str, **kwargs: Any) -> DetectionDataset:
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


# ---------------------------------------------------------------------------------------------
# Pascal VOC: Annotations/*.xml, JPEGImages/, ImageSets/Main/{split}.txt
# ---------------------------------------------------------------------------------------------

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
    problems = _Problems(f"{root} ({split})", skip_bad_labels)
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


# ---------------------------------------------------------------------------------------------
# One entry point
# ---------------------------------------------------------------------------------------------

def load_detection_dataset(spec: str = "photodigits", data_dir: str | os.PathLike | None = None,
                           split: str = "train", *, skip_bad_labels: bool = False,
                           verify_images: bool = False) -> Dataset:
    """The dataset named by ``spec``: ``photodigits`` (built in, generated in memory), ``yolo:PATH``,
    ``coco:ANNOTATIONS.json`` (images in ``data_dir``; with one file a fixed 80/20 split, with
    ``coco:TRAIN.json,VAL.json`` one file each; ``split="all"`` for a whole file) or ``voc:PATH``.

    Everything is checked here, before any training step: see this module's docstring.
    """
    kind, _, path = spec.partition(":")
    if split not in SPLITS + ("test", "all"):
        raise ValueError(f"expected split 'train', 'val' or 'test', found '{split}'")
    options = {"skip_bad_labels": skip_bad_labels, "verify_images": verify_images}
    if kind == "photodigits" and not path:
        from .photodigits import photodigits

        if split not in SPLITS:
            raise ValueError(f"photodigits has 'train' and 'val' splits, found '{split}'")
        return photodigits(split)
    if not path:
        raise ValueError(f"expected a dataset as one of {', '.join(FORMATS)}, found '{spec}'")
    if kind == "coco":
        if split == "test":
            raise ValueError("a COCO dataset has 'train' and 'val' (coco:TRAIN.json,VAL.json) or 'all', found "
                             "split 'test'; give the test file as the val one (coco:TRAIN.json,TEST.json)")
        return _coco_split(path, data_dir, split, **options)
    if split == "all":
        raise ValueError(f"split 'all' is for a single COCO file, found '{spec}'")
    if kind == "yolo":
        return read_yolo(path, split, **options)
    if kind == "voc":
        return read_voc(path, split, **options)
    raise ValueError(f"expected a dataset as one of {', '.join(FORMATS)}, found '{spec}'")

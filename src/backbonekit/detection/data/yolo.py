"""YOLO datasets (Darknet, ultralytics, Roboflow's exports): a ``data.yaml`` naming the splits, or
``images/{split}/`` and ``labels/{split}/``; one ``class cx cy w h`` row (normalised) per object."""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..._text import few, first_line
from ...images import IMAGE_EXTENSIONS, image_files
from .datasets import DetectionDataset, LabelProblems, make_target, probe_image

EDGE_TOLERANCE = 0.01  # YOLO rows: a box edge may pass the image edge by 1% of its size (then it is clipped)
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


def _read_yolo_labels(path: Path, num_classes: int, problems: LabelProblems) -> np.ndarray:
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
    problems = LabelProblems(f"{root} ({split})", skip_bad_labels)
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

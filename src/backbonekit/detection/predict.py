"""Running a detector on image files: annotated copies with boxes and class names, and one
``detections.json`` in COCO's results format (``image_id``, ``category_id``, ``bbox`` as x, y, w, h,
``score``), the format pycocotools' ``loadRes`` and every COCO evaluation server read.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from .._text import first_line
from ..checkpoint import atomic_open
from ..images import read_rgb
from .config import check_postprocess


def coco_categories() -> list[tuple[int, str]]:
    """COCO's 80 detection classes in label order: (category_id in COCO's files, name)."""
    text = resources.files(__package__).joinpath("coco80.tsv").read_text(encoding="utf-8")
    rows = [line.split("\t") for line in text.splitlines() if line and not line.startswith("#")]
    return [(int(i), name) for i, name in rows]


def class_names(num_classes: int, names: Sequence[str] | str | os.PathLike | None = None) -> list[str]:
    """Names for ``num_classes`` labels: ``names`` (a list, or a file with one name per line, Darknet's
    ``.names``), else COCO's when there are 80 classes, else ``class 0``, ``class 1``, ..."""
    if isinstance(names, (str, os.PathLike)):
        path = Path(names)
        try:
            names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise OSError(f"cannot read class names from {path}: {first_line(exc)}") from None
    if names is not None:
        names = list(names)
        if len(names) != num_classes:
            raise ValueError(f"expected {num_classes} class names (one per class of the model), found {len(names)}")
        return names
    if num_classes == 80:
        return [name for _, name in coco_categories()]
    return [f"class {i}" for i in range(num_classes)]


def read_image(path: str | os.PathLike) -> Tensor:
    """An image file as a float (3, H, W) RGB tensor in [0, 1], read as training reads it
    (:func:`backbonekit.images.read_rgb`: EXIF orientation, every Pillow mode); one OSError line if it
    is not an image."""
    return torch.from_numpy(read_rgb(path).copy()).permute(2, 0, 1).float() / 255


def image_id_for(path: Path, position: int) -> int:
    """COCO's image id: the file name's number (``000000397133.jpg`` -> 397133), else its position."""
    return int(path.stem) if path.stem.isdigit() else position


def to_coco_results(detections: dict[str, Tensor], image_id: int, category_ids: Sequence[int] | None = None
                    ) -> list[dict[str, Any]]:
    """One image's detections as COCO result rows; labels map through ``category_ids`` when given."""
    rows = []
    for box, score, label in zip(detections["boxes"].tolist(), detections["scores"].tolist(),
                                 detections["labels"].tolist()):
        x1, y1, x2, y2 = box
        category = category_ids[label] if category_ids is not None else label
        rows.append({"image_id": image_id, "category_id": int(category),
                     "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                     "score": round(score, 5)})
    return rows


def draw_detections(image: Tensor, detections: dict[str, Tensor], names: Sequence[str]) -> Tensor:
    """The image as uint8 (3, H, W) with each box and ``name score`` drawn (torchvision's drawing)."""
    from torchvision.utils import draw_bounding_boxes

    labels = [f"{names[c]} {s:.2f}" for c, s in zip(detections["labels"].tolist(), detections["scores"].tolist())]
    canvas = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    return draw_bounding_boxes(canvas, detections["boxes"], labels=labels, colors="red", width=2)


def predict_files(model: torch.nn.Module, images: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                  names: Sequence[str] | str | os.PathLike | None = None, score_thresh: float | None = None,
                  nms_thresh: float | None = None, detections_per_img: int | None = None,
                  batch_size: int = 8) -> Path:
    """Detect on image files; write ``out_dir/<name>.png`` (boxes and names drawn) and
    ``out_dir/detections.json`` (COCO results; COCO category ids when the model has 80 classes,
    else the 0-based label). Every image is read first, so a bad file stops before any work.
    Returns the path of ``detections.json``."""
    from PIL import Image

    check_postprocess(score_thresh, nms_thresh, detections_per_img)
    paths = [Path(p) for p in images]
    if not paths:
        raise ValueError("expected at least one image file, found none")
    pictures = [read_image(p) for p in paths]
    labels = class_names(model.num_classes, names if names is not None else getattr(model, "class_names", None))
    category_ids = [i for i, _ in coco_categories()] if model.num_classes == 80 and names is None else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    results: list[dict[str, Any]] = []
    for start in range(0, len(pictures), batch_size):
        chunk = pictures[start:start + batch_size]
        found = model.detect(chunk, score_thresh=score_thresh, nms_thresh=nms_thresh,
                             detections_per_img=detections_per_img)
        for k, (picture, detections) in enumerate(zip(chunk, found)):
            path = paths[start + k]
            results += to_coco_results(detections, image_id_for(path, start + k), category_ids)
            drawn = draw_detections(picture, detections, labels).permute(1, 2, 0).numpy()
            with atomic_open(out / f"{path.stem}.png") as f:
                Image.fromarray(drawn).save(f, format="PNG")
    target = out / "detections.json"
    with atomic_open(target) as f:
        f.write(json.dumps(results).encode("utf-8"))
    return target

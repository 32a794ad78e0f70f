"""Running a detector on image files: annotated copies with boxes and class names, and one
``detections.json`` in COCO's results format (``image_id``, ``category_id``, ``bbox`` as x, y, w, h,
``score``), the format pycocotools' ``loadRes`` and every COCO evaluation server read.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from .._text import few, first_line
from ..checkpoint import atomic_open
from ..images import IMAGE_EXTENSIONS, image_files, image_size
from .training.config import check_postprocess
from .data.datasets import read_image_uint8


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
    """An image file as the model's float (3, H, W) RGB input in [0, 1]: the datasets' uint8 decoding
    (:func:`.data.datasets.read_image_uint8`: EXIF orientation, every Pillow mode) / 255; one OSError line if it
    is not an image."""
    return read_image_uint8(Path(path)).float() / 255


def image_inputs(images: Sequence[str | os.PathLike], out_dir: str | os.PathLike | None = None) -> list[Path]:
    """The image files named: files as given, folders replaced by the image files under them (any
    extension case) except those in ``out_dir`` (predict's annotated copies, when it lies inside a folder
    given), each file once, in order."""
    outputs = os.path.abspath(out_dir) if out_dir is not None else None
    paths: list[Path] = []
    for item in map(Path, images):
        if item.is_dir():
            found = [p for p in image_files(item)
                     if outputs is None or os.path.commonpath([outputs, os.path.abspath(p)]) != outputs]
            if not found:
                raise FileNotFoundError(f"expected images ({', '.join(IMAGE_EXTENSIONS)}) in folder {item}, "
                                        f"found none")
            paths += found
        else:
            paths.append(item)
    seen: set[str] = set()
    unique = []
    for path in paths:  # a file named twice is predicted once
        if os.path.abspath(path) not in seen:
            seen.add(os.path.abspath(path))
            unique.append(path)
    return unique


def image_ids(paths: Sequence[Path]) -> list[int]:
    """COCO image ids: the file names' numbers when every name is a distinct number (``000000397133.jpg`` ->
    397133), else the positions 0, 1, ... (so ids never repeat, whatever the folders)."""
    numbers = [int(p.stem) if p.stem.isdecimal() else None for p in paths]  # isdigit() takes '²', int() not
    if None not in numbers and len(set(numbers)) == len(numbers):
        return numbers  # type: ignore[return-value]
    return list(range(len(paths)))


def annotated_names(paths: Sequence[Path]) -> list[Path]:
    """Where each input's annotated copy goes, relative to the output folder: its path below the inputs'
    common folder with the extension ``.png`` (``a/x.jpg``, ``b/x.jpg`` -> ``a/x.png``, ``b/x.png``); two
    inputs that would still share a name (``x.jpg`` and ``x.png`` side by side) keep their extension
    (``x.jpg.png``, ``x.png.png``). One output per input."""
    absolute = [Path(os.path.abspath(p)) for p in paths]
    root = Path(os.path.commonpath([p.parent for p in absolute]))
    relative = [p.relative_to(root) for p in absolute]
    plain = [r.with_suffix(".png") for r in relative]
    taken = Counter(plain)
    return [r.with_name(r.name + ".png") if taken[n] > 1 else n for r, n in zip(relative, plain)]


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


def result_category_ids(model: torch.nn.Module, names: object = None) -> list[int] | None:
    """The category id of each label in written results: the ids the model's training file gave
    (``model.category_ids``, a COCO file's), else COCO's for an 80-class model given no ``names`` whose
    class names are COCO's or unknown (Darknet's ``yolov3.weights``), else None (the label is the id, as
    for a model trained on 80 classes of its own: ``detect evaluate`` writes the same)."""
    recorded = getattr(model, "category_ids", None)
    if recorded is not None:
        return list(recorded)
    coco = coco_categories()
    own = getattr(model, "class_names", None)
    if model.num_classes == 80 and names is None and (own is None or list(own) == [name for _, name in coco]):
        return [i for i, _ in coco]
    return None


def draw_detections(image: Tensor, detections: dict[str, Tensor], names: Sequence[str]) -> Tensor:
    """The image as uint8 (3, H, W) with each box and ``name score`` drawn (torchvision's drawing)."""
    from torchvision.utils import draw_bounding_boxes

    labels = [f"{names[c]} {s:.2f}" for c, s in zip(detections["labels"].tolist(), detections["scores"].tolist())]
    canvas = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    return draw_bounding_boxes(canvas, detections["boxes"], labels=labels, colors="red", width=2)


def predict_files(model: torch.nn.Module, images: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                  names: Sequence[str] | str | os.PathLike | None = None, score_thresh: float | None = None,
                  nms_thresh: float | None = None, detections_per_img: int | None = None,
                  batch_size: int = 8, force: bool = False) -> Path:
    """Detect on image files (folders: the images under them, less ``out_dir``'s); write one annotated copy per input
    (:func:`annotated_names`: boxes and names drawn), ``detections.json`` (COCO results; category ids by
    :func:`result_category_ids`, image ids from :func:`image_ids`) and
    ``images.json`` (each id's file, COCO's ``images`` entries). Every header is read first, so a bad
    file stops before any work. Never writes over an input; a file in ``out_dir`` that an earlier
    ``predict_files`` did not write (or that changed since) is replaced only with ``force``.
    Returns the path of ``detections.json``."""
    from PIL import Image

    check_postprocess(score_thresh, nms_thresh, detections_per_img)
    paths = image_inputs(images, out_dir)
    if not paths:
        raise ValueError("expected at least one image file, found none")
    sizes = [image_size(p) for p in paths]
    ids, drawn_names = image_ids(paths), annotated_names(paths)
    out = Path(out_dir)
    written = claim_outputs(out, [*drawn_names, Path("detections.json"), Path("images.json")], paths, force)
    recorded = dict(written)
    labels = class_names(model.num_classes, names if names is not None else getattr(model, "class_names", None))
    category_ids = result_category_ids(model, names)
    model.eval()
    results: list[dict[str, Any]] = []
    try:
        for start in range(0, len(paths), batch_size):
            chunk = [read_image(p) for p in paths[start:start + batch_size]]
            found = model.detect(chunk, score_thresh=score_thresh, nms_thresh=nms_thresh,
                                 detections_per_img=detections_per_img)
            for k, (picture, detections) in enumerate(zip(chunk, found)):
                results += to_coco_results(detections, ids[start + k], category_ids)
                png = io.BytesIO()
                Image.fromarray(draw_detections(picture, detections, labels).permute(1, 2, 0).numpy()).save(png, "PNG")
                write_output(out, drawn_names[start + k], png.getvalue(), written)
        listing = [{"id": i, "file_name": str(p), "height": h, "width": w, "annotated": name.as_posix()}
                   for i, p, (h, w), name in zip(ids, paths, sizes, drawn_names)]
        write_output(out, Path("images.json"), json.dumps(listing, indent=1).encode("utf-8"), written)
        write_output(out, Path("detections.json"), json.dumps(results).encode("utf-8"), written)
    finally:  # what was written, even when a later image failed, so that a rerun may replace it
        if written != recorded:
            with atomic_open(out / WRITTEN_RECORD) as f:
                f.write(json.dumps(written, indent=1, sort_keys=True).encode("utf-8"))
    return out / "detections.json"


# -- the output folder: never an input, never a file predict did not write (without force) ----------------
WRITTEN_RECORD = ".backbonekit-predict.json"  # in the output folder: each file predict wrote -> its sha256


def claim_outputs(out: Path, names: Sequence[Path], inputs: Sequence[Path], force: bool) -> dict[str, str]:
    """Check that ``out`` can take ``names``; the record of what predict wrote there before."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: expected a folder, found a file")
    written = _read_record(out / WRITTEN_RECORD)
    input_files = {_file_key(p) for p in inputs}
    foreign = []
    for name in names:
        target = out / name
        if target.is_dir():
            raise ValueError(f"--out {out}: expected room for the file {name.as_posix()}, found a folder there")
        if not target.exists():
            continue
        if _file_key(target) in input_files:
            raise ValueError(f"--out {out}: {name.as_posix()} there is an input image; its annotated copy would "
                             f"replace it: choose another --out")
        if written.get(name.as_posix()) != _digest(target.read_bytes()):
            foreign.append(name.as_posix())
    if foreign and not force:
        raise ValueError(f"--out {out} already holds {len(foreign)} file(s) that detect predict did not write "
                         f"there ({few(foreign)}): choose another --out, or pass --force to replace them")
    return written


def write_output(out: Path, name: Path, data: bytes, written: dict[str, str]) -> None:
    """Write ``out/name`` atomically and record it as predict's."""
    with atomic_open(out / name) as f:
        f.write(data)
    written[name.as_posix()] = _digest(data)


def _read_record(path: Path) -> dict[str, str]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, or damaged: nothing there counts as predict's
        return {}
    return {str(k): str(v) for k, v in record.items()} if isinstance(record, dict) else {}


def _file_key(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_dev, stat.st_ino


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

"""Run an exported classifier or detector with ONNX Runtime, preparing images from the file's metadata.

Needs only onnxruntime, numpy and Pillow (the ``deploy`` extra); torch is never imported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np

from .._text import first_line
from ..images import LetterboxPlace, letterbox_fit
from .metadata import DETECTION_OUTPUTS, IMAGE_REGIONS, from_props

ImageInput = Union[str, os.PathLike, "Image.Image", np.ndarray]  # noqa: F821 (PIL.Image, imported lazily)


# -- images ---------------------------------------------------------------------------------------
def read_rgb(image: ImageInput, index: int = 0):
    """A Pillow RGB image from a file path, a Pillow image or an (H, W, 3) uint8 array; one line otherwise.

    Files and Pillow images go through :mod:`backbonekit.images` (EXIF orientation, 16-bit, alpha,
    CMYK, the decompression-bomb limit): the reader training and evaluation use."""
    from PIL import Image

    from ..images import open_rgb, to_rgb

    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image {index}: expected an (H, W, 3) uint8 RGB array, found {image.dtype} "
                             f"array of shape {image.shape}")
        return Image.fromarray(image, "RGB")
    if not isinstance(image, (str, os.PathLike)):
        raise ValueError(f"image {index}: expected a file path, a PIL image or an (H, W, 3) uint8 array, "
                         f"found {type(image).__name__}")
    return open_rgb(image)


def classifier_input(image: ImageInput, meta: dict[str, Any], index: int = 0) -> np.ndarray:
    """float32 (C, S, S): square Pillow bilinear resize, then ``(pixel / 255 - mean) / std``."""
    from PIL import Image

    size = meta["image_size"]
    rgb = read_rgb(image, index)
    if meta.get("in_chans", 3) == 1:
        rgb = rgb.convert("L")
    pixels = np.asarray(rgb.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    pixels = pixels.reshape(size, size, -1).transpose(2, 0, 1) / 255
    mean = np.asarray(meta["mean"], np.float32)[:, None, None]
    std = np.asarray(meta["std"], np.float32)[:, None, None]
    return (pixels - mean) / std


def resize_bilinear(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """(C, H, W) float -> (C, height, width): bilinear, half-pixel centres, no antialiasing
    (``F.interpolate(mode="bilinear", align_corners=False)``, which the detector's letterbox uses)."""

    def taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0)
        low = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        return low, np.minimum(low + 1, n_in - 1), (src - low).astype(np.float32)

    y0, y1, wy = taps(x.shape[1], height)
    x0, x1, wx = taps(x.shape[2], width)
    rows = x[:, y0] * (1 - wy)[:, None] + x[:, y1] * wy[:, None]
    return rows[:, :, x0] * (1 - wx) + rows[:, :, x1] * wx


@dataclass(frozen=True)
class LetterboxBox(LetterboxPlace):
    """Where an image of ``height`` x ``width`` went in the letterboxed input (Darknet's geometry)."""

    @classmethod
    def fit(cls, height: int, width: int, size: int) -> "LetterboxBox":
        """Scale to fit ``size`` keeping the aspect ratio, centred."""
        return cls.centred(height, width, *letterbox_fit(height, width, size, size), size, size)

    def region(self) -> np.ndarray:
        """Where the image lies in the input: float32 ``x1, y1, x2, y2`` in input pixels."""
        return np.array([self.left, self.top, self.left + self.new_w, self.top + self.new_h], np.float32)

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """xyxy boxes in input pixels -> the original image's pixels, clipped to it."""
        offset = np.array([self.left, self.top, self.left, self.top], np.float32)
        scale = np.array([self.width / self.new_w, self.height / self.new_h] * 2, np.float32)
        out = (boxes - offset) * scale
        return np.clip(out, 0, np.array([self.width, self.height] * 2, np.float32))


def letterbox_input(image: ImageInput, meta: dict[str, Any], index: int = 0) -> tuple[np.ndarray, LetterboxBox]:
    """float32 (3, S, S) in [0, 1] with the image letterboxed into it, and where it went."""
    size = meta["input_size"]
    pixels = np.asarray(read_rgb(image, index), dtype=np.float32).transpose(2, 0, 1) / 255
    box = LetterboxBox.fit(pixels.shape[1], pixels.shape[2], size)
    canvas = np.full((3, size, size), meta["letterbox_fill"], np.float32)
    canvas[:, box.top:box.top + box.new_h, box.left:box.left + box.new_w] = resize_bilinear(pixels, box.new_h, box.new_w)
    return canvas, box


# -- sessions -------------------------------------------------------------------------------------
def open_session(path: str | os.PathLike, threads: int | None = None):
    """An ONNX Runtime CPU session and the file's metadata; one line for a missing or unreadable file."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model not found: expected an ONNX file at {path}")
    options = ort.SessionOptions()
    # errors only: a detector's optional input (an initializer listed as a graph input, ONNX's way of giving
    # a default) draws a warning at every load that it cannot be constant-folded, which is the point
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for a bad file
        reason = first_line(exc, 200, lines=None)
        raise ValueError(f"cannot load {path}: expected an ONNX model ONNX Runtime can run ({reason})") from None
    return session, from_props(session.get_modelmeta().custom_metadata_map, str(path))


class _Model:
    def __init__(self, path: str | os.PathLike, *, threads: int | None = None, _opened: tuple | None = None) -> None:
        self.path = Path(path)
        self.session, self.meta = _opened or open_session(path, threads)
        task = "classification" if isinstance(self, Classifier) else "detection"
        if self.meta["task"] != task:
            raise ValueError(f"{path} holds a {self.meta['task']} model, found it opened as {type(self).__name__} "
                             f"(use backbonekit.deploy.load, which picks the class)")
        self.classes: list[str] = list(self.meta["classes"])
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None

    def _run(self, batch: np.ndarray, outputs: Sequence[str] | None = None,
             per_image: dict[str, np.ndarray] | None = None) -> list[list[np.ndarray]]:
        """Outputs for ``batch`` (and ``per_image`` inputs, one row per image), run in chunks of the file's
        batch size when it has a fixed one."""
        step = self.fixed_batch or len(batch)
        results = []
        for start in range(0, len(batch), step):
            feed = {name: _padded(array[start:start + step], step)
                    for name, array in {self.input_name: batch, **(per_image or {})}.items()}
            results.append(self.session.run(outputs, feed))
        return results


def _padded(chunk: np.ndarray, step: int) -> np.ndarray:
    """``chunk`` with its last row repeated up to ``step`` rows: a file exported at a fixed batch size
    takes exactly that many images."""
    pad = step - len(chunk)
    if pad:
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
    return np.ascontiguousarray(chunk)


class Classifier(_Model):
    """An exported image classifier: ``predict(images)`` gives (class name, probability) pairs."""

    def preprocess(self, images: Sequence[ImageInput]) -> np.ndarray:
        """float32 (N, C, S, S), prepared as evaluation prepared the test images."""
        return np.stack([classifier_input(image, self.meta, i) for i, image in enumerate(_as_list(images))])

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """The model's outputs (N, classes) for an already prepared batch."""
        return np.concatenate([out[0] for out in self._run(batch)])[: len(batch)]

    def probabilities(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Softmax probabilities (N, classes)."""
        logits = self.logits(self.preprocess(images)).astype(np.float64)
        exp = np.exp(logits - logits.max(1, keepdims=True))
        return exp / exp.sum(1, keepdims=True)

    def predict(self, images: Sequence[ImageInput], topk: int = 5) -> list[list[tuple[str, float]]]:
        """The ``topk`` most likely (class name, probability) for each image, most likely first."""
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise ValueError(f"topk must be an integer >= 1, found {topk!r}")
        probs = self.probabilities(images)
        order = np.argsort(-probs, axis=1, kind="stable")[:, :topk]
        return [[(self.classes[j], float(p[j])) for j in row] for p, row in zip(probs, order)]


class Detector(_Model):
    """An exported detector with NonMaxSuppression in the graph: ``detect(images)`` gives boxes per image."""

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None, _opened: tuple | None = None) -> None:
        super().__init__(path, threads=threads, _opened=_opened)
        names = [o.name for o in self.session.get_outputs()]
        if not set(DETECTION_OUTPUTS) <= set(names):
            raise ValueError(f"{self.path}: expected a detector exported with NMS (outputs "
                             f"{', '.join(DETECTION_OUTPUTS)}), found outputs {', '.join(names)}")
        # files exported before the graph took each image's region drop its padding's boxes here only
        self.takes_regions = IMAGE_REGIONS in {i.name for i in self.session.get_overridable_initializers()} | \
            {i.name for i in self.session.get_inputs()}

    def detect(self, images: Sequence[ImageInput], max_detections: int | None = None) -> list[dict[str, Any]]:
        """One dict per image: ``boxes`` (K, 4) xyxy in the image's own pixels, ``scores``, ``labels``,
        ``names``, best score first; at most ``max_detections`` (default: the file's ``detections_per_img``).
        Boxes with no area inside the image (in the letterbox padding) are never returned."""
        if max_detections is None:
            max_detections = self.meta.get("detections_per_img")
        elif isinstance(max_detections, bool) or not isinstance(max_detections, int) or max_detections < 1:
            raise ValueError(f"max_detections must be an integer >= 1, found {max_detections!r}")
        prepared = [letterbox_input(image, self.meta, i) for i, image in enumerate(_as_list(images))]
        batch = np.stack([x for x, _ in prepared])
        regions = {IMAGE_REGIONS: np.stack([box.region() for _, box in prepared])} if self.takes_regions else None
        per_image: list[list[tuple[np.ndarray, float, int]]] = [[] for _ in prepared]
        step = self.fixed_batch or len(batch)
        for chunk, (selected, boxes, scores, labels) in enumerate(self._run(batch, list(DETECTION_OUTPUTS), regions)):
            for (image, _, _), box, score, label in zip(selected, boxes, scores, labels):
                index = chunk * step + int(image)
                if index < len(prepared):  # not a padding copy
                    per_image[index].append((box, float(score), int(label)))
        return [self._result(found, box, max_detections) for found, (_, box) in zip(per_image, prepared)]

    def _result(self, found: list, box: LetterboxBox, max_detections: int | None) -> dict[str, Any]:
        found = sorted(found, key=lambda item: -item[1])
        boxes = box.to_original(np.array([b for b, _, _ in found], np.float32).reshape(-1, 4))
        kept = np.flatnonzero((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))[:max_detections]
        labels = np.array([found[i][2] for i in kept], np.int64)
        return {"boxes": boxes[kept], "scores": np.array([found[i][1] for i in kept], np.float32),
                "labels": labels, "names": [self.classes[i] for i in labels]}


def load(path: str | os.PathLike, *, threads: int | None = None) -> Classifier | Detector:
    """A :class:`Classifier` or :class:`Detector`, as the file's metadata says."""
    opened = open_session(path, threads)
    return (Classifier if opened[1]["task"] == "classification" else Detector)(path, threads=threads, _opened=opened)


def _as_list(images: Sequence[ImageInput] | ImageInput) -> list:
    if isinstance(images, (str, os.PathLike)) or (isinstance(images, np.ndarray) and images.ndim == 3):
        images = [images]
    elif not isinstance(images, (list, tuple)):
        try:
            from PIL import Image

            if isinstance(images, Image.Image):
                images = [images]
        except ImportError:
            pass
    images = list(images)
    if not images:
        raise ValueError("expected at least one image, found none")
    return images

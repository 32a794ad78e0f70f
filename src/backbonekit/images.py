"""Image files read one way everywhere: detector training and evaluation, ``detect predict``, ``predict``,
the classification loader and :mod:`backbonekit.deploy`. Only numpy and Pillow (never torch), so the
deploy runtime can use it.

What a file becomes, whatever Pillow mode it decodes to: 8-bit RGB, turned upright as its EXIF
orientation says (as a phone or a browser shows the photo):

* grayscale (``L``, ``1``) repeated on the three channels; 16-bit grayscale (``I;16`` and its byte
  orders, and ``I``, which is how Pillow before 10 reads a 16-bit PNG) scaled to 8 bits as
  ``round(value / 257)``, where Pillow's own conversion would clip every value above 255 to white;
* alpha (``RGBA``, ``LA``, ``PA``, a palette with transparency) dropped, each pixel keeping its stored
  colour: what OpenCV's ``imread`` and torchvision's ``decode_image(mode=RGB)`` give, so a model sees the
  pixels other tools trained it on;
* CMYK (JPEG) through Pillow's conversion (its decoder undoes Adobe's inverted CMYK);
* an image larger than Pillow's decompression-bomb limit (``2 * PIL.Image.MAX_IMAGE_PIXELS`` pixels,
  179 million by default) is refused in one line, before any pixel is decoded.

Any file that cannot be read raises one :class:`ImageReadError` line naming it. :func:`letterbox_fit` and
:class:`LetterboxPlace` are the letterbox's geometry, shared by the detector and the deploy runtime for the
same reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ._text import first_line

if TYPE_CHECKING:
    from PIL import Image as PILImage

IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")  # compared in lower case
EXIF_ORIENTATION = 0x0112
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_FAILURES = (OSError, SyntaxError, ValueError, EOFError)  # what Pillow raises for a damaged file


class ImageReadError(OSError, ValueError):
    """An image file that cannot be read (an OSError for file handling, a ValueError for bad input)."""


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an image by its extension, in any case (``.JPG`` as ``.jpg``)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The image files under ``folder`` and its subfolders, sorted by path."""
    return sorted(p for p in Path(folder).rglob("*") if is_image_file(p) and p.is_file())


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """The image file as uint8 (H, W, 3) RGB, upright (see the module docstring)."""
    return np.asarray(open_rgb(path))


def open_rgb(path: str | os.PathLike) -> "PILImage.Image":
    """The image file as a Pillow RGB image, upright, fully decoded (the file is closed)."""
    from PIL import Image

    path = _existing(path)
    try:
        with Image.open(path) as image:
            return to_rgb(image)
    except Image.DecompressionBombError as exc:
        raise _too_large(path, exc) from None
    except _FAILURES as exc:
        raise _unreadable(path, exc) from None


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of the upright image, from the file's header alone (no pixels decoded)."""
    from PIL import Image

    path = _existing(path)
    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8):  # a quarter turn
                width, height = height, width
    except Image.DecompressionBombError as exc:
        raise _too_large(path, exc) from None
    except _FAILURES as exc:
        raise _unreadable(path, exc) from None
    return height, width


def to_rgb(image: "PILImage.Image") -> "PILImage.Image":
    """A Pillow image of any mode as RGB, turned upright by its EXIF orientation (see the module docstring)."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode in SIXTEEN_BIT_MODES:
        wide = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.round(np.clip(wide, 0, 65535) / 257).astype(np.uint8), "L")
    elif image.mode in ("P", "PA"):  # through RGBA: Pillow's palette-with-transparency path, then alpha dropped
        image = image.convert("RGBA")
    return image if image.mode == "RGB" else image.convert("RGB")


def letterbox_fit(height: int, width: int, canvas_h: int, canvas_w: int) -> tuple[int, int]:
    """(new_h, new_w): an image of ``height`` x ``width`` scaled into a ``canvas_h`` x ``canvas_w`` letterbox
    keeping its aspect ratio, as Darknet's ``letterbox_image`` sizes it: the side that fills first takes the
    canvas size, the other is floored (``im.h * w / im.w`` in integers). The detector's letterbox (torch) and
    the deploy runtime's (NumPy) both size images with it."""
    if canvas_w / width < canvas_h / height:  # the width fills the canvas first (Darknet's test, in this order)
        return max(1, (height * canvas_w) // width), canvas_w
    return canvas_h, max(1, (width * canvas_h) // height)


@dataclass(frozen=True)
class LetterboxPlace:
    """Where an image of ``height`` x ``width`` pixels went in a letterboxed canvas: scaled to ``new_w`` x
    ``new_h`` and placed at (``left``, ``top``). The detector's ``LetterboxGeometry`` (torch) and the deploy
    runtime's ``LetterboxBox`` (NumPy) add the box maps."""

    height: int
    width: int
    new_h: int
    new_w: int
    top: int
    left: int

    @classmethod
    def centred(cls, height: int, width: int, new_h: int, new_w: int, canvas_h: int, canvas_w: int):
        """The image scaled to ``new_h`` x ``new_w`` in the middle of the canvas (padding floored on the top/left)."""
        return cls(height, width, new_h, new_w, (canvas_h - new_h) // 2, (canvas_w - new_w) // 2)

def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: expected a file at {path}")
    return path


def _unreadable(path: Path, exc: BaseException) -> ImageReadError:
    from PIL import UnidentifiedImageError

    detail = "not a format Pillow knows" if isinstance(exc, UnidentifiedImageError) else first_line(exc)
    return ImageReadError(f"cannot read image {path}: {type(exc).__name__} ({detail}); expected an image file "
                          f"Pillow can decode ({', '.join(IMAGE_EXTENSIONS)})")


def _too_large(path: Path, exc: BaseException) -> ImageReadError:
    return ImageReadError(f"cannot read image {path}: {first_line(exc)} (Pillow's limit against decompression "
                          f"bombs, 2 x PIL.Image.MAX_IMAGE_PIXELS; shrink the image first)")

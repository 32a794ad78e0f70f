"""One image reader for every path (backbonekit.images): each Pillow mode a user's files come in, written by
Pillow here and compared with what the pixels must be, computed with numpy from the values written."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backbonekit.images import ImageReadError, image_files, image_size, read_rgb

RNG = np.random.default_rng(0)
PIXELS = RNG.integers(0, 256, (6, 10, 3), dtype=np.uint8)  # (H, W, 3): not square, so a turn shows


def _gray(path: Path) -> np.ndarray:
    gray = RNG.integers(0, 256, (6, 10), dtype=np.uint8)
    Image.fromarray(gray, "L").save(path)
    return np.repeat(gray[..., None], 3, 2)


def _gray16(path: Path) -> np.ndarray:
    wide = RNG.integers(0, 65536, (6, 10)).astype(np.uint16)
    Image.fromarray(wide).save(path)
    assert Image.open(path).mode == "I;16"
    return np.repeat(np.round(wide / 257).astype(np.uint8)[..., None], 3, 2)  # 65535 -> 255, 257 -> 1


def _rgba(path: Path) -> np.ndarray:
    alpha = RNG.integers(0, 256, (6, 10, 1), dtype=np.uint8)
    Image.fromarray(np.concatenate([PIXELS, alpha], 2), "RGBA").save(path)
    return PIXELS  # alpha dropped, each pixel's stored colour kept


def _palette_with_transparency(path: Path) -> np.ndarray:
    palette = RNG.integers(0, 256, (3, 3), dtype=np.uint8)
    index = RNG.integers(0, 3, (6, 10), dtype=np.uint8)
    image = Image.fromarray(index, "P")
    image.putpalette(palette.ravel().tolist())
    image.save(path, transparency=bytes([0, 128, 255]))  # one alpha per palette entry
    return palette[index]


def _cmyk_jpeg(path: Path) -> np.ndarray:
    blocks = np.array([[200, 0, 0, 50], [0, 120, 30, 0], [10, 20, 220, 90]], np.uint8)
    cmyk = np.repeat(blocks, 16, 0)[:, None, :].repeat(16, 1)  # flat 16-pixel bands: JPEG keeps them
    Image.fromarray(cmyk, "CMYK").save(path, quality=100)
    c, k = cmyk[..., :3].astype(np.float64), cmyk[..., 3:].astype(np.float64)
    return np.round((255 - c) * (255 - k) / 255).astype(np.uint8)  # the usual CMYK -> RGB


def _webp(path: Path) -> np.ndarray:
    Image.fromarray(PIXELS).save(path, lossless=True)
    return PIXELS


def _exif_turned(path: Path) -> np.ndarray:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored on its side: shown turned 90 degrees clockwise
    Image.fromarray(PIXELS).save(path, exif=exif)
    return np.rot90(PIXELS, -1)


MODES = {"gray.png": _gray, "gray16.png": _gray16, "rgba.png": _rgba, "palette.png": _palette_with_transparency,
         "cmyk.jpg": _cmyk_jpeg, "photo.webp": _webp, "phone.png": _exif_turned}
TOLERANCE = {"cmyk.jpg": 2}  # JPEG: flat bands come back within a level or two


def _detection_data(path):
    from backbonekit.detection.data.datasets import read_image_uint8

    return read_image_uint8(Path(path)).permute(1, 2, 0).numpy()


def _detect_predict(path):
    from backbonekit.detection.predict import read_image

    return (read_image(path) * 255).round().byte().permute(1, 2, 0).numpy()


def _deploy(path):
    from backbonekit.deploy.runtime import read_rgb as deploy_read

    return np.asarray(deploy_read(path))


def _deploy_pil(path):
    from backbonekit.deploy.runtime import read_rgb as deploy_read

    with Image.open(path) as image:  # a Pillow image handed over as it was opened
        return np.asarray(deploy_read(image))


def _classification_folder(path):
    from backbonekit.train.data import load_rgb

    return np.asarray(load_rgb(str(path)))


READERS = {"images": read_rgb, "detection data": _detection_data, "detect predict": _detect_predict,
           "deploy": _deploy, "deploy (PIL image)": _deploy_pil, "classification": _classification_folder}


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("name", MODES)
def test_every_reader_gives_the_pixels_the_file_holds(tmp_path, name, reader):
    expected = MODES[name](tmp_path / name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's palette-transparency warning included
        got = READERS[reader](tmp_path / name)
    assert got.dtype == np.uint8 and got.shape == expected.shape
    np.testing.assert_allclose(got.astype(int), expected.astype(int), atol=TOLERANCE.get(name, 0))
    assert image_size(tmp_path / name) == expected.shape[:2]  # the header alone, turned as the pixels are


def test_sixteen_bit_gray_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    assert read_rgb(tmp_path / "ramp.png").mean() == pytest.approx(127.5, abs=0.5)  # clipping gives ~255


def test_folder_listings_take_any_extension_case(tmp_path):
    for name in ("a.JPG", "b.PNG", "c.webp", "sub/d.Bmp", "sub/e.JPEG", "f.txt", "g.png.bak"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = [p.relative_to(tmp_path).as_posix() for p in image_files(tmp_path)]
    assert found == ["a.JPG", "b.PNG", "c.webp", "sub/d.Bmp", "sub/e.JPEG"]


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header announces width x height 8-bit gray pixels (Pillow refuses it before decoding)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) +
                     chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("reader", [r for r in READERS if r != "deploy (PIL image)"])  # that one is opened by hand
def test_decompression_bombs_are_refused_in_one_line_everywhere(tmp_path, reader):
    bomb = png_header(tmp_path / "bomb.png", 30000, 30000)
    with pytest.raises((ImageReadError, ValueError)) as info:
        READERS[reader](bomb)
    message = str(info.value)
    assert "bomb.png" in message and "decompression bombs" in message and len(message.splitlines()) == 1
    with pytest.raises(ImageReadError, match="decompression bombs"):
        image_size(bomb)


def test_unreadable_and_missing_files_are_one_line(tmp_path):
    (tmp_path / "x.png").write_text("not an image")
    with pytest.raises(ImageReadError, match=r"cannot read image .*x.png: UnidentifiedImageError"):
        read_rgb(tmp_path / "x.png")
    with pytest.raises(FileNotFoundError, match="image not found: expected a file at .*y.png"):
        read_rgb(tmp_path / "y.png")

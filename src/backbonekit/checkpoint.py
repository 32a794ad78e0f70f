"""Reading and writing checkpoint files safely: atomic writes, ``weights_only`` loads, one-line errors."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import torch

from ._text import first_line

class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: missing, corrupt, truncated or for another model."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`atomic_open`: a reader, or a crash at any moment, sees either
    the old file or the complete new one."""
    with atomic_open(path) as f:
        torch.save(obj, f)


def load_file(path: str | os.PathLike) -> Any:
    """``torch.load(weights_only=True)`` on the CPU, turning every failure into one CheckpointError line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: expected a file at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt zip, truncated pickle, disallowed global, ...
        raise CheckpointError(
            f"cannot read checkpoint {path}: expected a file written by torch.save "
            f"(tensors and plain Python values only), found an unreadable file ({first_line(exc)})"
        ) from None


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; fsynced and renamed over ``path`` only when the
    block ends without an exception (for writers that take a path, such as ONNX export)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"expected a file path to write, found a folder: {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file what open() would
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through :func:`atomic_path` (for formats other than ``torch.save``)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        yield f

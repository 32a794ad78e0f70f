"""Reading and writing checkpoint files safely: atomic writes, ``weights_only`` loads, one-line errors."""

from __future__ import annotations

import os
import secrets
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import torch

from ._text import first_line


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: missing, corrupt, truncated or for another model."""


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


def _create_temporary(path: Path) -> Path:
    """A new empty file beside ``path`` with the mode ``open(path, 'w')`` would give a new file.

    Created with mode 0o666, which the kernel masks with the process umask: no need to read or
    change the umask (it is process-wide, so changing it even briefly races with other threads).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(tmp, flags, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"cannot create a temporary file beside {path}: 100 names taken")


def _fsync_directory(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory; the rename itself has happened
        pass
    finally:
        os.close(fd)


def output_file(path: str | os.PathLike) -> Path:
    """``path`` as a Path once its folder is known to exist (one FileNotFoundError line otherwise): for
    writers that work a while (export, quantization) before :func:`atomic_path` writes the file."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder {path.parent} does not exist")
    return path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; fsynced and renamed over ``path`` only when the
    block ends without an exception (for writers that take a path, such as ONNX export), then the
    folder is fsynced so that a power cut cannot lose the rename. On any exception the temporary
    file is removed and ``path`` is left as it was."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"expected a file path to write, found a folder: {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temporary(path)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if path.exists():  # keep the mode of the file being replaced, as writing it in place would
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_directory(path.parent)


@contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through :func:`atomic_path` (for formats other than ``torch.save``)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        yield f

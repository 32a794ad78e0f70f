"""Reading and writing checkpoint files safely: atomic writes, ``weights_only`` loads, one-line errors,
and the rules every command that writes follows (:func:`check_output`)."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator

import torch

from ._text import first_line

try:
    import fcntl
except ImportError:  # not POSIX: temporaries are not locked, and leftovers are not removed
    fcntl = None  # type: ignore[assignment]

TEMPORARY_SUFFIX = ".backbonekit-tmp"
_TEMPORARY_NAME = re.compile(r"^\..*\.[0-9a-f]{12}" + re.escape(TEMPORARY_SUFFIX) + "$")
_swept: set[str] = set()  # folders this process has cleared of leftover temporaries
# ModelProto's first field is ir_version (tag 0x08, a small varint); the next one of its fields follows
_ONNX_SECOND_TAGS = frozenset({0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72})


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: missing, corrupt, truncated or for another model."""


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`atomic_open`: a reader, or a crash at any moment, sees either
    the old file or the complete new one."""
    with atomic_open(path) as f:
        torch.save(obj, f)


def looks_like_onnx(head: bytes) -> bool:
    """Whether a file's first bytes are those of an ONNX model (a protobuf ModelProto: ir_version first)."""
    return len(head) >= 3 and head[0] == 0x08 and 0 < head[1] < 0x80 and head[2] in _ONNX_SECOND_TAGS


def refuse_onnx(path: Path, head: bytes) -> None:
    """One CheckpointError line for an exported ONNX file given where a checkpoint or weights file is expected."""
    if looks_like_onnx(head):
        raise CheckpointError(f"{path} is an ONNX file, not a checkpoint: expected a best.pt/last.pt or weights "
                              f"file here; use `detect evaluate` (or `evaluate` for a classifier) or "
                              f"backbonekit.deploy to run an ONNX file")


def load_file(path: str | os.PathLike) -> Any:
    """``torch.load(weights_only=True)`` on the CPU, turning every failure into one CheckpointError line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: expected a file at {path}")
    with open(path, "rb") as f:
        refuse_onnx(path, f.read(3))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt zip, truncated pickle, disallowed global, ...
        raise CheckpointError(
            f"cannot read checkpoint {path}: expected a file written by torch.save "
            f"(tensors and plain Python values only), found an unreadable file ({first_line(exc)})"
        ) from None


def _hold(folder: Path) -> int | None:
    """An open descriptor of ``folder`` holding its exclusive lock, or None when another process holds it.

    ``flock`` locks are released by the OS when the process ends, however it ends (SIGKILL included), so a
    leftover temporary whose lock can be taken is one whose writer is gone."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def remove_stale_temporaries(folder: Path) -> None:
    """Remove the temporaries (:func:`temporary_folder`) that killed writers left in ``folder``; those of writers
    still at work are locked and kept. Done once per folder and process (writers put thousands of files in one)."""
    key = os.path.abspath(folder)
    if fcntl is None or key in _swept:
        return
    _swept.add(key)
    try:
        entries = [e for e in os.scandir(folder) if _TEMPORARY_NAME.match(e.name) and e.is_dir(follow_symlinks=False)]
    except OSError:
        return
    for entry in entries:
        try:
            fd = _hold(Path(entry.path))
        except OSError:  # removed meanwhile
            continue
        if fd is not None:
            try:
                shutil.rmtree(entry.path, ignore_errors=True)
            finally:
                os.close(fd)


@contextmanager
def temporary_folder(beside: Path) -> Iterator[Path]:
    """A new folder beside ``beside`` to write it in, removed with what is left in it when the block ends.

    Its name (``.NAME.HEX.backbonekit-tmp``) says whose it is, and this process holds its lock while the block
    runs: a process killed while writing (SIGKILL, OOM killer; no handler runs) leaves it behind unlocked, and
    the next write into the same folder removes it (:func:`remove_stale_temporaries`). The folder gets that name
    only once it is locked, so that no other process can take a write in progress for a leftover.
    """
    parent = beside.parent
    remove_stale_temporaries(parent)
    stem = f".{beside.name[:100]}.{secrets.token_hex(6)}"
    pending, folder = parent / f"{stem}.pending", parent / f"{stem}{TEMPORARY_SUFFIX}"
    os.mkdir(pending, 0o700)
    current, fd = pending, None
    try:
        if fcntl is not None:
            fd = _hold(pending)
            if fd is None:
                raise OSError(f"cannot lock the new temporary folder {pending}")
        os.rename(pending, folder)
        current = folder
        yield folder
    finally:
        shutil.rmtree(current, ignore_errors=True)
        if fd is not None:
            os.close(fd)


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


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def check_not_input(path: str | os.PathLike, inputs: Iterable[Any]) -> Path:
    """``path`` as a Path unless it is one of ``inputs`` (links and other spellings of the same file included;
    inputs that are not paths, such as a model object or None, are skipped)."""
    path = Path(path)
    for source in inputs:
        if isinstance(source, (str, os.PathLike)) and _same_file(Path(source), path):
            raise ValueError(f"destination {path} is the source file {source}: writing there would replace what "
                             f"is being read; expected another output path")
    return path


def _occupied(path: Path) -> bool:
    return path.is_file() or path.is_symlink() or (path.is_dir() and any(path.iterdir()))


def check_output(path: str | os.PathLike, *, inputs: Iterable[Any] = (), force: bool = False,
                 replaceable: Callable[[Path], str | None] | None = None) -> Path:
    """``path`` as a Path once writing it is known to lose nothing: the rules every command that writes follows.

    * Never one of ``inputs`` (:func:`check_not_input`), ``force`` or not.
    * An existing file, or a folder that is not empty, is written over only when ``replaceable(path)`` returns
      None (it holds nothing the output would not: e.g. a file this package wrote, an earlier report), or
      with ``force``; otherwise ``replaceable`` returns what is there, and that is the error. Without
      ``replaceable`` nothing existing is replaced without ``force``.
    """
    path = check_not_input(path, inputs)
    if force or not _occupied(path):
        return path
    found = replaceable(path) if replaceable is not None else "was not written by this command"
    if found:
        raise ValueError(f"{path} already exists and {found}: expected a new path, or --force to replace it")
    return path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path (in a :func:`temporary_folder` beside ``path``) to write to; fsynced and renamed over
    ``path`` only when the block ends without an exception (for writers that take a path, such as ONNX
    export), then the folder is fsynced so that a power cut cannot lose the rename. On any exception the
    temporary is removed and ``path`` is left as it was; a killed process's is removed by the next write."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"expected a file path to write, found a folder: {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with temporary_folder(path) as folder:
        tmp = folder / path.name  # the same name: writers that go by the extension (onnx.save) see it
        # created with mode 0o666, which the kernel masks with the process umask: the mode open() would give a
        # new file, without reading or changing the umask (process-wide: changing it races with other threads)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666))
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if path.exists():  # keep the mode of the file being replaced, as writing it in place would
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        os.replace(tmp, path)
    _fsync_directory(path.parent)


@contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through :func:`atomic_path` (for formats other than ``torch.save``)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        yield f

"""Fetching published weights files the way torchvision and timm do: into torch's hub cache, checked, once.

Files land in ``torch.hub.get_dir()/checkpoints`` under their published names, so a file torchvision
(or timm, when it fetches by URL rather than from the Hugging Face hub) already fetched is used from there
(and one fetched here serves them too). A download goes through
``torch.hub.download_url_to_file`` (progress bar on stderr) into a temporary name beside the target
(:func:`backbonekit.checkpoint.atomic_path`); it is checked (exact size, SHA-256 or its published
prefix, SHA-1, whichever the publisher gives) and only then renamed to its final name, so a killed
download leaves nothing that looks complete. A file lock beside the target makes a second process wait
for the first instead of downloading the same file again; a file already there is only read (so a
read-only cache serves too). A file that fails its check, downloaded or already in the cache, is
removed and refused: never loaded.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.error import URLError
from urllib.parse import urlparse

from ._text import first_line
from .checkpoint import CheckpointError, atomic_path

# torchvision and timm end their file names in "-<the first hex digits of the file's SHA-256>.<ext>"; fewer
# than 8 digits is not taken for a hash (torch.hub's own pattern would read "-ace." in "yolo-ace.pt" as one)
HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,64})\.")
READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileSpec:
    """A published file: where it is, its name in the cache, and what it must hash to."""

    urls: tuple[str, ...]  # tried in order
    file_name: str
    sha256: str = ""  # the full digest (64 hex digits) or the publisher's prefix of it (torchvision: 8)
    sha1: str = ""  # where only a SHA-1 is public
    size: int | None = None  # exact bytes, where known

    @classmethod
    def from_url(cls, url: str) -> FileSpec:
        """A file known only by its URL: named after the URL's last part, with the hash prefix the name
        carries (torchvision's and timm's convention), as ``load_state_dict_from_url(check_hash=True)``."""
        name = os.path.basename(urlparse(url).path)
        if not name:
            raise ValueError(f"expected a URL ending in a file name, found {url}")
        found = HASH_IN_NAME.search(name)
        return cls((url,), name, sha256=found.group(1) if found else "")


def is_url(spec: object) -> bool:
    return isinstance(spec, str) and spec.startswith(("https://", "http://"))


def cache_dir() -> Path:
    """Where fetched files live: ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub/checkpoints``)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_path(spec: FileSpec) -> Path:
    return cache_dir() / spec.file_name


def fetch(spec: FileSpec, *, what: str | None = None, progress: bool = True) -> Path:
    """The checked local copy of ``spec``: from the cache, else downloaded (once, whatever the number of
    processes asking). ``what`` names the file in messages (a tag; default its name).

    Raises one ``OSError`` line naming the URL and the path to put the file at by hand when it cannot be
    downloaded, and one ``CheckpointError`` line when the file fails its check (the file is removed).
    """
    target = cached_path(spec)
    if target.is_file():  # complete (files appear only by rename): no lock, so a read-only cache serves too
        return _checked_cache_hit(target, spec, what)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _download_lock(target):
        if target.is_file():  # another process fetched it while this one waited
            return _checked_cache_hit(target, spec, what)
        _download(spec, target, what or spec.file_name, progress)
    return target


def _checked_cache_hit(target: Path, spec: FileSpec, what: str | None) -> Path:
    check_file(target, spec, f"{what or spec.file_name} in the cache")
    return target


@contextmanager
def _download_lock(target: Path) -> Iterator[None]:
    """Held while a process downloads ``target`` (or finds it there after waiting); a second process waits here."""
    from filelock import FileLock, Timeout

    locks = target.parent / ".locks"  # beside the files torchvision and timm list, not among them
    locks.mkdir(exist_ok=True)
    lock = FileLock(str(locks / f"{target.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"waiting for another process to download {target.name} ...", file=sys.stderr)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _download(spec: FileSpec, target: Path, what: str, progress: bool) -> None:
    import torch.hub

    failures = []
    for url in spec.urls:
        try:
            with atomic_path(target) as partial:  # renamed to target only once checked
                print(f'Downloading: "{url}" to {target}', file=sys.stderr)
                torch.hub.download_url_to_file(url, str(partial), progress=progress)
                check_file(partial, spec, f"{what} downloaded from {url}")
            return
        except (URLError, OSError) as exc:  # no network, refused, 404, timeout, disk full
            failures.append(first_line(getattr(exc, "reason", None) or exc, 120))
    by_hand = " or ".join(spec.urls)
    raise OSError(f"cannot download {what} ({'; '.join(failures)}): without network, fetch {by_hand} by hand "
                  f"and put it at {target}")


def check_file(path: Path, spec: FileSpec, source: str) -> None:
    """Refuse ``path`` (remove it, raise one CheckpointError line) unless it has ``spec``'s size and hashes."""
    problem = _mismatch(path, spec)
    if problem:
        try:
            path.unlink(missing_ok=True)
            removed = "removed it"
        except OSError as exc:  # a read-only cache
            removed = f"could not remove it ({first_line(exc, 80)}): delete it by hand"
        raise CheckpointError(f"{source} failed its check ({problem}): {removed}, nothing was loaded")


def _mismatch(path: Path, spec: FileSpec) -> str:
    size = path.stat().st_size
    if spec.size is not None and size != spec.size:
        return f"expected {spec.size:,} bytes, found {size:,}"
    sha256, sha1 = hashlib.sha256(), hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(READ_CHUNK), b""):
            sha256.update(block)
            if spec.sha1:
                sha1.update(block)
    if spec.sha256 and not sha256.hexdigest().startswith(spec.sha256):
        return f"expected SHA-256 {spec.sha256}{'...' if len(spec.sha256) < 64 else ''}, found {sha256.hexdigest()}"
    if spec.sha1 and sha1.hexdigest() != spec.sha1:
        return f"expected SHA-1 {spec.sha1}, found {sha1.hexdigest()}"
    return ""

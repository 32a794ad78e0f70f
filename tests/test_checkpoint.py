"""Atomic writes: a write interrupted at any point leaves the old file and no temporary file; the new file gets
the mode open() would give it without the process umask ever being changed; the rename is made durable."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from backbonekit import checkpoint
from backbonekit.checkpoint import atomic_open, atomic_save


class Interrupted(Exception):
    pass


@pytest.fixture
def old_file(tmp_path: Path) -> Path:
    path = tmp_path / "last.pt"
    atomic_save({"epoch": 1, "weights": torch.arange(10)}, path)
    return path


def _assert_old_file_intact(path: Path) -> None:
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind


def test_serializer_failing_midway_keeps_the_old_file(old_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def half_a_save(obj: object, f: object) -> None:
        f.write(b"PK\x03\x04 half a checkpoint")
        raise Interrupted("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", half_a_save)
    with pytest.raises(Interrupted):
        atomic_save({"epoch": 2}, old_file)
    monkeypatch.undo()
    _assert_old_file_intact(old_file)


@pytest.mark.parametrize("exception", [Interrupted("rename failed"), KeyboardInterrupt()])
def test_failure_at_the_rename_keeps_the_old_file(old_file: Path, monkeypatch: pytest.MonkeyPatch,
                                                  exception: BaseException) -> None:
    def failing_replace(src: object, dst: object) -> None:
        raise exception

    monkeypatch.setattr(checkpoint.os, "replace", failing_replace)
    with pytest.raises(type(exception)):
        atomic_save({"epoch": 2}, old_file)
    monkeypatch.undo()
    _assert_old_file_intact(old_file)


def test_writer_raising_inside_atomic_open_keeps_the_old_file(old_file: Path) -> None:
    with pytest.raises(Interrupted):
        with atomic_open(old_file) as f:
            f.write(b"partial")
            raise Interrupted("writer failed")
    _assert_old_file_intact(old_file)


def test_mode_follows_the_umask_which_is_never_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    previous = os.umask(0o027)  # the test sets it; the code under test must only be subject to it
    try:
        def no_umask(mask: int) -> int:
            raise AssertionError("os.umask called: it changes the mask of every thread of the process")

        monkeypatch.setattr(os, "umask", no_umask)
        atomic_save({"x": 1}, tmp_path / "new.pt")
        monkeypatch.undo()
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "new.pt").stat().st_mode) == 0o640  # 0o666 & ~0o027, as open() gives


def test_replacing_a_file_keeps_its_mode(old_file: Path) -> None:
    os.chmod(old_file, 0o600)
    atomic_save({"epoch": 2}, old_file)
    assert stat.S_IMODE(old_file.stat().st_mode) == 0o600
    assert torch.load(old_file, weights_only=True)["epoch"] == 2


def test_file_then_rename_then_directory_are_synced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src: object, dst: object) -> None:
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "fsync", fsync)
    monkeypatch.setattr(checkpoint.os, "replace", replace)
    atomic_save({"x": 1}, tmp_path / "a.pt")
    assert events == ["fsync file", "replace", "fsync dir"]

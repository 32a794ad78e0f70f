"""Small helpers for one-line error messages."""

from __future__ import annotations

from typing import Sequence

# what bad input or a bad environment raises: reported as one line (CheckpointError is a ValueError)
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, OSError)


def first_line(error: BaseException | str, limit: int | None = 200, *, lines: int | None = 1) -> str:
    """An error message on one line: its first non-empty line (the first ``lines`` of them joined, all of
    them for ``None``), whitespace collapsed, cut to at most ``limit`` characters (``None``: not cut) at
    a sentence's end, else at a word's end followed by "...", never inside a word.

    An exception with an empty message gives its type's name; a ``KeyError`` gives its message
    without the quotes ``str(KeyError)`` adds.
    """
    if isinstance(error, KeyError) and error.args and isinstance(error.args[0], str):
        text = error.args[0]
    else:
        text = str(error)
    kept = [" ".join(line.split()) for line in text.splitlines() if line.strip()]
    line = " ".join(kept[:lines])
    if not line and isinstance(error, BaseException):
        line = type(error).__name__
    return line if limit is None else _shortened(line, limit)


def _shortened(text: str, limit: int) -> str:
    """``text`` cut to whole sentences within ``limit`` characters; when even the first is longer, to whole words."""
    if len(text) <= limit:
        return text
    end = max(text.rfind(mark, 0, limit) for mark in (". ", "! ", "? ", "; "))
    if end > 0:
        return text[:end + 1].rstrip(";")
    space = text.rfind(" ", 0, limit - 3)
    return (text[:space] if space > 0 else text[:limit - 3]) + "..."


def few(items: Sequence[str], n: int = 3) -> str:
    """``[a, b, c, ...]``: the first ``n`` items, with an ellipsis when there are more."""
    return "[" + ", ".join(items[:n]) + (", ..." if len(items) > n else "") + "]"

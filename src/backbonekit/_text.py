"""Small helpers for one-line error messages."""

from __future__ import annotations

from typing import Sequence


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type's name when empty), cut to ``limit`` characters."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


def few(items: Sequence[str], n: int = 3) -> str:
    """``[a, b, c, ...]``: the first ``n`` items, with an ellipsis when there are more."""
    return "[" + ", ".join(items[:n]) + (", ..." if len(items) > n else "") + "]"

"""RESULTS.md holds one section per benchmark script; each script replaces only its own."""

from __future__ import annotations

import os
import re
from pathlib import Path

HEADER = "# Benchmark results\n\nWritten by the scripts in `benchmarks/`; rerun them to refresh a section.\n"


def write_section(path: Path, name: str, text: str) -> None:
    """Replace (or append) the section ``name`` of ``path``, atomically."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{text.rstrip()}\n{end}"
    current = path.read_text() if path.exists() else HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    updated = pattern.sub(lambda _: block, current) if pattern.search(current) else f"{current.rstrip()}\n\n{block}\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(updated)
    os.replace(tmp, path)

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


def load_note(load_before: list[float] | None, cpu_count: int | None, matmul: bool = False) -> str:
    """A warning line when other processes were competing for the cores during the run, else ''."""
    if not load_before or not cpu_count or load_before[0] < 0.5 * cpu_count:
        return ""
    return (f"**Busy machine** (1-minute load average {load_before[0]:.1f} on {cpu_count} cores before the run): "
            "other processes took CPU time, so absolute figures are low and noisy"
            + (" and the fraction of the matmul reference is not meaningful" if matmul else "")
            + "; rerun on a quiet machine for figures to quote.")

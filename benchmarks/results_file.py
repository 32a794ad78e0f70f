"""RESULTS.md holds one section per benchmark script; each script replaces only its own."""

from __future__ import annotations

import os
import re
import time
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


class CpuWatch:
    """CPU time that *other* processes used while a benchmark ran, in cores' worth.

    The load average says how busy the machine was over the last minute, including the previous
    benchmark run: a run right after another run looks busy although nothing competes with it.
    Instead, compare the machine's busy time (``/proc/stat``) with this process's own CPU time over
    the same wall time: what is left is what other processes took from the cores we measured on.
    """

    def __init__(self) -> None:
        self.others_cores: float | None = None
        self._start: tuple[float, float, float] | None = None

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        except (OSError, ValueError):
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
        t = os.times()
        return time.monotonic(), busy, t.user + t.system + t.children_user + t.children_system

    def __enter__(self) -> "CpuWatch":
        self._start = self._sample()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._sample()
        if self._start and end and end[0] > self._start[0]:
            others = (end[1] - self._start[1]) - (end[2] - self._start[2])
            self.others_cores = max(0.0, others / (end[0] - self._start[0]))


def load_note(others_cores: float | None, cpu_count: int | None, matmul: bool = False) -> str:
    """Whether the run had the cores to itself: busy when other processes used over a quarter of a core."""
    if others_cores is None or not cpu_count:
        return "Other processes' CPU use during the run is unknown on this system (no /proc/stat)."
    if others_cores < 0.25:
        return f"Quiet machine: other processes used {others_cores:.2f} of the {cpu_count} cores during the run."
    return (f"**Busy machine** (other processes used {others_cores:.2f} of the {cpu_count} cores during the run): "
            "absolute figures are low and noisy"
            + (" and the fraction of the matmul reference is not meaningful" if matmul else "")
            + "; rerun on a quiet machine for figures to quote.")

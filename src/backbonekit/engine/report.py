"""What both trainers' reports are made of: the run folder's metrics.csv, matplotlib figures saved to
files, and the report.html page (its shell, the per-epoch table, the images and texts present)."""

from __future__ import annotations

import csv
import html
import io
from pathlib import Path
from typing import Collection, Iterable, Sequence

from ..checkpoint import atomic_open

PAGE_STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:auto}img{max-width:100%}"
              "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px;"
              "text-align:right}pre{background:#f6f6f6;padding:8px}")


# -- metrics.csv ------------------------------------------------------------------------------------

def write_metrics(path: Path, history: Sequence[dict[str, float]], fields: Sequence[str]) -> None:
    """Rewrite metrics.csv from the history kept in the checkpoint (a resume never duplicates rows); only
    the ``fields`` some row has (val_top5: more than 5 classes)."""
    text = io.StringIO(newline="")
    present = [name for name in fields if any(name in row for row in history)]
    writer = csv.DictWriter(text, fieldnames=present or list(fields))
    writer.writeheader()
    writer.writerows(history)
    with atomic_open(path) as f:
        f.write(text.getvalue().encode("utf-8"))


def read_metrics(path: Path) -> list[dict[str, float]]:
    with path.open(newline="", encoding="utf-8") as f:
        # an empty cell: a column some rows lack (val_top5 before/after a change of class count)
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


# -- figures ----------------------------------------------------------------------------------------

def pyplot():
    """matplotlib.pyplot on the Agg backend: figures go to files only, never to a window."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 110) -> None:
    """Lay ``fig`` out, save it to ``path`` and close it."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)


def save_epoch_figure(fig, axes, path: Path, legend_size: float | None = None) -> None:
    """Grid, legend and whole-number epochs on each axis; save ``fig`` to ``path`` and close it."""
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=legend_size)
        ax.xaxis.get_major_locator().set_params(integer=True)
    save_figure(fig, path)


# -- report.html ------------------------------------------------------------------------------------

def html_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A table of text cells (escaped)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def metrics_table(rows: Sequence[dict[str, float]], percent: Collection[str] = ()) -> str:
    """metrics.csv's rows as a table: whole epochs, the ``percent`` columns in %, the rest to 4 digits."""
    def cell(key: str, value: float) -> str:
        if key == "epoch":
            return str(int(value))
        return f"{100 * value:.2f}%" if key in percent else f"{value:.4g}"

    return html_table(list(rows[0]), ([cell(k, v) for k, v in row.items()] for row in rows))


def write_page(path: Path, title: str, parts: Sequence[str]) -> Path:
    """An HTML page of ``parts`` (HTML) in the reports' style, written atomically."""
    page = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{PAGE_STYLE}</style></head><body>" + "\n".join(parts) + "</body></html>\n")
    with atomic_open(path) as f:
        f.write(page.encode("utf-8"))
    return path


def write_run_page(run_dir: Path, kind: str, summary: str | None, rows: Sequence[dict[str, float]],
                   images: Sequence[tuple[str, str]], texts: Sequence[tuple[str, str]],
                   percent: Collection[str] = ()) -> Path:
    """report.html of a run folder: the final figures (``summary``, HTML), the per-epoch table of ``rows``,
    then each of ``images`` and ``texts`` (file name, caption) the folder holds. ``kind``: ``run``,
    ``detector run``."""
    name = html.escape(run_dir.name)
    parts = [f"<h1>backbonekit {kind}: {name}</h1>"]
    if summary is not None:
        parts.append(f"<h2>Final figures</h2><p>{summary}</p>")
    if rows:
        parts.append("<h2>Per epoch (metrics.csv)</h2>" + metrics_table(rows, percent))
    for file, caption in images:
        if (run_dir / file).is_file():
            parts.append(f"<h2>{caption}</h2><img src=\"{file}\" alt=\"{caption}\">")
    for file, caption in texts:
        if (run_dir / file).is_file():
            parts.append(f"<h2>{caption}</h2><pre>{html.escape((run_dir / file).read_text(encoding='utf-8'))}</pre>")
    return write_page(run_dir / "report.html", f"backbonekit {kind} {run_dir.name}", parts)

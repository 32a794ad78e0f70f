"""``backbonekit weights``: the published weights by tag, with size, licence and published accuracy
(:mod:`backbonekit.pretrained`)."""

from __future__ import annotations

import argparse
import json


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("weights", help="list the published weights (tags for pretrained= and --weights)")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter on the tag or model, e.g. 'resnet*'")
    p.add_argument("--format", choices=("table", "json"), default="table",
                   help="json adds URLs, hashes, preprocessing, class sets and sources")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..pretrained import published_rows

    rows = published_rows(args.pattern)
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    print(_table(rows))
    return 0


def _table(rows: list[dict]) -> str:
    from ..hub import cache_dir

    header = ("tag", "size", "licence", "dataset", "cached", "published accuracy")
    lines = [header] + [(r["tag"] + (" *" if r.get("default") else ""), _size(r), r.get("license") or "-",
                         r.get("dataset") or "-", "yes" if r.get("cached") else "-", _accuracy(r))
                        for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)) + "  " + line[-1] for line in lines]
    return "\n".join([*(t.rstrip() for t in text),
                      f"* the default tag (pretrained=True); files are fetched into {cache_dir()}; "
                      f"--format json gives URLs, hashes and sources"])


def _size(row: dict) -> str:
    if row.get("size_bytes"):
        return f"{row['size_bytes'] / 2**20:.1f} MiB"
    return f"{row['size_mib']:.1f} MiB" if row.get("size_mib") else "-"


def _accuracy(row: dict) -> str:
    if "no_weights" in row:
        return f"no published weights: {row['no_weights']}"
    metrics = ", ".join(f"{name} {value}" for name, value in row["metrics"].items())
    return f"{metrics} ({row['evaluated']})" if metrics else row["evaluated"]

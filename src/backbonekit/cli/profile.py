"""``backbonekit profile``: parameters, MACs, FLOPs and activation memory (:func:`backbonekit.profiler.profile`)."""

from __future__ import annotations

import argparse
import re

from ..profiler import FORMATS


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("profile", help="count parameters, MACs and FLOPs per layer",
                              description="Count parameters, MACs (conv + linear + matmul multiply-adds; "
                                          "FLOPs = 2 x MACs) and peak activation memory of one forward pass.")
    p.add_argument("model", metavar="MODEL",
                   help="a registered name (darknet53), torchvision:NAME, timm:NAME or module.path:callable")
    p.add_argument("--input-size", nargs="+", metavar="SIZE",
                   help="SIZE or H W (default: the model's native size, else 224)")
    p.add_argument("--batch-size", default="1", metavar="N", help="images per forward (default 1)")
    p.add_argument("--depth", default="2", metavar="N",
                   help="module levels shown in the layer table (default 2; 0: totals only)")
    p.add_argument("--format", choices=FORMATS, default="table")
    p.add_argument("--features-only", action="store_true", help="profile the multi-scale feature extractor")
    p.add_argument("--num-classes", default=None, metavar="N",
                   help="classifier outputs (0: no classifier; default: the model's own default)")
    p.add_argument("--backbone", help="a detector's backbone (profile fasterrcnn --backbone detnet59)")
    p.set_defaults(func=run)


def _int_option(value: str | None, option: str, minimum: int) -> int | None:
    """An integer option given as text (argparse's own type errors are two lines with the usage)."""
    if value is None:
        return None
    if not re.fullmatch(r"\d+", str(value).strip()) or int(value) < minimum:
        raise ValueError(f"expected {option} as an integer >= {minimum}, found {value!r}")
    return int(value)


def run(args: argparse.Namespace) -> int:
    from ..profiler import FORMATTERS, profile

    depth = _int_option(args.depth, "--depth", 0)
    result = profile(args.model, args.input_size, batch_size=_int_option(args.batch_size, "--batch-size", 1),
                     features_only=args.features_only,
                     num_classes=_int_option(args.num_classes, "--num-classes", 0), backbone=args.backbone)
    print(FORMATTERS[args.format](result, depth))
    return 0

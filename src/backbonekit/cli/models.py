"""``backbonekit models``: the registered models with their published figures."""

from __future__ import annotations

import argparse
import json


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list the registered models and their published figures")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'resnet*'")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..models import list_models, model_info

    infos = [model_info(name) for name in list_models(args.pattern)]
    if args.format == "json":
        print(json.dumps([{"name": i.name, "params": i.params, "gmacs": i.gmacs, "input_size": i.input_size,
                           "paper": i.paper} for i in infos], indent=2))
        return 0
    print(f"{'model':<12} {'params':>12} {'GMACs':>7} {'input':>6}  paper")
    for i in infos:
        print(f"{i.name:<12} {i.params:>12,} {i.gmacs:>7.3f} {i.input_size:>6}  {i.paper}")
    return 0

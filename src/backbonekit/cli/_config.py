"""Flags generated from a config dataclass (``train``, ``detect train``): one flag per field, and the
split of what the user gave (flags and config-file keys) from the defaults, which ``--resume`` checks."""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any, Callable, Mapping, Sequence


def add_config_flags(parser: argparse.ArgumentParser, config_class: type, help_texts: Mapping[str, str],
                     choices: Mapping[str, Sequence[str]]) -> None:
    """``--config FILE`` plus one flag per field of ``config_class`` (``--batch-size`` for ``batch_size``).

    The parser must use ``argument_default=argparse.SUPPRESS``, so that only the flags given appear in the
    parsed arguments."""
    parser.add_argument("--config", help="YAML or JSON file with any of the options below (same names, '_' for '-')")
    for f in fields(config_class):
        flag, kind = "--" + f.name.replace("_", "-"), str(f.type)
        help_text = f"{help_texts[f.name]} (default: {f.default})"
        if kind.startswith("bool"):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, help=help_text)
        elif kind.startswith("int"):
            parser.add_argument(flag, dest=f.name, type=int, metavar="N", help=help_text)
        elif kind.startswith("float"):
            parser.add_argument(flag, dest=f.name, type=float, metavar="X", help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, choices=choices.get(f.name), help=help_text)


def resolve_from_flags(args: argparse.Namespace, config_class: type,
                       read_file: Callable[[str], Mapping[str, Any]],
                       resolve: Callable[[str | None, Mapping[str, Any]], Any]) -> tuple[Any, set[str]]:
    """The config (defaults, then ``--config``, then flags) and the names the user gave explicitly."""
    names = {f.name for f in fields(config_class)}
    overrides = {k: v for k, v in vars(args).items() if k in names}  # only the flags given (SUPPRESS)
    config_file = getattr(args, "config", None)
    given = set(overrides) | (set(read_file(config_file)) if config_file else set())
    return resolve(config_file, overrides), given

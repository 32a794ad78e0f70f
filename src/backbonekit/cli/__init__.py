"""Command line: one entry point (``backbonekit``, ``python -m backbonekit``), one thin module per subcommand.

The convention every command module follows (``cli/models.py`` is the smallest example):

- ``register_cli(subparsers)`` adds the command's parser and sets ``func=run`` on it;
- ``run(args) -> int`` turns the parsed arguments into explicit keyword arguments, calls ONE library
  function (``backbonekit.export.export``, ``backbonekit.bench.benchmark``, ...), prints its result and
  returns the exit code.

Validation and work belong to the library function, so the Python API refuses what the command line
refuses; library modules never import argparse nor take a ``Namespace``. Errors in
:data:`backbonekit._text.USER_ERRORS` raised by ``run`` are printed here as one line with exit code 2.
A new command (e.g. ``cli/detect.py``) is added by writing such a module and listing it in
:data:`COMMAND_MODULES`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from .._text import USER_ERRORS, first_line

# modules that contribute subcommands, in the order they appear in --help
COMMAND_MODULES = (
    "backbonekit.cli.models",
    "backbonekit.cli.train",
    "backbonekit.cli.profile",
    "backbonekit.cli.convert",
    "backbonekit.cli.weights",
    "backbonekit.cli.export",
    "backbonekit.cli.bench",
    "backbonekit.cli.detect",
    "backbonekit.cli.anchors",
)

__all__ = ["COMMAND_MODULES", "USER_ERRORS", "build_parser", "error_line", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``backbonekit`` parser with every command module's subcommand."""
    parser = argparse.ArgumentParser(
        prog="backbonekit",
        description="Detection backbones (Darknet-53, ResNet, DetNet-59): models, profiling, training, weights, export.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register_cli(subparsers)
    return parser


def _version() -> str:
    from .. import __version__

    return __version__


def error_line(exc: BaseException) -> str:
    """The message printed for a user error: all of it, on one line."""
    return first_line(exc, limit=None, lines=None)


def _warning_printer(command: str):
    """``warnings.showwarning`` for a command: each warning on one line, ``backbonekit CMD: warning: ...``."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"backbonekit {command}: warning: {error_line(message)}", file=sys.stderr)

    return show


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the command, return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _warning_printer(args.command)
            return int(args.func(args) or 0)
    except ImportError as exc:  # an optional dependency (onnxruntime, timm, ...) is not installed
        print(f"backbonekit {args.command}: error: {error_line(exc)} (install it, or pip install "
              f"'backbonekit[dev]' for every optional dependency)", file=sys.stderr)
        return 2
    except USER_ERRORS as exc:
        print(f"backbonekit {args.command}: error: {error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"backbonekit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""Command line: one entry point, thin subcommands over the Python API.

Each command module exposes ``register_cli(subparsers)`` which adds its parser and sets
``func`` (a callable taking the parsed arguments and returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .checkpoint import CheckpointError

# modules that contribute subcommands, in the order they appear in --help
COMMAND_MODULES = (
    "backbonekit.cli_models",
    "backbonekit.train.cli",
    "backbonekit.profiler",
    "backbonekit.cli_convert",
    "backbonekit.export",
    "backbonekit.bench",
)

# what bad input or a bad environment raises: reported as one line, exit code 2
USER_ERRORS = (ValueError, KeyError, OSError, CheckpointError)


def build_parser() -> argparse.ArgumentParser:
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
    from . import __version__

    return __version__


def error_line(exc: BaseException) -> str:
    message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(str(message).split())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
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

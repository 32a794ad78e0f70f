"""Flags generated from a config dataclass (``train``, ``detect train``): one flag per field, the split of
what the user gave (flags and config-file keys) from the defaults, which ``--resume`` checks, and the run
itself (in this process, or in ``--nproc`` processes)."""

from __future__ import annotations

import argparse
import warnings
from dataclasses import fields
from typing import Any, Callable, Mapping, Sequence

from ..engine.config import AMP_MODES, DEVICES, OPTIMIZERS

# the help of the flags both trainers have (each adds its own and may say more)
RUN_FLAG_HELP = {
    "epochs": "number of epochs",
    "time": "wall-clock budget (90s, 10m, 1.5h, or minutes): after each epoch the total epochs and the "
            "learning-rate schedule are fitted to the time left, and training stops when it is spent",
    "batch_size": "images per step per process",
    "optimizer": "/".join(OPTIMIZERS),
    "momentum": "SGD momentum",
    "grad_clip": "clip the gradient norm to this value (0: off)",
    "device": "/".join(DEVICES),
    "amp": "/".join(AMP_MODES) + ": mixed precision, CUDA only",
    "seed": "random seed (weights, order, augmentation)",
    "out": "run folder (default runs/MODEL-DATASET[-N])",
}


def add_config_flags(parser: argparse.ArgumentParser, config_class: type, help_texts: Mapping[str, str],
                     choices: Mapping[str, Sequence[str]]) -> None:
    """``--config FILE`` plus one flag per field of ``config_class`` (``--batch-size`` for ``batch_size``).

    The parser must use ``argument_default=argparse.SUPPRESS``, so that only the flags given appear in the
    parsed arguments."""
    parser.add_argument("--config", help="YAML or JSON file with any of the options below (same names, '_' for '-')")
    by_name = {f.name: f for f in fields(config_class)}
    for f in by_name.values():
        parser.add_argument(as_flag(f.name), **_flag_kwargs(f, choices), help=f"{help_texts[f.name]} "
                                                                              f"(default: {f.default})")
    for old, new in getattr(config_class, "RENAMED", {}).items():  # old names, hidden from --help
        kwargs = _flag_kwargs(by_name[new], choices)
        base = kwargs.pop("action", StoreRenamed)
        parser.add_argument(as_flag(old), **kwargs, action=renamed_action(base, old, new), help=argparse.SUPPRESS)


def as_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _flag_kwargs(f: Any, choices: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """The ``add_argument`` keywords (but the help) of field ``f``'s flag."""
    kind = str(f.type)
    if kind.startswith("bool"):
        return dict(dest=f.name, action=argparse.BooleanOptionalAction)
    if kind.startswith("int"):
        return dict(dest=f.name, type=int, metavar="N")
    if kind.startswith("float"):
        return dict(dest=f.name, type=float, metavar="X")
    return dict(dest=f.name, choices=choices.get(f.name))


RENAMED_FLAGS = "renamed_flags"  # where a parsed namespace lists the old flags given, as (old, new) pairs


class StoreRenamed(argparse.Action):
    """Store the value (argparse's default action, for an old flag name)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)


def renamed_action(base: type[argparse.Action], old: str, new: str) -> type[argparse.Action]:
    """``base`` that also records on the namespace that the old flag was given (:func:`warn_renamed_flags`
    warns once the command runs, where its warnings are printed on one line)."""
    class Renamed(base):
        def __call__(self, parser, namespace, values, option_string=None) -> None:
            given = option_string or as_flag(old)
            new_flag = given.replace(old.replace("_", "-"), new.replace("_", "-"))  # --no-X too
            pairs = getattr(namespace, RENAMED_FLAGS, [])
            setattr(namespace, RENAMED_FLAGS, pairs + [(given, new_flag)])
            super().__call__(parser, namespace, values, option_string)

    return Renamed


def add_skip_bad_data_flag(parser: argparse.ArgumentParser, help: str) -> None:
    """``--skip-bad-data`` (``args.skip_bad_data``) for a command that reads a detection dataset, and its old
    name ``--skip-bad-labels`` hidden (the config field's name in both trainers)."""
    parser.add_argument("--skip-bad-data", action=argparse.BooleanOptionalAction, default=False, help=help)
    parser.add_argument("--skip-bad-labels", dest="skip_bad_data", help=argparse.SUPPRESS,
                        action=renamed_action(argparse.BooleanOptionalAction, "skip_bad_labels", "skip_bad_data"))


def warn_renamed_flags(args: argparse.Namespace) -> None:
    """One FutureWarning per old flag name given."""
    for old, new in dict(getattr(args, RENAMED_FLAGS, [])).items():
        warnings.warn(f"{old} is now {new}; the old name is read until the next release", FutureWarning,
                      stacklevel=2)


def resolve_from_flags(args: argparse.Namespace, config_class: type,
                       read_file: Callable[[str], Mapping[str, Any]],
                       resolve: Callable[[str | None, Mapping[str, Any]], Any]) -> tuple[Any, set[str]]:
    """The config (defaults, then ``--config``, then flags) and the names the user gave explicitly."""
    warn_renamed_flags(args)
    names = {f.name for f in fields(config_class)}
    overrides = {k: v for k, v in vars(args).items() if k in names}  # only the flags given (SUPPRESS)
    config_file = getattr(args, "config", None)
    from_file = read_file(config_file) if config_file else {}
    return resolve(None, {**from_file, **overrides}), set(overrides) | set(from_file)


def add_train_parser(subparsers: argparse._SubParsersAction, config_class: type, help_texts: Mapping[str, str],
                     choices: Mapping[str, Sequence[str]], run: Callable[[argparse.Namespace], int], *,
                     help: str, description: str) -> argparse.ArgumentParser:
    """The ``train`` sub-parser of a trainer: ``--config`` and one flag per field of ``config_class``, running
    ``run``."""
    parser = subparsers.add_parser("train", help=help, description=description, argument_default=argparse.SUPPRESS)
    add_config_flags(parser, config_class, help_texts, choices)
    parser.set_defaults(func=run)
    return parser


def add_evaluate_parser(subparsers: argparse._SubParsersAction, run: Callable[[argparse.Namespace], int], *,
                        help: str, checkpoint_help: str, batch_size: int, out_help: str) -> argparse.ArgumentParser:
    """The ``evaluate`` sub-parser of a trainer with the flags both have: the checkpoint, ``--dataset``, the
    device, the batch size, the report folder (``--out``, ``--force``) and ``--format``."""
    parser = subparsers.add_parser("evaluate", help=help)
    parser.add_argument("checkpoint", help=checkpoint_help)
    parser.add_argument("--dataset", help="dataset to evaluate on (default: the one it was trained on)")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--out", help=out_help)
    parser.add_argument("--force", action="store_true", help="write into an --out folder that holds other files "
                                                              "than an earlier evaluation report")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.set_defaults(func=run)
    return parser


def run_training(args: argparse.Namespace, config_class: type,
                 resolve: Callable[[str | None, Mapping[str, Any]], Any], train: Callable[..., Any],
                 launch_local: Callable[..., int]) -> int:
    """The config the flags give (:func:`resolve_from_flags`), trained by ``train(cfg, given=...)`` in this
    process, or by ``launch_local`` for ``--nproc N`` outside torchrun."""
    from ..engine import dist
    from ..engine.config import read_config_file

    cfg, given = resolve_from_flags(args, config_class, lambda path: read_config_file(path, config_class), resolve)
    if cfg.nproc > 1 and not dist.launched_by_torchrun():
        return launch_local(cfg, given=sorted(given))
    try:
        train(cfg, given=given)
    finally:
        dist.cleanup()
    return 0

"""Config files for both trainers' config dataclasses: read (YAML/JSON, every value checked against its
field's type), resolve (defaults, then a file, then flags), write; and the one-line checks their
``validate()`` share.

A trainer's config (:class:`backbonekit.train.TrainConfig`, ``DetectConfig``) is a dataclass whose fields
are plain values; ``config.yaml`` in a run folder is one, resolved. Its ``RENAMED`` class attribute maps the
fields' old names to their new ones: :func:`renamed_keys` reads old names wherever values enter (a config
file, ``resolve_*config``, a saved run's config), so files and runs written before a rename keep working.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping, TypeVar

from .._text import first_line
from ..checkpoint import atomic_open
from .budget import parse_duration

Config = TypeVar("Config")

OPTIMIZERS = ("sgd", "adamw", "adam")
DEVICES = ("auto", "cpu", "cuda")
AMP_MODES = ("auto", "none", "bf16", "fp16")
RUN_CHOICES = {"optimizer": OPTIMIZERS, "device": DEVICES, "amp": AMP_MODES}  # fields every trainer has


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    """``value`` is one of ``allowed``; one ValueError line otherwise."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, found {value!r}")


def check_range(name: str, value: float, low: float, *, high: float = math.inf, low_open: bool = False) -> None:
    """``low <= value < high`` (``low < value`` when ``low_open``) and finite, written so that NaN fails."""
    ok = (value > low if low_open else value >= low) and value < high and math.isfinite(value)
    if not ok:
        if high < math.inf:
            expected = f"in {'(' if low_open else '['}{low:g}, {high:g})"
        else:
            expected = f"{'>' if low_open else '>='} {low:g}" + ("" if isinstance(value, int) else " and finite")
        raise ValueError(f"{name} must be {expected}, found {value}")


def check_run_fields(cfg: Any) -> None:
    """The checks of the fields every trainer's config has (choices, counts, the budget, the optimizer's
    values); NaN fails every range check."""
    for name, allowed in RUN_CHOICES.items():
        check_choice(name, getattr(cfg, name), allowed)
    for name in ("epochs", "nproc"):
        check_range(name, getattr(cfg, name), 1)
    parse_duration(cfg.time)
    check_range("batch_size", cfg.batch_size, 2)  # BatchNorm cannot train on one image
    check_range("lr", cfg.lr, 0, low_open=True)
    check_range("momentum", cfg.momentum, 0, high=1)  # >= 1: the velocity never decays and SGD diverges
    for name in ("weight_decay", "grad_clip", "workers"):
        check_range(name, getattr(cfg, name), 0)


def config_keys(config_class: type) -> list[str]:
    return [f.name for f in fields(config_class)]


def renamed_keys(values: Mapping[str, Any], config_class: type, where: str | None = None) -> dict[str, Any]:
    """``values`` with the old names of ``config_class``'s fields (its ``RENAMED`` table) replaced by the new
    ones. ``where`` (a file, "flags") gets one FutureWarning per old name found (FutureWarning: Python shows
    it to a command's user, DeprecationWarning only to developers); ``None`` translates silently (a saved
    run's config, which its user did not write). An old name given beside its new name is an error."""
    renamed: Mapping[str, str] = getattr(config_class, "RENAMED", {})
    out = dict(values)
    for old, new in renamed.items():
        if old not in out:
            continue
        if new in out:
            raise ValueError(f"config keys {old!r} and {new!r}{_place(where)} name the same option "
                             f"({old!r} is its old name): give only {new!r}")
        out[new] = out.pop(old)
        if where is not None:
            warnings.warn(f"config key {old!r}{_place(where)} is now {new!r}; the old name is read until the "
                          f"next release", FutureWarning, stacklevel=2)
    return out


def _place(where: str | None) -> str:
    return f" in {where}" if where else ""


def _coerce(name: str, value: Any, where: str, config_class: type) -> Any:
    """Check a config-file value against the field's type (YAML already parsed it).

    Numeric strings are read as numbers for numeric keys: PyYAML follows YAML 1.1, where ``1e-3`` (no dot)
    is a string, not a float. ``where`` (``FILE`` or ``FILE:LINE``) goes into the error message.
    """
    default = config_class.__dataclass_fields__[name].default
    annotation = str(config_class.__dataclass_fields__[name].type)
    place = f" in {where}" if where else ""
    if value is None:
        if "None" in annotation:
            return None
        raise ValueError(f"config key {name!r}{place} cannot be empty (expected a value like {default!r})")
    if "list" in annotation and isinstance(value, list):
        return value  # the dataclass checks the items
    if annotation.startswith(("int", "float")) and isinstance(value, str):
        value = _number(name, value, annotation, place)
    if annotation.startswith("bool"):
        ok = isinstance(value, bool)
    elif annotation.startswith("int"):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif annotation.startswith("float"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:  # str
        ok = isinstance(value, (str, int, float)) and not isinstance(value, bool)
        value = str(value) if ok else value
    if not ok:
        raise ValueError(f"config key {name!r}{place} expects {annotation}, found {type(value).__name__} {value!r}")
    return value


def _number(name: str, text: str, annotation: str, place: str) -> int | float:
    """A numeric string as the key's type: ``"1e-3"`` -> 0.001 for floats, ``"64"`` -> 64 for integers."""
    try:
        return int(text.strip()) if annotation.startswith("int") else float(text.strip())
    except ValueError:
        raise ValueError(f"config key {name!r}{place} expects {annotation}, found str {text!r}") from None


def _yaml_key_lines(text: str) -> dict[str, int]:
    """1-based line of each top-level key of a YAML mapping (for error messages); empty if not a mapping."""
    import yaml

    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {str(k.value): k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}


def read_config_file(path: str | os.PathLike, config_class: type) -> dict[str, Any]:
    """Read a YAML or JSON mapping of ``config_class``'s keys (unknown keys are an error)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    is_json = path.suffix.lower() == ".json"
    try:
        data = json.loads(text) if is_json else yaml.safe_load(text)
        lines = {} if is_json else _yaml_key_lines(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot parse config file {path}: {first_line(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ValueError(f"config file {path} must hold a mapping of keys to values, found {type(data).__name__}")
    keys = config_keys(config_class)
    data = renamed_keys({str(k): v for k, v in data.items()}, config_class, str(path))
    lines = renamed_keys(lines, config_class)
    unknown = sorted(set(data) - set(keys))
    if unknown:
        raise ValueError(f"unknown keys in {path}: {', '.join(unknown)} (known: {', '.join(keys)})")
    return {k: _coerce(k, v, f"{path}:{lines[k]}" if k in lines else str(path), config_class) for k, v in data.items()}


def build_config(config_class: type[Config], config_file: str | os.PathLike | None = None,
                 overrides: Mapping[str, Any] | None = None) -> Config:
    """Dataclass defaults, updated by ``config_file``, updated by ``overrides`` (command-line flags win)."""
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(read_config_file(config_file, config_class))
    values.update(renamed_keys(overrides or {}, config_class, "the overrides"))
    unknown = sorted(set(values) - set(config_keys(config_class)))
    if unknown:
        raise ValueError(f"unknown config keys: {', '.join(unknown)}")
    return config_class(**values)


def write_config(cfg: Any, path: str | os.PathLike) -> None:
    """Write the resolved config (``cfg.to_dict()``) as YAML: rerunning the trainer with ``--config`` on it
    repeats the run."""
    import yaml

    data = cfg.to_dict()
    data["resume"] = None  # the file describes the run, not how this process was started
    with atomic_open(path) as f:
        f.write(yaml.safe_dump(data, sort_keys=False).encode("utf-8"))

"""One typed training configuration: dataclass defaults, then a YAML/JSON file, then command-line flags."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from .._text import first_line
from ..checkpoint import atomic_open
from ..engine.budget import parse_duration

OPTIMIZERS = ("sgd", "adamw", "adam")
SCHEDULES = ("onecycle", "cosine")
DEVICES = ("auto", "cpu", "cuda")
AMP_MODES = ("auto", "none", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Everything that decides a training run; ``config.yaml`` in the run folder is this, resolved.

    The defaults are the README quickstart: Darknet-53 on scikit-learn's digits, SGD + one-cycle,
    2-pixel random translation, 4 epochs (>= 98% test accuracy in a few minutes on a 2-core CPU).
    ``zero_init_residual`` (from scratch only) starts each residual branch at zero: without it
    Darknet-53 diverges within a few SGD steps at this learning rate.
    ``None`` means "the dataset's default" (image size, crop padding, flip).
    ``time``: a wall-clock budget (``90s``, ``10m``, ``1.5h``, or minutes): the epochs and the schedule are
    fitted to it after each epoch (:mod:`.budget`); ``epochs`` then only sizes the first epoch's schedule.
    """

    model: str = "darknet53"
    dataset: str = "digits"
    data_dir: str = "data"
    download: bool = True
    epochs: int = 4
    time: str | None = None
    batch_size: int = 64
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    grad_clip: float = 0.0
    image_size: int | None = None
    crop_padding: int | None = None
    hflip: bool | None = None
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool = True
    deterministic: bool = False
    seed: int = 0
    workers: int = 2
    out: str | None = None
    resume: str | None = None
    pretrained: str | None = None
    zero_init_residual: bool = True
    sync_bn: bool = False
    nproc: int = 1
    skip_bad_images: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise one-line ValueErrors for values no run can use (NaN fails every range check)."""
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("device", self.device, DEVICES)
        _choice("amp", self.amp, AMP_MODES)
        for name in ("epochs", "nproc"):
            _in_range(name, getattr(self, name), 1)
        parse_duration(self.time)
        _in_range("batch_size", self.batch_size, 2)  # BatchNorm cannot train on one image
        _in_range("lr", self.lr, 0, low_open=True)
        _in_range("momentum", self.momentum, 0, high=1)  # >= 1: the velocity never decays and SGD diverges
        _in_range("label_smoothing", self.label_smoothing, 0, high=1)
        for name in ("weight_decay", "grad_clip", "warmup_epochs", "workers"):
            _in_range(name, getattr(self, name), 0)
        if self.image_size is not None:
            _in_range("image_size", self.image_size, 8)
        if self.crop_padding is not None:
            _in_range("crop_padding", self.crop_padding, 0)
            if self.image_size is not None:
                check_crop_padding(self.crop_padding, self.image_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, found {value!r}")


def _in_range(name: str, value: float, low: float, *, high: float = math.inf, low_open: bool = False) -> None:
    """``low <= value < high`` (``low < value`` when ``low_open``) and finite, written so that NaN fails."""
    ok = (value > low if low_open else value >= low) and value < high and math.isfinite(value)
    if not ok:
        if high < math.inf:
            expected = f"in {'(' if low_open else '['}{low:g}, {high:g})"
        else:
            expected = f"{'>' if low_open else '>='} {low:g}" + ("" if isinstance(value, int) else " and finite")
        raise ValueError(f"{name} must be {expected}, found {value}")


def check_crop_padding(padding: int, image_size: int) -> None:
    """A crop must keep part of the image: padding >= size gives blank crops and a padded copy of the
    split that grows with the square of the padding."""
    if not 0 <= padding < image_size:
        raise ValueError(f"crop_padding must be in [0, image_size) = [0, {image_size}), found {padding}")


def config_keys(config_class: type = TrainConfig) -> list[str]:
    return [f.name for f in fields(config_class)]


def _coerce(name: str, value: Any, where: str = "", config_class: type = TrainConfig) -> Any:
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


def read_config_file(path: str | os.PathLike, config_class: type = TrainConfig) -> dict[str, Any]:
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
    unknown = sorted(set(map(str, data)) - set(keys))
    if unknown:
        raise ValueError(f"unknown keys in {path}: {', '.join(unknown)} (known: {', '.join(keys)})")
    return {k: _coerce(k, v, f"{path}:{lines[k]}" if k in lines else str(path), config_class) for k, v in data.items()}


def resolve_config(config_file: str | os.PathLike | None = None,
                   overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Dataclass defaults, updated by ``config_file``, updated by ``overrides`` (command-line flags win)."""
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(read_config_file(config_file))
    values.update({k: v for k, v in (overrides or {}).items()})
    unknown = sorted(set(values) - set(config_keys()))
    if unknown:
        raise ValueError(f"unknown config keys: {', '.join(unknown)}")
    return TrainConfig(**values)


def write_config(cfg: TrainConfig, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (rerunning ``train --config`` on it repeats the run)."""
    import yaml

    data = cfg.to_dict()
    data["resume"] = None  # the file describes the run, not how this process was started
    with atomic_open(path) as f:
        f.write(yaml.safe_dump(data, sort_keys=False).encode("utf-8"))

"""Model registry: ``@register_model`` entry points, ``list_models`` and model metadata."""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Callable

from torch import nn


@dataclass(frozen=True)
class ModelInfo:
    """Published facts about a registered model, checked against the real model by the tests."""

    name: str
    paper: str
    input_size: int  # the resolution the published figures refer to
    params: int  # with a 1000-class head, BatchNorm affine parameters included
    gmacs: float  # conv + linear multiply-adds (G) at input_size x input_size, batch 1, as published
    source: str = ""  # where `params`/`macs` come from
    extra: dict = field(default_factory=dict)
    task: str = "classification"  # "classification" (backbones with a classifier) or "detection" (detectors)


_ENTRY_POINTS: dict[str, Callable[..., nn.Module]] = {}
_INFO: dict[str, ModelInfo] = {}


def register_model(info: ModelInfo) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder under ``info.name``; a second registration of the same name is an error."""

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if info.name in _ENTRY_POINTS:
            raise ValueError(f"model {info.name!r} is already registered")
        _ENTRY_POINTS[info.name] = fn
        _INFO[info.name] = info
        return fn

    return decorator


TASKS = ("classification", "detection")


def list_models(pattern: str = "*", task: str | None = "classification") -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (``'resnet*'``), sorted.

    ``task``: ``"classification"`` (the backbones, the default), ``"detection"`` (detectors such as
    ``yolov3``), or ``None`` for every model.
    """
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)} or None, found {task!r}")
    return sorted(name for name in _ENTRY_POINTS
                  if fnmatch.fnmatch(name, pattern) and (task is None or _INFO[name].task == task))


def _unknown(name: str) -> KeyError:
    close = difflib.get_close_matches(name, list(_ENTRY_POINTS), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return KeyError(f"unknown model {name!r}: expected one of {', '.join(list_models(task=None))}{hint}")


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    if name not in _ENTRY_POINTS:
        raise _unknown(name)
    return _ENTRY_POINTS[name]


def model_info(name: str) -> ModelInfo:
    """Published parameter / MAC figures and the paper of a registered model."""
    if name not in _INFO:
        raise _unknown(name)
    return _INFO[name]

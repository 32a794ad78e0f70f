"""Pretrained weights from local files: this package's checkpoints, torchvision and timm state_dicts.

The layout of a state_dict is detected from its keys, converted to this package's module
names by one mapping function per layout, and loaded strictly: a key that is missing or left
over is an error, never a silent partial load.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from torch import Tensor, nn

from .checkpoint import CheckpointError, load_file

TIMM_DARKNET_SLOPE = 0.01  # timm maps 'leaky_relu' to nn.LeakyReLU() with its default slope


def read_weights(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Return ``(state_dict, metadata)`` from a checkpoint file of any supported kind.

    ``metadata`` holds ``model`` and ``model_kwargs`` when the file was written by backbonekit.
    """
    path = Path(path)
    obj = load_file(path)
    meta: dict[str, Any] = {}
    if isinstance(obj, Mapping) and obj.get("format") == "backbonekit":
        meta = {"model": obj.get("model"), "model_kwargs": dict(obj.get("model_kwargs") or {})}
        obj = obj.get("state_dict")
    elif isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]  # common wrappers: Lightning, mmengine
    elif isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]  # timm train.py / DeiT-style wrappers
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"cannot use {path}: expected a state_dict (a mapping of names to tensors), "
                              f"found {type(obj).__name__}")
    state = {k.removeprefix("module."): v for k, v in obj.items()}  # DDP-saved files
    return state, meta


def detect_layout(state: Mapping[str, Tensor]) -> str:
    """'timm-darknet', 'darknet' (this package), 'resnet' (torchvision/timm/this package) or 'unknown'."""
    if "stem.conv1.conv.weight" in state:
        return "timm-darknet"
    if "stem.conv.weight" in state:
        return "darknet"
    if "conv1.weight" in state and "layer1.0.conv1.weight" in state:
        return "resnet"
    return "unknown"


def timm_darknet_to_backbonekit(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """timm's ``darknet53`` keys differ only in the stem: ``stem.conv1.{conv,bn}`` -> ``stem.{conv,bn}``."""
    return {("stem." + k[len("stem.conv1."):] if k.startswith("stem.conv1.") else k): v for k, v in state.items()}


def backbonekit_darknet_to_timm(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {("stem.conv1." + k[len("stem."):] if k.startswith("stem.") else k): v for k, v in state.items()}


def architecture_overrides(layout: str) -> dict[str, Any]:
    """Architecture arguments a layout implies: timm's darknet53 was trained with LeakyReLU(0.01)."""
    return {"act_slope": TIMM_DARKNET_SLOPE} if layout == "timm-darknet" else {}


def to_backbonekit(state: Mapping[str, Tensor], layout: str) -> dict[str, Tensor]:
    return timm_darknet_to_backbonekit(state) if layout == "timm-darknet" else dict(state)


def _head_keys(model: nn.Module) -> set[str]:
    head = getattr(model, "head", None)
    if head is not None:
        return {f"head.{k}" for k in head.state_dict()}
    fc = getattr(model, "fc", None)
    return {f"fc.{k}" for k in fc.state_dict()} if fc is not None else set()


def load_into(model: nn.Module, state: Mapping[str, Tensor], source: str = "checkpoint") -> list[str]:
    """Strictly load ``state`` (already in this package's names) into ``model``.

    The classifier is skipped, and reported, when its shape differs from the checkpoint's (fine-tuning
    to another number of classes). Returns the names of the skipped classifier keys.
    """
    own = model.state_dict()
    head = _head_keys(model)
    skipped = sorted(k for k in head if k in state and state[k].shape != own[k].shape)
    state = {k: v for k, v in state.items() if k not in skipped}
    missing = sorted(set(own) - set(state) - set(skipped))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not fit {type(model).__name__}: {len(missing)} missing keys "
            f"{_few(missing)}, {len(unexpected)} unexpected keys {_few(unexpected)}"
        )
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state if state[k].shape != own[k].shape]
    if wrong:
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: shape mismatch "
                              f"(checkpoint vs model) for {len(wrong)} tensors, e.g. {wrong[0]}")
    model.load_state_dict(state, strict=False)  # every key checked above; skipped head keys stay initialised
    return skipped


def _few(keys: list[str], n: int = 3) -> str:
    return "[" + ", ".join(keys[:n]) + (", ..." if len(keys) > n else "") + "]"

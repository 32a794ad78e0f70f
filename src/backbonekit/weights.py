"""Pretrained weights from local files: this package's checkpoints, torchvision and timm state_dicts,
``.safetensors`` files and Darknet's own ``.weights`` files (see ``backbonekit.darknet_weights``).

The layout of a state_dict is detected from its keys, converted to this package's module
names by one mapping function per layout, and loaded strictly: a key that is missing or left
over is an error, never a silent partial load.
"""

from __future__ import annotations

import json
import os
import re
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple

import torch
from torch import Tensor, nn

from ._text import few, first_line
from .checkpoint import (CheckpointError, atomic_open, atomic_save, check_not_input, check_output, load_file,
                         refuse_onnx)
from .models.darknet import DARKNET_SLOPE

TIMM_DARKNET_SLOPE = 0.01  # timm maps 'leaky_relu' to nn.LeakyReLU() with its default slope
SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors format's own limit on its JSON header


def detect_file_format(path: str | os.PathLike) -> str:
    """'torch', 'safetensors' or 'darknet', from the file's first bytes (never from its name).

    An exported ONNX file is refused with one line saying what runs it. Anything that is neither a
    torch.save file (a zip, or a legacy pickle) nor a safetensors file (an 8-byte header length followed
    by JSON) is handed to the Darknet reader, which checks its header version and size and refuses it
    with one line if it is not Darknet weights either.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: expected a file at {path}")
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors first: its header length may start with the byte 0x80 that also starts a legacy pickle
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < SAFETENSORS_MAX_HEADER:
        return "safetensors"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "torch"
    refuse_onnx(path, head)
    return "darknet"


class Weights(NamedTuple):
    """A weights file, read once: pass it on (``create_model(pretrained=...)``) instead of its path."""

    state: dict[str, Tensor]  # the file's own names (see :func:`detect_layout`)
    meta: dict[str, Any]  # see :func:`read_weights`; ``path`` names the file


def read_weights(path: str | os.PathLike) -> Weights:
    """Return ``(state_dict, metadata)`` from a weights file of any supported kind.

    Kinds: torch.save files (backbonekit checkpoints, torchvision/timm state_dicts, common wrappers),
    ``.safetensors`` files, and Darknet weights (``darknet53.weights``, ``darknet53.conv.74``),
    told apart by content. ``metadata`` has ``format`` ('backbonekit', 'torch', 'safetensors' or
    'darknet'), and ``model`` and ``model_kwargs`` when the file records them (backbonekit
    checkpoints and safetensors files, Darknet files: darknet53 with act_slope 0.1).
    ``backbone_only`` is set for files without a classifier that say so (Darknet backbone files like
    ``darknet53.conv.74``, and backbonekit checkpoints and safetensors files written without one).
    """
    path = Path(path)
    kind = detect_file_format(path)
    if kind == "darknet":
        return _checked(*_read_darknet(path), path)
    obj, meta = _read_safetensors(path) if kind == "safetensors" else _unwrap(load_file(path))
    return _checked(obj, meta, path)


def weights_from_checkpoint(obj: Any, path: str | os.PathLike) -> Weights:
    """:func:`read_weights` of an object already loaded from ``path`` with :func:`backbonekit.checkpoint.load_file`
    (so that a caller that needs the rest of a checkpoint reads the file once)."""
    return _checked(*_unwrap(obj), Path(path))


def _checked(obj: Any, meta: dict[str, Any], path: Path) -> Weights:
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"cannot use {path}: expected a state_dict (a mapping of names to tensors), "
                              f"found {type(obj).__name__}")
    state = {k.removeprefix("module."): v for k, v in obj.items()}  # DDP-saved files
    return Weights(state, {**meta, "path": str(path)})


def architecture_kwargs(state: Mapping[str, Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    """The architecture arguments a weights file needs: those it records (``model_kwargs``), then those its
    layout implies (timm's darknet53: LeakyReLU slope 0.01)."""
    return {**dict(meta.get("model_kwargs") or {}), **architecture_overrides(detect_layout(state))}


def _unwrap(obj: Any) -> tuple[Any, dict[str, Any]]:
    """The state_dict inside a torch.save object, and what the wrapper says about it."""
    if isinstance(obj, Mapping) and obj.get("format") == "backbonekit":
        meta = {"format": "backbonekit", "model": obj.get("model"), "model_kwargs": dict(obj.get("model_kwargs") or {}),
                "backbone_only": bool(obj.get("backbone_only"))}
        return obj.get("state_dict"), meta
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        return obj["state_dict"], {"format": "torch"}  # common wrappers: Lightning, mmengine
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        return obj["model"], {"format": "torch"}  # timm train.py / DeiT-style wrappers
    return obj, {"format": "torch"}


def _read_darknet(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    from .darknet_weights import read_darknet_weights

    state, info = read_darknet_weights(path)
    meta = {"format": "darknet", "model": "darknet53", "model_kwargs": {"act_slope": DARKNET_SLOPE},
            "backbone_only": not info.has_classifier, "darknet": info}
    return state, meta


def _import_safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError:
        raise CheckpointError("reading or writing .safetensors needs the safetensors package, found it not "
                              "installed (pip install 'backbonekit[export]')") from None
    return safetensors


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    safetensors = _import_safetensors()
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            header = dict(f.metadata() or {})
            state = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as exc:  # bad JSON header, truncated data, ...
        raise CheckpointError(f"cannot read {path}: expected a valid safetensors file, found "
                              f"an unreadable one ({first_line(exc)})") from None
    meta: dict[str, Any] = {"format": "safetensors", "backbone_only": header.get("backbone_only") == "true"}
    if header.get("model"):
        meta["model"] = header["model"]
    if header.get("model_kwargs"):
        try:
            meta["model_kwargs"] = dict(json.loads(header["model_kwargs"]))
        except (ValueError, TypeError):
            raise CheckpointError(f"cannot read {path}: expected JSON object in its model_kwargs metadata, "
                                  f"found {header['model_kwargs'][:100]!r}") from None
    return state, meta


def write_safetensors(state: Mapping[str, Tensor], path: str | os.PathLike, model: str | None = None,
                      model_kwargs: Mapping[str, Any] | None = None, backbone_only: bool = False) -> None:
    """Write ``state`` as a ``.safetensors`` file (atomically), recording the model, its architecture
    arguments (e.g. ``act_slope``) and whether it lacks the classifier in the file's metadata."""
    safetensors = _import_safetensors()
    metadata = {"format": "pt", "producer": "backbonekit"}
    if model:
        metadata["model"] = model
    if model_kwargs:
        metadata["model_kwargs"] = json.dumps(dict(model_kwargs), sort_keys=True)
    if backbone_only:
        metadata["backbone_only"] = "true"
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    try:
        data = safetensors.torch.save(tensors, metadata=metadata)
    except Exception as exc:  # shared storage, unsupported dtype
        raise CheckpointError(f"cannot write {path} as safetensors: {first_line(exc)}") from None
    with atomic_open(path) as f:
        f.write(data)


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


BN_COUNTER = "num_batches_tracked"


def reconcile_batchnorm_counters(state: Mapping[str, Tensor], own_keys: Iterable[str]) -> dict[str, Tensor]:
    """``state`` with BatchNorm's ``num_batches_tracked`` counters made to match the model's keys.

    A counter the model has and the file lacks, for a norm whose ``running_mean`` the file holds, is
    set to 0, as ``BatchNorm2d`` itself does on load (files written before PyTorch 0.4.1, such as
    torchvision's ``resnet50-19c8e357.pth``, and many converted files have none). A counter the file
    has for a norm the model keeps without one (``FrozenBatchNorm2d``) is dropped. Every other key
    is left for the strict check.
    """
    own = set(own_keys)
    suffix = "." + BN_COUNTER

    def sibling(key: str) -> str:
        return key[: -len(BN_COUNTER)] + "running_mean"

    out = {k: v for k, v in state.items() if not (k.endswith(suffix) and k not in own and sibling(k) in own)}
    for key in own:
        if key.endswith(suffix) and key not in out and sibling(key) in out:
            out[key] = torch.tensor(0, dtype=torch.long)
    return out


CLASSIFIER_PREFIXES = ("fc.", "head.")  # ResNet/DetNet (torchvision names), Darknet (timm names)


def _head_keys(model: nn.Module) -> set[str]:
    head = getattr(model, "head", None)
    if head is not None:
        return {f"head.{k}" for k in head.state_dict()}
    fc = getattr(model, "fc", None)
    return {f"fc.{k}" for k in fc.state_dict()} if fc is not None else set()


def check_fits(model: nn.Module, state: Mapping[str, Tensor], source: str = "checkpoint",
               allow_missing_head: bool = False) -> list[str]:
    """Raise one CheckpointError line unless ``state`` (this package's names) fits ``model`` exactly.

    Returns the classifier keys to skip: those whose shape differs from the model's (fine-tuning to
    another number of classes) and, with ``allow_missing_head``, those the file does not have.
    """
    own = model.state_dict()
    state = reconcile_batchnorm_counters(state, own)
    head = _head_keys(model)
    if not head:  # a model built without a classifier (num_classes=0) takes a file's backbone part
        state = {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_PREFIXES)}
    skipped = sorted(k for k in head if k in state and state[k].shape != own[k].shape)
    absent_head = sorted(k for k in head if k not in state) if allow_missing_head else []
    state = {k: v for k, v in state.items() if k not in skipped}
    missing = sorted(set(own) - set(state) - set(skipped) - set(absent_head))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not fit {type(model).__name__}: {len(missing)} missing keys "
            f"{few(missing)}, {len(unexpected)} unexpected keys {few(unexpected)}"
        )
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state if state[k].shape != own[k].shape]
    if wrong:
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: shape mismatch "
                              f"(checkpoint vs model) for {len(wrong)} tensors, e.g. {wrong[0]}")
    return skipped


def load_into(model: nn.Module, state: Mapping[str, Tensor], source: str = "checkpoint",
              allow_missing_head: bool = False) -> list[str]:
    """Strictly load ``state`` (already in this package's names) into ``model``.

    The classifier is skipped, and reported, when its shape differs from the checkpoint's (fine-tuning
    to another number of classes); with ``allow_missing_head`` (a backbone-only file such as
    ``darknet53.conv.74``) a classifier absent from ``state`` stays initialised. Returns the names
    of the skipped classifier keys of another shape.
    """
    skipped = check_fits(model, state, source, allow_missing_head)
    own = model.state_dict().keys()
    state = reconcile_batchnorm_counters(state, own)
    kept = {k: v for k, v in state.items() if k not in skipped and k in own}
    model.load_state_dict(kept, strict=False)  # every key was checked above
    return skipped


# -- conversion between formats ----------------------------------------------------------------
OUTPUT_FORMATS = ("darknet", "timm", "torchvision", "backbonekit", "safetensors")


@dataclass
class Conversion:
    """What :func:`convert_weights` read and wrote."""

    src: Path
    dst: Path
    src_format: str
    dst_format: str
    model: str
    model_kwargs: dict[str, Any]
    num_tensors: int
    notes: list[str] = field(default_factory=list)


def output_format_for(path: str | os.PathLike) -> str:
    """The output format a file name implies: ``.weights``/``.conv.N`` Darknet, ``.safetensors``,
    ``.pth``/``.pt``/``.ckpt`` a backbonekit checkpoint."""
    name = Path(path).name
    if name.endswith(".weights") or re.search(r"\.conv\.\d+$", name):
        return "darknet"
    if name.endswith(".safetensors"):
        return "safetensors"
    if name.endswith((".pth", ".pt", ".ckpt")):
        return "backbonekit"
    raise ValueError(f"cannot tell the output format from the name {name!r}: expected a name ending in .weights, "
                     f".conv.N, .safetensors, .pth, .pt or .ckpt, or an explicit format ({', '.join(OUTPUT_FORMATS)})")


def num_classes_in(state: Mapping[str, Tensor]) -> int:
    """Classifier outputs of a state_dict in this package's names (0 when it has no classifier)."""
    for key in ("head.fc.weight", "fc.weight"):
        if key in state:
            return int(state[key].shape[0])
    return 0


def _build_on_meta(name: str, state: Mapping[str, Tensor], kwargs: Mapping[str, Any]) -> nn.Module:
    """The model ``state`` claims to be, built without allocating its weights (only for checking)."""
    from .models._builder import create_model

    try:
        with torch.device("meta"):
            return create_model(name, num_classes=num_classes_in(state), **kwargs)
    except TypeError as exc:  # an architecture argument recorded for another model
        raise CheckpointError(f"cannot build {name} with the arguments {dict(kwargs)}: {first_line(exc)}") from None


def infer_model_name(state: Mapping[str, Tensor], layout: str) -> str:
    """The registered model whose keys and shapes ``state`` (this package's names) fits exactly."""
    from .models import list_models

    if layout in ("darknet", "timm-darknet"):
        return "darknet53"
    for name in list_models():
        try:
            check_fits(_build_on_meta(name, state, {}), state)
        except (CheckpointError, TypeError, ValueError):
            continue
        return name
    raise CheckpointError(f"cannot tell which model these weights are for: expected the keys and shapes of one of "
                          f"{', '.join(list_models())}, found none that fits ({len(state)} tensors, keys like "
                          f"{few(sorted(state))}); name it with --model")


def _slope_notes(name: str, slope: float | None, dst_format: str) -> list[str]:
    """Darknet computes LeakyReLU with slope 0.1, timm's darknet53 with 0.01: weights trained with one
    compute a different function under the other."""
    if not name.startswith("darknet") or slope is None:
        return []
    if dst_format == "timm" and slope != TIMM_DARKNET_SLOPE:
        return [f"timm's darknet53 computes LeakyReLU with slope {TIMM_DARKNET_SLOPE} but these weights were "
                f"trained with {slope}: build the timm model with act_layer=functools.partial(torch.nn.LeakyReLU, "
                f"negative_slope={slope}) or its outputs will differ"]
    if dst_format == "darknet" and slope != DARKNET_SLOPE:
        return [f"Darknet computes LeakyReLU with slope {DARKNET_SLOPE} but these weights were trained with {slope} "
                f"(timm's darknet53): Darknet, and create_model on the written file, will compute a different "
                f"function unless given act_slope={slope}"]
    return []


def write_weights(state: Mapping[str, Tensor], path: str | os.PathLike, dst_format: str, model: str,
                  model_kwargs: Mapping[str, Any]) -> None:
    """Write ``state`` (this package's names, already checked against ``model``) in ``dst_format``.

    A ``state`` without a classifier is written as a backbone-only file (Darknet: like
    ``darknet53.conv.74``; backbonekit and safetensors: marked ``backbone_only`` so that
    ``create_model`` leaves the classifier initialised).
    """
    backbone_only = num_classes_in(state) == 0
    if dst_format == "darknet":
        from .darknet_weights import write_darknet_weights

        if model != "darknet53":
            raise ValueError(f"the Darknet weights format holds darknet53 only, found {model}")
        write_darknet_weights(state, path, include_classifier=not backbone_only)
    elif dst_format in ("timm", "torchvision"):
        if not (model.startswith("resnet") or (dst_format == "timm" and model == "darknet53")):
            raise ValueError(f"{dst_format} has no model with this package's {model} layout: expected "
                             f"{'darknet53 or ' if dst_format == 'timm' else ''}a resnet, found {model}; "
                             f"write backbonekit or safetensors instead")
        atomic_save(backbonekit_darknet_to_timm(state) if model == "darknet53" else dict(state), path)
    elif dst_format == "backbonekit":
        atomic_save({"format": "backbonekit", "model": model, "model_kwargs": dict(model_kwargs),
                     "backbone_only": backbone_only, "state_dict": dict(state)}, path)
    elif dst_format == "safetensors":
        write_safetensors(state, path, model, model_kwargs, backbone_only)
    else:
        raise ValueError(f"output format must be one of {', '.join(OUTPUT_FORMATS)}, found {dst_format!r}")


TRAINING_RECORD = ("config", "preprocessing", "history")  # what backbonekit train's best.pt/last.pt add


def _held_by(path: Path) -> set[str] | None:
    """What an existing weights file holds that a converted file may lack; None for a file that is not one."""
    try:
        if detect_file_format(path) == "torch":
            obj = load_file(path)
            weights = weights_from_checkpoint(obj, path)
            trained = isinstance(obj, Mapping) and any(key in obj for key in TRAINING_RECORD)
        else:
            weights, trained = read_weights(path), False
    except (CheckpointError, OSError):
        return None
    held = {"a training record (config, preprocessing, history)"} if trained else set()
    layout = detect_layout(weights.state)
    if num_classes_in(to_backbonekit(weights.state, layout)) > 0:
        held.add("a classifier")
    return held


def check_destination(src: Path, dst: Path) -> None:
    """A conversion never writes over its own source (nor through a link to it)."""
    check_not_input(dst, [src])


def lost_by_replacing(dst: Path, has_classifier: bool) -> str | None:
    """What writing a converted file over ``dst`` would lose (None: nothing, so it may be replaced): a training
    record or a classifier the output lacks, or the whole file when it is not a weights file at all."""
    if dst.is_dir():
        return "is a folder"
    held = _held_by(dst)
    if held is None:
        return "is not a weights file this package reads (it would be lost)"
    lost = held - ({"a classifier"} if has_classifier else set())
    return f"holds {' and '.join(sorted(lost))}, which the converted file would not" if lost else None


def _check_nothing_lost(dst: Path, has_classifier: bool, force: bool = False) -> None:
    check_output(dst, force=force, replaceable=lambda path: lost_by_replacing(path, has_classifier))


def convert_weights(src: str | os.PathLike, dst: str | os.PathLike, *, model: str | None = None,
                    to: str | None = None, backbone_only: bool = False, force: bool = False) -> Conversion:
    """Convert a weights file between Darknet ``.weights``, timm and torchvision state_dicts, backbonekit
    checkpoints and ``.safetensors``.

    The source kind and layout are read from its content; the output format is ``to`` or implied by
    ``dst``'s name (:func:`output_format_for`). The weights are checked strictly against ``model``
    (default: recorded in the file, else inferred from its keys) before anything is written.
    Architecture arguments the weights need (Darknet-53's LeakyReLU ``act_slope``) are recorded in
    backbonekit checkpoints and safetensors metadata; where the target cannot record them (timm,
    Darknet) and its own slope differs, a warning says so. ``backbone_only`` drops the classifier.

    ``dst`` may not be ``src`` (nor a link to it). An existing ``dst`` that holds what the output would
    not (a training checkpoint's config, preprocessing and history; a classifier), or that is not a
    weights file at all, is refused unless ``force``.
    """
    src, dst = Path(src), Path(dst)
    check_destination(src, dst)
    dst_format = to or output_format_for(dst)
    if dst_format not in OUTPUT_FORMATS:
        raise ValueError(f"output format must be one of {', '.join(OUTPUT_FORMATS)}, found {dst_format!r}")
    state, meta = read_weights(src)
    layout = detect_layout(state)
    if layout == "unknown":
        raise CheckpointError(f"cannot convert {src}: expected darknet53 (timm or backbonekit names) or ResNet-style "
                              f"keys, found keys like {few(sorted(state))}")
    kwargs = architecture_kwargs(state, meta)
    state = to_backbonekit(state, layout)
    if model and meta.get("model") and model != meta["model"]:
        raise CheckpointError(f"{src} records weights for {meta['model']}, found --model {model}")
    name = model or meta.get("model") or infer_model_name(state, layout)
    checked = _build_on_meta(name, state, kwargs)
    state = reconcile_batchnorm_counters(state, checked.state_dict())
    check_fits(checked, state, source=f"weights file {src}")
    if hasattr(checked, "act_slope"):
        kwargs["act_slope"] = checked.act_slope  # record the slope the weights compute with, default included
    dropped = _head_keys(checked) if backbone_only else set()
    state = {k: state[k] for k in checked.state_dict() if k in state and k not in dropped}  # the model's order
    _check_nothing_lost(dst, has_classifier=num_classes_in(state) > 0, force=force)
    notes = _slope_notes(name, kwargs.get("act_slope"), dst_format)
    for note in notes:
        warnings.warn(note, stacklevel=2)
    write_weights(state, dst, dst_format, name, kwargs)
    return Conversion(src, dst, meta.get("format", "torch"), dst_format, name, kwargs, len(state), notes)

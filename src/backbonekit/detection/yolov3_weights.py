"""YOLOv3's Darknet ``.weights`` files (``yolov3.weights``, ``yolov3-voc.weights``, ...) and pretrained loading.

The file is :mod:`backbonekit.darknet_weights`'s format (same header, same per-conv arrays) over
the layers of ``cfg/yolov3.cfg`` in order: Darknet-53's 52 convs (layers 0-73), then per output level
(stride 32, 16, 8) the lateral 1x1 (levels 2 and 3: layers 84, 96), the five detection-block convs
(75-79, 87-91, 99-103), the 3x3 bridge (80, 92, 104) and the 1x1 output conv with bias and no
BatchNorm (81, 93, 105). Only the three output convs depend on the class count, so a file's size
tells it: ``floats = fixed + 3 * (1024 + 512 + 256 + 3) * (5 + C)`` for the standard widths.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from ..checkpoint import CheckpointError, atomic_open
from ..darknet_weights import (FLOAT, ConvLayer, DarknetHeader, _array_for, _read_arrays, _tensor_slots,
                               _where_reading_stops, darknet_float_counts, darknet_layers, inspect_darknet_file,
                               read_header, warn_assumed)
from ..onnx_meta import IMAGENET_MEAN, IMAGENET_STD
from .task.anchors import YOLOV3_MASKS
from .models.neck import YOLOV3_NECK_CHANNELS

BACKBONE_CHANNELS = (256, 512, 1024)  # Darknet-53's C3, C4, C5
FIRST_NECK_LAYER = 75  # cfg index after the backbone's last [shortcut] (74)


def yolov3_layers(num_classes: int, neck_channels: Sequence[int] = YOLOV3_NECK_CHANNELS,
                  num_anchors: Sequence[int] = (3, 3, 3)) -> list[ConvLayer]:
    """The conv layers of ``cfg/yolov3.cfg`` in file order, named as :class:`YOLOv3`'s modules."""
    layers = [dataclasses.replace(layer, module=f"backbone.{layer.module}") for layer in darknet_layers(num_classes=0)]
    index, in_ch = FIRST_NECK_LAYER, BACKBONE_CHANNELS[-1]
    for level, (n, anchors) in enumerate(zip(neck_channels, num_anchors)):
        if level:
            index += 1  # [route] layers=-4: back to the previous detection block's output
            layers.append(ConvLayer(index, f"neck.conv{level}", neck_channels[level - 1] // 2,
                                    neck_channels[level - 1], 1))
            index += 3  # this conv, [upsample], [route] layers=-1, <backbone map>
            in_ch = neck_channels[level - 1] // 2 + BACKBONE_CHANNELS[-1 - level]
        for k, (out_ch, kernel) in enumerate(((n, 1), (2 * n, 3), (n, 1), (2 * n, 3), (n, 1))):
            layers.append(ConvLayer(index, f"neck.detect{level + 1}.conv{k + 1}", out_ch, in_ch if k == 0 else
                                    (n if kernel == 3 else 2 * n), kernel))
            index += 1
        layers.append(ConvLayer(index, f"head.convs_bridge.{level}", 2 * n, n, 3))
        layers.append(ConvLayer(index + 1, f"head.convs_pred.{level}", anchors * (5 + num_classes), 2 * n, 1,
                                batch_norm=False))
        index += 3  # bridge, output conv, [yolo]
    return layers


def _count(layers: Sequence[ConvLayer]) -> int:
    return sum(layer.num_floats for layer in layers)


def classes_from_float_count(num_floats: int, neck_channels: Sequence[int] = YOLOV3_NECK_CHANNELS) -> int | None:
    """The class count a detector file of ``num_floats`` values holds, or None if it fits none."""
    base = _count(yolov3_layers(0, neck_channels))
    per_attribute = _count(yolov3_layers(1, neck_channels)) - base  # one more output per anchor
    classes, rest = divmod(num_floats - base, per_attribute)
    return classes if rest == 0 and classes >= 1 else None


@dataclass
class DarknetDetectorInfo:
    header: DarknetHeader
    num_floats: int
    num_classes: int  # 0 for a backbone file (darknet53.conv.74, darknet53.weights)


def inspect_yolov3_file(path: str | os.PathLike, neck_channels: Sequence[int] = YOLOV3_NECK_CHANNELS
                        ) -> DarknetDetectorInfo:
    """Header and class count of a Darknet file: a YOLOv3 detector of any class count, or Darknet-53's
    backbone files; anything else is refused with one line (expected and found float counts, where
    reading stopped)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: expected a file at {path}")
    backbone_counts = darknet_float_counts()

    def fits(nbytes: int) -> bool:
        floats, stray = divmod(nbytes, FLOAT.itemsize)
        return not stray and (floats in backbone_counts or classes_from_float_count(floats, neck_channels) is not None)

    header = read_header(path, fits)
    payload = path.stat().st_size - header.nbytes
    num_floats, stray = divmod(payload, FLOAT.itemsize)
    classes = None if stray else classes_from_float_count(num_floats, neck_channels)
    if classes:
        return DarknetDetectorInfo(header, num_floats, classes)
    try:
        backbone = inspect_darknet_file(path)
        return DarknetDetectorInfo(backbone.header, backbone.num_floats, 0)
    except CheckpointError:
        pass
    coco, voc = (_count(yolov3_layers(c, neck_channels)) for c in (80, 20))
    base = _count(yolov3_layers(0, neck_channels))
    step = _count(yolov3_layers(1, neck_channels)) - base
    # the class count whose layers the file comes closest to from below (``base`` holds 0 classes' outputs)
    closest = max(1, (num_floats - base) // step)
    if stray and classes_from_float_count(num_floats, neck_channels):
        found = f"{num_floats:,} (exactly {closest} classes) followed by {stray} stray bytes (appended to the file?)"
    else:
        found = (f"{num_floats:,}{f' and {stray} stray bytes' if stray else ''}; read as {closest} classes, "
                 f"{_where_reading_stops(yolov3_layers(closest, neck_channels), num_floats)} (truncated, too long, "
                 f"or for another architecture)")
    raise CheckpointError(
        f"{path} does not hold YOLOv3 Darknet weights: expected {base:,} + {step:,} x C float32 values for C "
        f"classes ({coco:,} for 80, {voc:,} for 20) or Darknet-53's backbone after its {header.nbytes}-byte "
        f"v{header.version} header, found {found}")


def read_yolov3_weights(path: str | os.PathLike, neck_channels: Sequence[int] = YOLOV3_NECK_CHANNELS
                        ) -> tuple[dict[str, Tensor], DarknetDetectorInfo]:
    """Read a Darknet file into a state_dict in :class:`YOLOv3`'s names (only ``backbone.*`` for a
    backbone file, its classifier dropped). BatchNorm ``num_batches_tracked`` counters are set to 0."""
    path = Path(path)
    info = inspect_yolov3_file(path, neck_channels)
    warn_assumed(path, info.header)
    layers = yolov3_layers(info.num_classes, neck_channels) if info.num_classes else [
        dataclasses.replace(layer, module=f"backbone.{layer.module}") for layer in darknet_layers(num_classes=0)]
    state: dict[str, Tensor] = {}
    for key, value in _read_arrays(path, info.header.nbytes, layers):
        state[key] = value
        if key.endswith(".bn.running_var"):
            state[key.replace("running_var", "num_batches_tracked")] = torch.tensor(0, dtype=torch.long)
    return state, info


def write_yolov3_weights(state: Mapping[str, Tensor], path: str | os.PathLike, *,
                         header: DarknetHeader = DarknetHeader(0, 2, 0),
                         neck_channels: Sequence[int] = YOLOV3_NECK_CHANNELS) -> DarknetDetectorInfo:
    """Write a YOLOv3 (Darknet-53 backbone) state_dict as a Darknet ``.weights`` file, atomically."""
    key = "head.convs_pred.0.bias"
    if key not in state or "backbone.stem.conv.weight" not in state:
        raise CheckpointError(f"cannot write YOLOv3 Darknet weights: expected a YOLOv3 state_dict with a Darknet-53 "
                              f"backbone (keys {key}, backbone.stem.conv.weight), found keys like "
                              f"{sorted(state)[:3]}")
    outputs = int(state[key].shape[0])
    if outputs % 3:
        raise CheckpointError(f"cannot write YOLOv3 Darknet weights: expected 3 x (5 + C) outputs per level, "
                              f"found {outputs}")
    layers = yolov3_layers(outputs // 3 - 5, neck_channels)
    arrays = [_array_for(state, k, shape) for layer in layers for k, shape in _tensor_slots(layer)]
    with atomic_open(path) as f:
        f.write(header.pack())
        for array in arrays:
            f.write(array.tobytes())
    return DarknetDetectorInfo(header, sum(a.size for a in arrays), outputs // 3 - 5)


# -- pretrained= for create_model("yolov3") ---------------------------------------------------------
@dataclass
class PretrainedSource:
    """What a ``pretrained=`` file holds for a detector: the whole detector, or a backbone only."""

    path: Path
    state: dict[str, Tensor]
    num_classes: int  # 0: backbone only
    description: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    header: DarknetHeader | None = None  # a Darknet file's header
    # the input normalisation the weights were trained with: a detector's recorded input_mean/input_std,
    # or a classification run's (backbonekit train's best.pt) mean/std; empty for Darknet's raw [0, 1]
    input_norm: dict[str, list[float]] = field(default_factory=dict)
    # a backbone-only file: the backbone it names (None: it does not say) and the architecture arguments
    # its weights need (weights.architecture_kwargs: Darknet's slope 0.1, timm's darknet53 0.01, ...)
    backbone: str | None = None
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)


NORM_KEYS = ("input_mean", "input_std")
# plain state_dicts (not written by this package) in these layouts are taken as torchvision's or timm's
# ImageNet weights, trained on ImageNet-normalised input; this package's Darknet-53 layout keeps Darknet's
# raw [0, 1], and so do this package's own files that record no normalisation
IMAGENET_LAYOUTS = ("resnet", "timm-darknet")


def _from_elsewhere(meta: Mapping[str, Any]) -> bool:
    """A plain torch or safetensors state_dict, not a backbonekit checkpoint or a safetensors file it wrote."""
    return meta.get("format") == "torch" or (meta.get("format") == "safetensors" and not meta.get("model"))


def recorded_normalisation(model_kwargs: Mapping[str, Any], preprocessing: Any = None
                           ) -> tuple[list[float], list[float]] | None:
    """(mean, std) a checkpoint records for its input: a detector's ``input_mean``/``input_std`` (YOLOv3)
    or ``image_mean``/``image_std`` (torchvision's detectors) in its model arguments, else a classification
    run's ``preprocessing``; None when it records none."""
    prep = preprocessing if isinstance(preprocessing, Mapping) else {}
    for mean, std in ((model_kwargs.get("input_mean"), model_kwargs.get("input_std")),
                      (model_kwargs.get("image_mean"), model_kwargs.get("image_std")),
                      (prep.get("mean"), prep.get("std"))):
        if mean is not None and std is not None:
            return [float(v) for v in mean], [float(v) for v in std]
    return None


def _input_norm(obj: Any, model_kwargs: Mapping[str, Any]) -> dict[str, list[float]]:
    """YOLOv3's ``input_mean``/``input_std`` from what a file records (:func:`recorded_normalisation`)."""
    found = recorded_normalisation(model_kwargs, obj.get("preprocessing") if isinstance(obj, Mapping) else None)
    return dict(zip(NORM_KEYS, found)) if found else {}


def inspect_pretrained(path: str | os.PathLike, neck_channels: Sequence[int] = YOLOV3_NECK_CHANNELS
                       ) -> PretrainedSource:
    """Read a Darknet file or a backbonekit/torch checkpoint for a YOLOv3 model."""
    from ..checkpoint import load_file
    from ..models.darknet import DARKNET_SLOPE
    from ..weights import (architecture_kwargs, detect_file_format, detect_layout, read_weights, to_backbonekit,
                           weights_from_checkpoint)

    path = Path(path)
    kind = detect_file_format(path)
    if kind == "darknet":
        state, info = read_yolov3_weights(path, neck_channels)
        kind = f"Darknet v{info.header.version}, {info.num_classes} classes" if info.num_classes else \
            "Darknet-53 backbone file"
        return PretrainedSource(path, state, info.num_classes, kind, header=info.header, backbone="darknet53",
                                backbone_kwargs={"act_slope": DARKNET_SLOPE})
    obj = load_file(path) if kind == "torch" else None  # read once: the state and a training run's preprocessing
    state, meta = weights_from_checkpoint(obj, path) if obj is not None else read_weights(path)
    norm = _input_norm(obj, meta.get("model_kwargs") or {})
    if meta.get("model") not in (None, "yolov3") and detect_layout(state) == "unknown":
        raise CheckpointError(f"{path} holds weights for {meta['model']}, found yolov3")
    if "head.convs_pred.0.weight" in state:
        outputs = int(state["head.convs_pred.0.weight"].shape[0])
        kwargs = dict(meta.get("model_kwargs") or {})
        anchors_per_level = len(kwargs.get("masks", YOLOV3_MASKS)[0])
        return PretrainedSource(path, state, outputs // anchors_per_level - 5, "detector checkpoint", kwargs,
                                input_norm=norm)
    layout = detect_layout(state)
    if layout == "unknown":
        raise CheckpointError(f"cannot use {path} for yolov3: expected a YOLOv3 checkpoint or a backbone's weights, "
                              f"found keys like {sorted(state)[:3]}")
    if not norm and layout in IMAGENET_LAYOUTS and _from_elsewhere(meta):
        norm = dict(zip(NORM_KEYS, (list(IMAGENET_MEAN), list(IMAGENET_STD))))
    return PretrainedSource(path, {f"backbone.{k}": v for k, v in to_backbonekit(state, layout).items()}, 0,
                            f"{layout} backbone checkpoint", input_norm=norm, backbone=meta.get("model"),
                            backbone_kwargs=architecture_kwargs(state, meta))


def load_pretrained(model: torch.nn.Module, source: PretrainedSource) -> str:
    """Load ``source`` into ``model`` strictly; return a note when only the backbone was loaded."""
    from ..weights import load_into

    if source.num_classes:
        load_into(model, source.state, source=f"weights file {source.path}")
        return ""
    body = {k.removeprefix("backbone."): v for k, v in source.state.items()}
    load_into(model.backbone, body, source=f"weights file {source.path}", allow_missing_head=True)
    return (f"{source.path} ({source.description}) holds the backbone only: loaded it; the neck and head "
            f"start from scratch (YOLOv3's training recipe)")


# -- saving and converting ------------------------------------------------------------------------------
def save_detector(model: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model`` by the name ``path`` implies: ``.weights`` (Darknet; Darknet-53 backbone only),
    ``.safetensors``, or a backbonekit checkpoint (``.pt``/``.pth``) recording how to rebuild it."""
    return write_detector_state(model.state_dict(), path, getattr(model, "model_kwargs", {}))


def write_detector_state(state: Mapping[str, Tensor], path: str | os.PathLike, model_kwargs: Mapping[str, Any],
                         header: DarknetHeader = DarknetHeader(0, 2, 0)) -> Path:
    from ..checkpoint import atomic_save
    from ..weights import output_format_for, write_safetensors

    path = Path(path)
    kind = output_format_for(path)
    if kind == "darknet":
        if model_kwargs.get("backbone", "darknet53") != "darknet53":
            raise ValueError(f"the Darknet weights format holds YOLOv3 on darknet53 only, found backbone "
                             f"{model_kwargs['backbone']}; write .pt or .safetensors instead")
        if model_kwargs.get("input_mean") is not None or model_kwargs.get("input_std") is not None:
            raise ValueError(f"the Darknet weights format has no input normalisation, found input_mean="
                             f"{model_kwargs.get('input_mean')} input_std={model_kwargs.get('input_std')} "
                             f"(Darknet would feed raw [0, 1] pixels); write .pt or .safetensors instead")
        write_yolov3_weights(state, path, header=header,
                             neck_channels=model_kwargs.get("neck_channels", YOLOV3_NECK_CHANNELS))
    elif kind == "safetensors":
        write_safetensors(state, path, "yolov3", dict(model_kwargs))
    else:
        atomic_save({"format": "backbonekit", "model": "yolov3", "model_kwargs": dict(model_kwargs),
                     "state_dict": {k: v.detach().cpu() for k, v in state.items()}}, path)
    return path


def is_detector_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a whole YOLOv3 detector (a Darknet file of some class count, or a checkpoint)."""
    try:
        return inspect_pretrained(path).num_classes > 0
    except (CheckpointError, ValueError, KeyError):
        return False


def _lost_by_replacing(dst: Path) -> str | None:
    """What writing a converted detector over ``dst`` would lose (None: nothing): the backbone files' rule
    (:func:`backbonekit.weights.lost_by_replacing`), except that a YOLOv3 Darknet file, which that rule cannot
    read, holds weights alone (an earlier conversion's output)."""
    from ..weights import detect_file_format, lost_by_replacing

    with contextlib.suppress(CheckpointError, OSError):
        if detect_file_format(dst) == "darknet" and inspect_yolov3_file(dst).num_classes:
            return None
    return lost_by_replacing(dst, has_classifier=True)


def convert_detector_weights(src: str | os.PathLike, dst: str | os.PathLike, *, force: bool = False) -> Path:
    """Convert a YOLOv3 detector file between Darknet ``.weights``, backbonekit ``.pt`` and ``.safetensors``
    (the format from ``dst``'s name); checked against the model it describes before anything is written.
    A Darknet source keeps its header (version and ``seen``) when written back as Darknet. As for backbones,
    ``dst`` may not be ``src``, and an existing ``dst`` holding a training record is kept unless ``force``."""
    from .. import create_model
    from ..checkpoint import check_output
    from ..weights import check_destination, check_fits

    check_destination(Path(src), Path(dst))
    check_output(Path(dst), force=force, replaceable=_lost_by_replacing)
    source = inspect_pretrained(src)
    if not source.num_classes:
        raise CheckpointError(f"{src} holds a backbone only ({source.description}): expected a whole YOLOv3 detector")
    with torch.device("meta"):
        model = create_model("yolov3", num_classes=source.num_classes, **source.model_kwargs)
    check_fits(model, source.state, source=f"weights file {src}")
    kwargs = {**getattr(model, "model_kwargs", {}), **source.model_kwargs}
    header = source.header.standard() if source.header else DarknetHeader(0, 2, 0)  # one Darknet itself reads
    return write_detector_state(source.state, dst, kwargs, header=header)

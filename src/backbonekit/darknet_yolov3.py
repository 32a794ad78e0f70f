"""YOLOv3's Darknet ``.weights`` files (``yolov3.weights``, ``yolov3-voc.weights``, ...).

The file is :mod:`backbonekit.darknet_weights`'s format (same header, same per-conv arrays) over
the layers of ``cfg/yolov3.cfg`` in order: Darknet-53's 52 convs (layers 0-73), then per output level
(stride 32, 16, 8) the lateral 1x1 (levels 2 and 3: layers 84, 96), the five detection-block convs
(75-79, 87-91, 99-103), the 3x3 bridge (80, 92, 104) and the 1x1 output conv with bias and no
BatchNorm (81, 93, 105). Only the three output convs depend on the class count, so a file's size
tells it: ``floats = fixed + 3 * (1024 + 512 + 256 + 3) * (5 + C)`` for the standard widths.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import Tensor

from .checkpoint import CheckpointError, atomic_open
from .darknet_weights import (FLOAT, ConvLayer, DarknetHeader, array_for, darknet_float_counts, darknet_layers,
                              inspect_darknet_file, read_arrays, read_header, tensor_slots, warn_assumed,
                              where_reading_stops)

YOLOV3_CFG_NECK_CHANNELS = (512, 256, 128)  # cfg/yolov3.cfg's detection blocks, deepest first (YOLOv3's default)

BACKBONE_CHANNELS = (256, 512, 1024)  # Darknet-53's C3, C4, C5
FIRST_NECK_LAYER = 75  # cfg index after the backbone's last [shortcut] (74)


def yolov3_layers(num_classes: int, neck_channels: Sequence[int] = YOLOV3_CFG_NECK_CHANNELS,
                  num_anchors: Sequence[int] = (3, 3, 3)) -> list[ConvLayer]:
    """The conv layers of ``cfg/yolov3.cfg`` in file order, named as :class:`YOLOv3`'s modules."""
    layers = backbone_layers()
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


def backbone_layers() -> list[ConvLayer]:
    """Darknet-53's 52 convs (``darknet53.conv.74``), named as :class:`YOLOv3`'s ``backbone`` modules."""
    return [dataclasses.replace(layer, module=f"backbone.{layer.module}") for layer in darknet_layers(num_classes=0)]


def _count(layers: Sequence[ConvLayer]) -> int:
    return sum(layer.num_floats for layer in layers)


def classes_from_float_count(num_floats: int, neck_channels: Sequence[int] = YOLOV3_CFG_NECK_CHANNELS) -> int | None:
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


def inspect_yolov3_file(path: str | os.PathLike, neck_channels: Sequence[int] = YOLOV3_CFG_NECK_CHANNELS
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
                 f"{where_reading_stops(yolov3_layers(closest, neck_channels), num_floats)} (truncated, too long, "
                 f"or for another architecture)")
    raise CheckpointError(
        f"{path} does not hold YOLOv3 Darknet weights: expected {base:,} + {step:,} x C float32 values for C "
        f"classes ({coco:,} for 80, {voc:,} for 20) or Darknet-53's backbone after its {header.nbytes}-byte "
        f"v{header.version} header, found {found}")


def read_yolov3_weights(path: str | os.PathLike, neck_channels: Sequence[int] = YOLOV3_CFG_NECK_CHANNELS
                        ) -> tuple[dict[str, Tensor], DarknetDetectorInfo]:
    """Read a Darknet file into a state_dict in :class:`YOLOv3`'s names (only ``backbone.*`` for a
    backbone file, its classifier dropped). BatchNorm ``num_batches_tracked`` counters are set to 0."""
    path = Path(path)
    info = inspect_yolov3_file(path, neck_channels)
    warn_assumed(path, info.header)
    layers = yolov3_layers(info.num_classes, neck_channels) if info.num_classes else backbone_layers()
    state: dict[str, Tensor] = {}
    for key, value in read_arrays(path, info.header.nbytes, layers):
        state[key] = value
        if key.endswith(".bn.running_var"):
            state[key.replace("running_var", "num_batches_tracked")] = torch.tensor(0, dtype=torch.long)
    return state, info


def write_yolov3_weights(state: Mapping[str, Tensor], path: str | os.PathLike, *,
                         header: DarknetHeader = DarknetHeader(0, 2, 0),
                         neck_channels: Sequence[int] = YOLOV3_CFG_NECK_CHANNELS) -> DarknetDetectorInfo:
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
    arrays = [array_for(state, k, shape) for layer in layers for k, shape in tensor_slots(layer)]
    with atomic_open(path) as f:
        f.write(header.pack())
        for array in arrays:
            f.write(array.tobytes())
    return DarknetDetectorInfo(header, sum(a.size for a in arrays), outputs // 3 - 5)

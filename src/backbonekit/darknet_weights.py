"""Darknet's own binary weights files (pjreddie/darknet ``.weights``) for Darknet-53.

The published ImageNet Darknet-53 comes as two such files: ``darknet53.weights`` (the classifier
of ``cfg/darknet53.cfg``) and ``darknet53.conv.74`` (its first 75 layers: the 52 backbone convs,
written by ``darknet partial ... 74`` to start YOLOv3 training).

File layout (``src/parser.c``, ``load_weights_upto``/``load_convolutional_weights``):

* header: ``major, minor, revision`` as int32, then ``seen`` as int64 when
  ``major*10 + minor >= 2`` (version 0.2, a 20-byte header) else as int32 (0.1, 16 bytes). PyTorch
  ports of YOLOv3 (ultralytics/yolov3, eriklindernoren/PyTorch-YOLOv3) write 20 bytes whatever the
  version, which reads 0.0.0 for a model they trained from scratch: for such files the header length
  is the one (16 or 20) that the file's size fits, and the reader says it assumed it;
* then, for each ``[convolutional]`` layer in cfg order, float32: ``biases[n]``, and with batch
  norm ``scales[n]``, ``rolling_mean[n]``, ``rolling_variance[n]``; then ``weights[n, c, k, k]``
  (PyTorch's Conv2d layout). With batch norm the biases are the BN beta; the final 1x1 classifier
  conv has no batch norm, so its biases are its own.

Shortcut and pooling layers carry no weights. Which of the two files a path holds is told from
the header and the file size, never from its name, and a file of any other size is refused with
the layer where reading would stop.
"""

from __future__ import annotations

import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
import torch
from torch import Tensor

from .checkpoint import CheckpointError, atomic_open
from .models.darknet import DARKNET_CONFIGS, DarknetConfig

FLOAT = np.dtype("<f4")
DARKNET_CLASSES = 1000  # cfg/darknet53.cfg: the last [convolutional] has filters=1000
# (major, minor) pairs this reader knows: 0.1 (16-byte header) and 0.2, what darknet writes today (20 bytes)
KNOWN_VERSIONS = frozenset({(0, 1), (0, 2)})
HEADER_LENGTHS = (16, 20)  # seen as int32, or as int64
PORT_HEADER_LENGTH = 20  # what PyTorch ports write, whatever the version
PORT_VERSIONS = frozenset({(0, 0)})  # what PyTorch ports write for a model they trained from scratch


@dataclass(frozen=True)
class DarknetHeader:
    major: int
    minor: int
    revision: int
    seen: int = 0
    # the header's length when it was told from the file's size, not from its version by Darknet's rule
    # (an unknown version, or a known one whose rule the size does not fit: files of PyTorch ports)
    length: int | None = None

    @property
    def seen_is_int64(self) -> bool:
        """Darknet's own rule (``load_weights_upto``) for whether ``seen`` is a size_t or an int."""
        return self.major * 10 + self.minor >= 2 and self.major < 1000 and self.minor < 1000

    @property
    def nbytes(self) -> int:
        return self.length or 12 + (8 if self.seen_is_int64 else 4)

    @property
    def version(self) -> str:
        return f"{self.major}.{self.minor}.{self.revision}"

    @property
    def note(self) -> str:
        """What was assumed to read the file ("" when Darknet's own rule applied)."""
        if self.length is None:
            return ""
        why = ("is not one Darknet writes (0.1, 0.2)" if (self.major, self.minor) not in KNOWN_VERSIONS else
               f"means a {12 + (8 if self.seen_is_int64 else 4)}-byte header to Darknet, which the file's size "
               f"does not fit")
        port = " (as PyTorch YOLOv3 ports write it)" if self.length == PORT_HEADER_LENGTH else ""
        return (f"Darknet header version {self.version} {why}: assumed a {self.length}-byte header, the only "
                f"length the file's size fits{port}")

    def standard(self) -> DarknetHeader:
        """This header, or for one whose length was assumed a 0.2 header (what Darknet reads) with its ``seen``."""
        return self if self.length is None else DarknetHeader(0, 2, 0, self.seen)

    def pack(self) -> bytes:
        return struct.pack("<3i" + ("q" if self.nbytes == 20 else "i"), self.major, self.minor, self.revision,
                           self.seen)


@dataclass(frozen=True)
class ConvLayer:
    """One Darknet ``[convolutional]`` layer and the backbonekit module it maps onto."""

    cfg_index: int  # the layer number darknet prints for this cfg
    module: str  # e.g. 'stages.0.conv_down' (conv + bn) or 'head.fc' (the classifier)
    out_ch: int
    in_ch: int
    kernel: int
    batch_norm: bool = True

    @property
    def num_floats(self) -> int:
        return self.out_ch * (4 if self.batch_norm else 1) + self.out_ch * self.in_ch * self.kernel ** 2

    def describe(self) -> str:
        return f"layer {self.cfg_index} ({self.module}, conv {self.out_ch}x{self.in_ch}x{self.kernel}x{self.kernel})"


@dataclass(frozen=True)
class DarknetFileInfo:
    """What a Darknet weights file holds, read from its header and size."""

    header: DarknetHeader
    num_floats: int
    has_classifier: bool  # darknet53.weights; False for the backbone file darknet53.conv.74


def darknet_layers(config: DarknetConfig = DARKNET_CONFIGS["darknet53"], in_chans: int = 3,
                   num_classes: int = DARKNET_CLASSES) -> list[ConvLayer]:
    """The conv layers of a Darknet cfg in file order; the classifier last when ``num_classes > 0``."""
    layers = [ConvLayer(0, "stem", config.stem_channels, in_chans, 3)]
    index, in_ch = 1, config.stem_channels
    for s, (depth, out_ch) in enumerate(zip(config.depths, config.channels)):
        layers.append(ConvLayer(index, f"stages.{s}.conv_down", out_ch, in_ch, 3))
        index += 1
        for b in range(depth):
            prefix = f"stages.{s}.blocks.{b}"
            layers.append(ConvLayer(index, f"{prefix}.conv1", out_ch // 2, out_ch, 1))
            layers.append(ConvLayer(index + 1, f"{prefix}.conv2", out_ch, out_ch // 2, 3))
            index += 3  # conv1, conv2, [shortcut]
        in_ch = out_ch
    if num_classes > 0:
        layers.append(ConvLayer(index + 1, "head.fc", num_classes, in_ch, 1, batch_norm=False))  # after [avgpool]
    return layers


def tensor_slots(layer: ConvLayer) -> list[tuple[str, tuple[int, ...]]]:
    """(state_dict key, shape) of each array of ``layer`` in file order."""
    n, weight_shape = layer.out_ch, (layer.out_ch, layer.in_ch, layer.kernel, layer.kernel)
    if not layer.batch_norm:  # the classifier conv maps onto the Linear head
        return [(f"{layer.module}.bias", (n,)), (f"{layer.module}.weight", weight_shape)]
    bn = f"{layer.module}.bn"
    return [(f"{bn}.bias", (n,)), (f"{bn}.weight", (n,)), (f"{bn}.running_mean", (n,)),
            (f"{bn}.running_var", (n,)), (f"{layer.module}.conv.weight", weight_shape)]


# -- reading ---------------------------------------------------------------------------------
def read_header(path: Path, fits: Callable[[int], bool]) -> DarknetHeader:
    """The header of the Darknet file at ``path``; ``fits(n)`` says whether ``n`` bytes after the header are
    a network's weights. Versions 0.1 and 0.2 are read by Darknet's rule (16 and 20 bytes), except a 0.1
    file whose size fits only the 20 bytes PyTorch ports write; version 0.0 (a port's, for a model it trained
    from scratch) with the one length (16 or 20) the size fits. A length told from the size is recorded in the header's
    ``length`` (:attr:`DarknetHeader.note` says so). Anything else is refused in one line."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(max(HEADER_LENGTHS))
    if len(head) < 12:
        raise CheckpointError(f"cannot read {path} as Darknet weights: expected a header of at least 16 bytes, "
                              f"found a file of {len(head)} bytes")
    major, minor, revision = struct.unpack("<3i", head[:12])
    version = DarknetHeader(major, minor, revision)
    known = (major, minor) in KNOWN_VERSIONS
    fitting = [n for n in HEADER_LENGTHS if size >= n and fits(size - n)]
    if known:
        # a port's 20 bytes for a 0.1 file; never 16 for a 0.2 file, which is what one 4 bytes short looks like
        length = PORT_HEADER_LENGTH if version.nbytes not in fitting and PORT_HEADER_LENGTH in fitting else None
    elif (major, minor) in PORT_VERSIONS and len(fitting) == 1:
        length = fitting[0]
    else:
        sizes = (" and the file's size fits neither a 16- nor a 20-byte header" if not fitting else
                 " and the file's size fits both a 16- and a 20-byte header")
        raise CheckpointError(
            f"cannot read {path}: not a torch.save or safetensors file, and as Darknet weights its header version "
            f"{version.version} is unknown (expected 0.1 with a 16-byte header or 0.2 with a 20-byte header){sizes}")
    nbytes = length or version.nbytes
    if len(head) < nbytes:
        raise CheckpointError(f"cannot read {path}: Darknet header {version.version} is truncated "
                              f"(expected {nbytes} bytes)")
    (seen,) = struct.unpack("<q" if nbytes == 20 else "<i", head[12:nbytes])
    return DarknetHeader(major, minor, revision, seen, length)


def _floats_fit(counts: tuple[int, ...]) -> Callable[[int], bool]:
    """``fits`` for :func:`read_header`: a payload of exactly one of ``counts`` float32 values."""
    return lambda nbytes: nbytes % FLOAT.itemsize == 0 and nbytes // FLOAT.itemsize in counts


def where_reading_stops(layers: list[ConvLayer], num_floats: int) -> str:
    """Describe where ``num_floats`` values run out (or are left over) along ``layers``."""
    offset = 0
    for layer in layers:
        if num_floats < offset + layer.num_floats:
            done = num_floats - offset
            return (f"reading stopped in {layer.describe()} after {done:,} of its {layer.num_floats:,} floats"
                    if done else f"reading stopped at the start of {layer.describe()}")
        offset += layer.num_floats
    return f"{num_floats - offset:,} floats left over after the last {layers[-1].describe()}"


def darknet_float_counts(config: DarknetConfig = DARKNET_CONFIGS["darknet53"],
                         num_classes: int = DARKNET_CLASSES) -> tuple[int, int]:
    """Float32 values in a backbone file (like ``darknet53.conv.74``) and in a classifier file (``darknet53.weights``)."""
    with_head = darknet_layers(config, num_classes=num_classes)
    return (sum(layer.num_floats for layer in with_head if layer.batch_norm),
            sum(layer.num_floats for layer in with_head))


def warn_assumed(path: Path, header: DarknetHeader) -> None:
    """Say what was assumed to read a file whose header length came from its size."""
    if header.note:
        warnings.warn(f"{path}: {header.note}", stacklevel=3)


def inspect_darknet_file(path: str | os.PathLike, config: DarknetConfig = DARKNET_CONFIGS["darknet53"],
                         num_classes: int = DARKNET_CLASSES) -> DarknetFileInfo:
    """Read the header and tell the classifier file from the backbone file by size; refuse anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: expected a file at {path}")
    backbone, classifier = darknet_float_counts(config, num_classes)
    with_head = darknet_layers(config, num_classes=num_classes)
    header = read_header(path, _floats_fit((backbone, classifier)))
    payload = path.stat().st_size - header.nbytes
    num_floats = payload // FLOAT.itemsize
    if payload % FLOAT.itemsize == 0 and num_floats in (backbone, classifier):
        return DarknetFileInfo(header, num_floats, has_classifier=num_floats == classifier)
    odd = f" and {payload % FLOAT.itemsize} stray bytes" if payload % FLOAT.itemsize else ""
    raise CheckpointError(
        f"{path} does not hold Darknet weights for this network: expected {backbone:,} float32 values (backbone, "
        f"like darknet53.conv.74) or {classifier:,} (with the {num_classes}-way classifier, like darknet53.weights) "
        f"after its {header.nbytes}-byte v{header.version} header, found {num_floats:,}{odd}; "
        f"{where_reading_stops(with_head, num_floats)} (truncated, too long, or for another architecture)")


def read_arrays(path: Path, offset: int, layers: list[ConvLayer]) -> Iterator[tuple[str, Tensor]]:
    """(state_dict key, tensor) of each array of ``layers``, read in file order from byte ``offset`` on."""
    with open(path, "rb") as f:
        f.seek(offset)
        for layer in layers:
            for key, shape in tensor_slots(layer):
                count = int(np.prod(shape))
                values = np.fromfile(f, dtype=FLOAT, count=count)
                if values.size != count:  # the file changed under us since its size was checked
                    raise CheckpointError(f"{path} ended early: {layer.describe()} expected {count:,} floats for "
                                          f"{key}, found {values.size:,}")
                yield key, torch.from_numpy(values.astype(np.float32, copy=False)).reshape(shape)


def read_darknet_weights(path: str | os.PathLike, config: DarknetConfig = DARKNET_CONFIGS["darknet53"],
                         num_classes: int = DARKNET_CLASSES) -> tuple[dict[str, Tensor], DarknetFileInfo]:
    """Read a Darknet weights file into a state_dict with backbonekit's Darknet module names.

    The classifier conv (1000, 1024, 1, 1) becomes ``head.fc`` (a Linear, weight (1000, 1024)).
    BatchNorm ``num_batches_tracked`` counters, which Darknet does not store, are set to 0.
    Raises :class:`CheckpointError` (one line) for a file of the wrong size or header version.
    """
    path = Path(path)
    info = inspect_darknet_file(path, config, num_classes)
    warn_assumed(path, info.header)
    layers = darknet_layers(config, num_classes=num_classes if info.has_classifier else 0)
    state: dict[str, Tensor] = {}
    for key, value in read_arrays(path, info.header.nbytes, layers):
        if key == "head.fc.weight":
            value = value.flatten(1)
        state[key] = value
        if key.endswith(".bn.running_var"):
            state[key.replace("running_var", "num_batches_tracked")] = torch.tensor(0, dtype=torch.long)
    return state, info


# -- writing ---------------------------------------------------------------------------------
def array_for(state: Mapping[str, Tensor], key: str, shape: tuple[int, ...]) -> np.ndarray:
    """``state[key]`` as the float32 array the file holds, checked against ``shape``."""
    if key not in state:
        raise CheckpointError(f"cannot write Darknet weights: expected tensor {key} of shape {shape}, "
                              f"found no such key (is this a darknet53 state_dict in backbonekit names?)")
    value = state[key].detach().to("cpu", torch.float32)
    if key == "head.fc.weight":
        value = value.reshape(value.shape + (1, 1))
    if tuple(value.shape) != shape:
        raise CheckpointError(f"cannot write Darknet weights: expected {key} of shape {shape}, "
                              f"found {tuple(value.shape)}")
    return value.contiguous().numpy().astype(FLOAT, copy=False)


def write_darknet_weights(state: Mapping[str, Tensor], path: str | os.PathLike, *,
                          include_classifier: bool | None = None, header: DarknetHeader = DarknetHeader(0, 2, 0),
                          config: DarknetConfig = DARKNET_CONFIGS["darknet53"],
                          num_classes: int = DARKNET_CLASSES) -> DarknetFileInfo:
    """Write a Darknet state_dict (backbonekit names) as a Darknet weights file, atomically.

    ``include_classifier``: write the ``num_classes``-way classifier (``darknet53.weights``) or only the
    backbone (``darknet53.conv.74``); default: the classifier when ``state`` has ``head.fc.weight``.
    """
    if (header.major, header.minor) not in KNOWN_VERSIONS:
        raise ValueError(f"header version must be 0.1 or 0.2, found {header.version}")
    if include_classifier is None:
        include_classifier = "head.fc.weight" in state
    found = int(state["head.fc.weight"].shape[0]) if "head.fc.weight" in state else 0
    if include_classifier and found != num_classes:
        raise CheckpointError(f"cannot write a Darknet classifier file: expected a {num_classes}-way head.fc "
                              f"(like darknet53.cfg), found {found or 'none'}; write the backbone only instead "
                              f"(include_classifier=False, --backbone-only)")
    layers = darknet_layers(config, num_classes=num_classes if include_classifier else 0)
    arrays = [array_for(state, key, shape) for layer in layers for key, shape in tensor_slots(layer)]
    with atomic_open(path) as f:
        f.write(header.pack())
        for array in arrays:
            f.write(array.tobytes())
    return DarknetFileInfo(header, sum(a.size for a in arrays), has_classifier=include_classifier)

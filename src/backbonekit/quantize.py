"""Post-training static int8 quantization of an exported model with ONNX Runtime's quantizer.

The fp32 model is exported to ONNX (:func:`backbonekit.onnx_meta.export_onnx`), prepared with
ONNX Runtime's recommended ``quant_pre_process`` (symbolic shape inference and graph optimisation),
then ``quantize_static`` writes a QDQ model: per-channel symmetric int8 weights in the 7-bit range
[-64, 64] (``reduce_range``), uint8 activations whose ranges come from calibration images (MinMax).
Calibration images go through exactly the evaluation preprocessing (the dataset resized to the model's
image size, no crop or flip, normalised with the training mean/std) and come by default from the
dataset's *training* split, so the test split that the accuracy is measured on stays unseen.

ONNX Runtime then fuses each ``DequantizeLinear -> op -> QuantizeLinear`` group into an integer kernel
(``QLinearConv`` and friends) when it loads the file. :func:`fp32_nodes` lists the compute nodes with no
such group around them, and why, from the quantized graph itself.

Why 7-bit weights by default: on x86 CPUs without VNNI (AVX2, AVX-512 before VNNI) those kernels
multiply uint8 activations by int8 weights with ``VPMADDUBSW``, which adds two products into an int16
and saturates: 2 x 255 x 127 = 64,770 does not fit, 2 x 255 x 64 = 32,640 does. With 7-bit weights a
file computes the same on every x86 CPU, whichever machine it was exported on (ONNX Runtime's guide:
reduce-range "is designed for the U8S8 format on AVX2 and AVX512 (non-VNNI) machines to mitigate
saturation issues"). int8 activations would not avoid it: on x86, ONNX Runtime turns them back into
uint8 when it loads the file (its ``QDQS8ToU8Transformer``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
from torch import nn

from ._text import first_line
from .checkpoint import atomic_path
from .export import export_destination
from .onnx_meta import export_onnx, load_proto, read_metadata, set_metadata

MIN_CALIB_IMAGES = 8  # fewer images give activation ranges that depend on which images were drawn
CALIB_BATCH = 16
CALIB_SEED = 0
# Ops that move or reshape data or compute shapes: never worth an int8 kernel, listed as "data movement".
SHAPE_OPS = frozenset({"Shape", "Constant", "ConstantOfShape", "Cast", "Range", "Size", "Identity", "Expand",
                       "Equal", "Less", "Greater", "Not", "And", "Or"})
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
INT8_TYPES = ("uint8", "int8")  # activation_type / weight_type: ONNX Runtime's QUInt8 / QInt8


@dataclass(frozen=True)
class Fp32Node:
    """A node of the quantized graph that still computes in fp32, and why."""

    name: str
    op_type: str
    reason: str


@dataclass
class Int8Report:
    """What :func:`export_int8` wrote and what stayed in fp32."""

    path: Path
    calib_images: int
    calib_source: str
    int8_nodes: int
    fp32: list[Fp32Node] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)  # the file's metadata["quantization"]

    def summary(self) -> str:
        """The file, its int8 settings, then one line per reason: ``fp32: 2 nodes (Flatten x1, ...): reason``."""
        lines = [f"wrote {self.path}: {self.int8_nodes} nodes in int8 (QDQ), {len(self.fp32)} in fp32; calibrated on "
                 f"{self.calib_images} images of {self.calib_source}"]
        if self.settings:
            lines.append(f"  {settings_line(self.settings)}")
        by_reason: dict[str, list[Fp32Node]] = {}
        for node in self.fp32:
            by_reason.setdefault(node.reason, []).append(node)
        for reason, nodes in by_reason.items():
            ops = sorted({n.op_type for n in nodes})
            lines.append(f"  fp32: {len(nodes)} node(s) ({', '.join(ops)}): {reason}")
        return "\n".join(lines)


# -- calibration data -------------------------------------------------------------------------------
class CalibrationData:
    """Batches of float32 (B, C, S, S) calibration inputs for ``quantize_static`` (an ONNX Runtime
    ``CalibrationDataReader``): decoded lazily, batch by batch, from a dataset split or an array."""

    def __init__(self, input_name: str, count: int, fetch: Callable[[np.ndarray], np.ndarray],
                 batch_size: int = CALIB_BATCH) -> None:
        self.input_name, self.count, self.fetch, self.batch_size = input_name, count, fetch, batch_size
        self._batches: Iterator[np.ndarray] | None = None
        self.error: Exception | None = None  # a failure to read the data, kept apart from the quantizer's own


    def _generate(self) -> Iterator[np.ndarray]:
        for start in range(0, self.count, self.batch_size):
            yield self.fetch(np.arange(start, min(start + self.batch_size, self.count)))

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._batches is None:
            self._batches = self._generate()
        try:
            batch = next(self._batches, None)
        except Exception as exc:  # an unreadable image: reported as itself once the quantizer returns
            self.error, batch = exc, None
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        self._batches = None

    def __iter__(self):  # ONNX Runtime's quantizer iterates some readers; keep both protocols
        return iter(lambda: self.get_next(), None)


def dataset_calibration(dataset: str, meta: Mapping[str, Any], count: int, *, split: str = "train",
                        data_dir: str | os.PathLike = "data", download: bool = True
                        ) -> tuple[int, Callable[[np.ndarray], np.ndarray], str]:
    """(number of images, fetch(positions) -> normalised float32 batch, description) for ``count``
    images of ``dataset``'s ``split`` drawn in a seeded random order (classes mixed), prepared as
    ``evaluate`` prepares test images: the model's image size, no crop or flip, its mean/std."""
    import torch

    from .train.data import Normalizer, Split, load_dataset

    if split not in ("train", "test"):
        raise ValueError(f"calibration split must be train or test, found {split!r}")
    data = load_dataset(dataset, data_dir, meta["image_size"], 0, False, download)
    images = data.train if split == "train" else data.val
    order = _calibration_order(len(images), count, f"{dataset} {split} split")
    count = len(order)
    normalize = Normalizer(meta["mean"], meta["std"], torch.device("cpu"))

    def fetch(positions: np.ndarray) -> np.ndarray:
        idx = order[torch.as_tensor(positions)]
        if isinstance(images, Split):
            batch = images.images.index_select(0, idx)
        else:
            batch = torch.stack([images[int(i)][0] for i in idx])
        return normalize(batch).numpy()

    return count, fetch, f"{dataset} ({split} split)"


def _calibration_order(available: int, count: int, source: str):
    """The seeded draw of ``count`` calibration images out of ``available`` (all of them if fewer); one
    line when there are too few to calibrate on."""
    import torch

    if available < MIN_CALIB_IMAGES:
        raise ValueError(f"calibration set too small: {source} has {available} images, "
                         f"expected at least {MIN_CALIB_IMAGES}")
    return torch.randperm(available, generator=torch.Generator().manual_seed(CALIB_SEED))[:min(count, available)]


def detection_calibration(dataset: str, meta: Mapping[str, Any], count: int, *, split: str = "train",
                          data_dir: str | os.PathLike | None = None
                          ) -> tuple[int, Callable[[np.ndarray], np.ndarray], str]:
    """As :func:`dataset_calibration` for a detector: ``count`` images of a dataset ``detect train``
    accepts, each letterboxed by :func:`backbonekit.detection.data.transforms.letterbox_images` (the function
    ``YOLOv3.detect`` and evaluation use) to the file's input size, values in [0, 1]."""
    from .detection.data import load_detection_dataset
    from .detection.data.transforms import letterbox_images

    if split not in ("train", "val"):
        raise ValueError(f"detector calibration split must be train or val, found {split!r}")
    images = load_detection_dataset(dataset, data_dir, split)
    order = _calibration_order(len(images), count, f"{dataset} {split} split")
    count = len(order)

    def fetch(positions: np.ndarray) -> np.ndarray:
        batch = [images[int(order[int(i)])][0].float() / 255 for i in positions]
        return letterbox_images(batch, int(meta["input_size"]))[0].numpy()

    return count, fetch, f"{dataset} ({split} split, letterboxed)"


def array_calibration(array: np.ndarray) -> tuple[int, Callable[[np.ndarray], np.ndarray], str]:
    """Calibration from an already prepared float array (N, C, H, W)."""
    array = np.asarray(array)
    if array.ndim != 4 or not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"expected calibration images as a float (N, C, H, W) array, found {array.dtype} "
                         f"array of shape {array.shape}")
    array = array.astype(np.float32, copy=False)
    return len(array), lambda positions: array[positions], f"an array of {len(array)} images"


def check_calibration(sample: np.ndarray, count: int, input_shape: Sequence[Any], source: str) -> None:
    """One line for a calibration set that is too small or whose images do not fit the model's input."""
    if count < MIN_CALIB_IMAGES:
        raise ValueError(f"calibration set too small: {source} gives {count} images, expected at least "
                         f"{MIN_CALIB_IMAGES}")
    expected = list(input_shape[1:])
    found = list(sample.shape[1:])
    if len(found) != 3 or found[0] != expected[0]:
        raise ValueError(f"calibration images from {source} have {found[0] if found else '?'} channels "
                         f"(shape {tuple(found)}), the model takes {expected[0]} (input {input_shape})")
    fixed = [(e, f) for e, f in zip(expected[1:], found[1:]) if isinstance(e, int)]
    if any(e != f for e, f in fixed):
        raise ValueError(f"calibration images from {source} are {found[1]}x{found[2]}, the model takes "
                         f"{expected[1]}x{expected[2]}")


# -- quantization ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Int8Settings:
    """What ``quantize_static`` is asked for besides the calibration: the 8-bit types, and 7-bit weights
    (``reduce_range``) or not."""

    per_channel: bool = True
    reduce_range: bool = True
    activation_type: str = "uint8"
    weight_type: str = "int8"

    def __post_init__(self) -> None:
        from .engine.config import check_choice

        check_choice("activation_type", self.activation_type, INT8_TYPES)
        check_choice("weight_type", self.weight_type, INT8_TYPES)

    def metadata(self, proto) -> dict[str, Any]:
        """The ``quantization`` metadata of the quantized graph ``proto``, less the calibration: the settings,
        the integers its weights take and whether x86 CPUs without VNNI compute it without saturating."""
        low, high = weight_range(proto)
        return {"format": "QDQ", "method": "MinMax", "activations": self.activation_type,
                "weights": f"{self.weight_type} {'per-channel' if self.per_channel else 'per-tensor'}",
                "weight_range": [low, high], "reduce_range": self.reduce_range,
                "x86_without_vnni": "no saturation" if self._fits_int16_pairs(low, high) else
                                    "may saturate (pairs of uint8 x int8 products overflow int16)"}

    def _fits_int16_pairs(self, low: int, high: int) -> bool:
        """uint8 weights run on ONNX Runtime's U8U8 kernels (no int16 step); int8 weights on its U8S8 ones,
        whose two uint8 x int8 products must fit one int16 (int8 activations are made uint8 at load)."""
        return self.weight_type == "uint8" or 2 * 255 * max(-low, high) <= np.iinfo(np.int16).max

    def quantize_static_options(self) -> dict[str, Any]:
        from onnxruntime.quantization import QuantType

        types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
        return {"per_channel": self.per_channel, "reduce_range": self.reduce_range,
                "activation_type": types[self.activation_type], "weight_type": types[self.weight_type]}


def weight_range(proto) -> tuple[int, int]:
    """(lowest, highest) integer of the quantized weights of a QDQ graph: the 8-bit initializers that a
    DequantizeLinear reads (activations are computed, biases are int32)."""
    import onnx
    from onnx import numpy_helper

    inits = {init.name: init for init in proto.graph.initializer}
    eight_bit = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    weights = [numpy_helper.to_array(inits[n.input[0]]) for n in proto.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].data_type in eight_bit]
    if not weights:
        return 0, 0
    return int(min(w.min() for w in weights)), int(max(w.max() for w in weights))


def settings_line(quantization: Mapping[str, Any]) -> str:
    """A file's ``quantization`` metadata in one line (the report shows it)."""
    low, high = quantization["weight_range"]
    return (f"activations {quantization['activations']}, weights {quantization['weights']} in [{low}, {high}]"
            f"{' (reduce_range)' if quantization['reduce_range'] else ''}; on x86 CPUs without VNNI: "
            f"{quantization['x86_without_vnni']}")


def export_int8(model_or_checkpoint: nn.Module | str | os.PathLike, out_path: str | os.PathLike, *,
                force: bool = False,
                calibrate: str | np.ndarray, calib_images: int = 256, split: str = "train",
                data_dir: str | os.PathLike | None = None, download: bool = True,
                preprocessing: Mapping[str, Any] | None = None, input_size: int | None = None,
                nodes_to_exclude: Sequence[str] = (), per_channel: bool = True, reduce_range: bool = True,
                activation_type: str = "uint8", weight_type: str = "int8",
                log: Callable[[str], None] | None = None) -> Int8Report:
    """Quantize a classifier to int8 (QDQ) with ONNX Runtime, calibrated on ``calib_images`` images.

    Args:
        model_or_checkpoint: a model, a best.pt/last.pt written by ``backbonekit train``, or an fp32
            ONNX file with backbonekit metadata (:func:`backbonekit.onnx_meta.export_onnx`).
        out_path: the int8 ONNX file to write (atomically; the preprocessing metadata travels with it).
        force: write ``out_path`` over a file this package did not export (never over the input).
        calibrate: a dataset name ``train`` accepts (``digits``, ``cifar10``, ``imagefolder:PATH``, ...;
            for a detector file one ``detect train`` accepts: ``photodigits``, ``yolo:PATH``, ...), or a
            float (N, C, H, W) array already prepared like the model's input.
        calib_images: how many images to calibrate on (fewer when the split has fewer; at least 8).
        data_dir: where datasets are (default ``data`` for classification; a detection dataset's own rule).
        split: the dataset split the calibration images come from (``train``: keeps ``test``/``val`` unseen).
        preprocessing: for a bare model, the checkpoint-style preprocessing (classes, image_size, mean,
            std); default: the calibration dataset's own, at ``input_size``.
        nodes_to_exclude: node names to keep in fp32.
        per_channel: one weight scale per output channel (``False``: per tensor).
        reduce_range: weights in 7 bits ([-64, 64]; default), so that no x86 CPU saturates (see the module
            docstring). ``False``: the full 8 bits, for files that only run on CPUs with VNNI or on ARM.
        activation_type, weight_type: ``"uint8"`` or ``"int8"`` (default uint8 activations, int8 weights).
            uint8 weights run on ONNX Runtime's U8U8 kernels, which do not saturate either.

    The settings, and whether they are safe on x86 CPUs without VNNI, go into the file's metadata
    (``quantization``) and the report.
    """
    settings = Int8Settings(per_channel, reduce_range, activation_type, weight_type)
    check_calib_images(calib_images)
    out_path = export_destination(out_path, inputs=[model_or_checkpoint], force=force)  # never the input
    with tempfile.TemporaryDirectory(prefix="backbonekit-int8-") as tmp:
        fp32 = _fp32_onnx(model_or_checkpoint, Path(tmp) / "fp32.onnx", calibrate, preprocessing, input_size,
                          data_dir or "data", download)
        meta, proto = read_metadata(fp32), load_proto(fp32, load_weights=False)
        if meta["task"] == "detection":
            nodes_to_exclude = list(nodes_to_exclude) + tail_nodes(proto)  # decode and NMS stay fp32
        if isinstance(calibrate, str) and meta["task"] == "detection":
            count, fetch, source = detection_calibration(calibrate, meta, calib_images, split=split,
                                                         data_dir=data_dir)
        elif isinstance(calibrate, str):
            count, fetch, source = dataset_calibration(calibrate, meta, calib_images, split=split,
                                                       data_dir=data_dir or "data", download=download)
        else:
            count, fetch, source = array_calibration(calibrate)
        reader = _reader(proto, min(count, calib_images), fetch, source)
        int8 = _quantize(fp32, Path(tmp), reader, nodes_to_exclude, settings)
        meta["quantization"] = {**settings.metadata(int8), "calibration": source, "images": reader.count}
        with atomic_path(out_path) as dst:
            import onnx

            onnx.save(set_metadata(int8, meta), str(dst))
    report = Int8Report(out_path, reader.count, source, *_count_nodes(int8, nodes_to_exclude), meta["quantization"])
    if log:
        log(report.summary())
    return report


def check_calib_images(calib_images: int) -> None:
    """One line when the number of calibration images asked for is not an integer >= 8."""
    if isinstance(calib_images, bool) or not isinstance(calib_images, int) or calib_images < MIN_CALIB_IMAGES:
        raise ValueError(f"calibration set too small: expected --calib-images >= {MIN_CALIB_IMAGES}, "
                         f"found {calib_images!r}")


def _reader(proto, count: int, fetch: Callable[[np.ndarray], np.ndarray], source: str) -> CalibrationData:
    """The calibration reader for the model's input, after checking the images fit it."""
    graph_input = proto.graph.input[0]
    shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in graph_input.type.tensor_type.shape.dim]
    fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    if fixed_batch:
        count -= count % fixed_batch  # a fixed-batch file takes whole batches only
    check_calibration(fetch(np.arange(min(fixed_batch or CALIB_BATCH, max(count, 1)))), count, shape, source)
    return CalibrationData(graph_input.name, count, fetch, fixed_batch or CALIB_BATCH)


def _quantize(fp32: Path, folder: Path, reader: CalibrationData, nodes_to_exclude: Sequence[str],
              settings: Int8Settings):
    """``quant_pre_process`` then ``quantize_static`` (QDQ, MinMax, the types and range of ``settings``):
    the quantized ``ModelProto``. The calibrator keeps one ReduceMin/ReduceMax per tensor and batch, not the
    activations, so memory stays small whatever the number of images."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    prepared, quantized = folder / "prepared.onnx", folder / "int8.onnx"
    try:
        _pre_process(fp32, prepared)
        quantize_static(str(prepared), str(quantized), reader, quant_format=QuantFormat.QDQ,
                        **settings.quantize_static_options(), calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=list(nodes_to_exclude) or None)
    except Exception as exc:  # onnxruntime and onnx raise their own types (Fail, InvalidGraph, bare Exception)
        if reader.error is not None:
            raise reader.error from None
        raise ValueError(f"ONNX Runtime's quantizer cannot handle this model: {type(exc).__name__}: "
                         f"{first_line(exc, 200)}") from None
    if reader.error is not None:
        raise reader.error
    return load_proto(quantized)


def _pre_process(src: Path, dst: Path) -> None:
    """ONNX Runtime's ``quant_pre_process``; where its symbolic shape inference cannot follow the graph
    (data-dependent shapes such as NonMaxSuppression's), ONNX's own shape inference instead.

    Run from ``dst``'s folder: when symbolic shape inference gives up, ONNX Runtime saves its partial
    graph as ``sym_shape_infer_temp.onnx`` plus a uuid-named copy of every weight (250 MB for YOLOv3)
    into the *current directory*, where they would be left behind (and once got committed)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, dst = src.resolve(), dst.resolve()
    with working_directory(dst.parent):
        try:
            quant_pre_process(str(src), str(dst))
        except Exception as exc:  # onnxruntime raises a bare Exception("Incomplete symbolic shape inference")
            if "symbolic shape" not in str(exc):
                raise
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)


@contextlib.contextmanager
def working_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Make ``path`` the current directory for the ``with`` block; the previous one is restored after it,
    even on error (``contextlib.chdir`` from Python 3.11, which backbonekit cannot require yet)."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield Path(path)
    finally:
        os.chdir(previous)


def _fp32_onnx(model_or_checkpoint, path: Path, calibrate, preprocessing, input_size, data_dir, download) -> Path:
    """An fp32 ONNX file with metadata: the given one, or an export of the model/checkpoint."""
    source = model_or_checkpoint
    if isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() == ".onnx":
        read_metadata(source)  # the preprocessing must be known to calibrate through it
        return Path(source)
    if isinstance(source, nn.Module) and preprocessing is None:
        if not isinstance(calibrate, str):
            raise ValueError("a bare model calibrated on an array needs preprocessing= (classes, image_size, "
                             "mean, std)")
        from .train.data import load_dataset
        from .weights import num_classes_in

        preprocessing = dict(load_dataset(calibrate, data_dir, input_size, 0, False, download).preprocessing())
        outputs = num_classes_in(source.state_dict())
        if len(preprocessing["classes"]) != outputs:  # another head (ImageNet's 1000): outputs named by index
            preprocessing["classes"] = [str(i) for i in range(outputs)]
    return export_onnx(source, path, preprocessing=preprocessing, dynamic_batch=True)


def tail_nodes(proto) -> list[str]:
    """Names of the nodes after the last convolution on every path (a detector's decoding and NMS):
    nodes from which no Conv can be reached. Their inputs are boxes and scores, not features."""
    consumers: dict[str, list] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    feeds_conv: set[int] = set()
    for node in reversed(proto.graph.node):  # nodes are topologically sorted: children come later
        children = [c for out in node.output for c in consumers.get(out, [])]
        if any(c.op_type == "Conv" or id(c) in feeds_conv for c in children):
            feeds_conv.add(id(node))
    return [n.name for n in proto.graph.node if n.op_type != "Conv" and id(n) not in feeds_conv
            and n.op_type not in SHAPE_OPS]


# -- what stayed fp32 -----------------------------------------------------------------------------------
def fp32_nodes(proto, nodes_to_exclude: Sequence[str] = ()) -> list[Fp32Node]:
    """Compute nodes of a QDQ graph with no DequantizeLinear feeding them, with the reason (see :func:`_count_nodes`)."""
    return _count_nodes(proto, nodes_to_exclude)[1]


def _count_nodes(proto, nodes_to_exclude: Sequence[str] = ()) -> tuple[int, list[Fp32Node]]:
    """(nodes that ONNX Runtime runs in int8, the other compute nodes with a reason).

    A node runs in int8 when its op type has an int8 form and a DequantizeLinear feeds it (ONNX Runtime
    fuses the group into an integer kernel). Shape arithmetic and constant folding are not counted.
    """
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    quantizable = set(QDQRegistry) | set(QLinearOpsRegistry)
    produced_by = {out: node for node in proto.graph.node for out in node.output}
    weights = {init.name for init in proto.graph.initializer}
    excluded = set(nodes_to_exclude)
    int8, fp32 = 0, []
    for node in proto.graph.node:
        if node.op_type in QDQ_OPS or node.op_type in SHAPE_OPS:
            continue
        parents = [produced_by.get(name) for name in node.input if name]
        dequantized = any(p is not None and p.op_type == "DequantizeLinear" for p in parents)
        if dequantized and node.op_type in quantizable and node.name not in excluded:
            int8 += 1
        elif not all(name in weights for name in node.input if name):  # constants: folded, not image work
            fp32.append(Fp32Node(node.name, node.op_type, _reason(node, parents, excluded, quantizable)))
    return int8, fp32


def _reason(node, parents: list, excluded: set[str], quantizable: set[str]) -> str:
    if node.name in excluded:
        return "kept in fp32 on purpose (nodes_to_exclude; a detector's decoding and NMS)"
    if node.op_type not in quantizable:
        return f"ONNX Runtime's quantizer has no int8 form of {node.op_type}"
    fp32_parents = sorted({p.op_type for p in parents if p is not None and p.op_type not in QDQ_OPS})
    if fp32_parents:
        return f"its input comes from an fp32 node ({', '.join(fp32_parents)}), so no int8 tensor reaches it"
    return "the quantizer left it in fp32 (no calibrated range for its input)"

"""Export a model to ONNX or TorchScript, and ``backbonekit export``.

ONNX goes through ``torch.onnx.export(..., dynamo=True)``, the exporter PyTorch maintains (the
default since 2.9; the older TorchScript-based one warns that it will be removed). It needs
``onnxscript`` (the ``export`` extra). TorchScript is a frozen ``torch.jit.trace``: our forward
has no data-dependent control flow, only input-shape checks that tracing fixes for the traced size.

Both write the BatchNorm-folded eval model (identical outputs, fewer nodes) to a temporary file in
the target folder and rename it into place, so an interrupted export never leaves half a file.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import atomic_path

FORMATS = ("onnx", "torchscript")
DEFAULT_OPSET = 18


def export_model(model: nn.Module, path: str | os.PathLike, *, format: str = "onnx", input_size: int = 416,
                 batch_size: int = 1, dynamic_batch: bool = False, opset: int = DEFAULT_OPSET) -> Path:
    """Write ``model`` (folded, eval mode, fp32, CPU) as ONNX or TorchScript to ``path``; return the path.

    Args:
        model: a backbonekit model (classifier or ``features_only``); it is folded in place.
        format: ``"onnx"`` or ``"torchscript"``.
        input_size: height and width of the example input (the exported size; see ``dynamic_batch``).
        batch_size: batch of the example input (and of the file, unless ``dynamic_batch``).
        dynamic_batch: let the batch dimension vary (ONNX: a symbolic ``batch`` axis; TorchScript
            traces are batch-agnostic already).
        opset: ONNX opset version.
    """
    from .optimize import fuse_batchnorm

    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, found {format!r}")
    if input_size < 1 or batch_size < 1:
        raise ValueError(f"input size and batch size must be positive, found {input_size} and {batch_size}")
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder {path.parent} does not exist")
    model = model.cpu().float().eval()
    if dynamic_batch:
        batch_size = max(batch_size, 2)  # torch.export specialises a dimension traced at size 1
    example = torch.randn(batch_size, int(getattr(model, "in_chans", 3)), input_size, input_size)
    check = getattr(model, "check_input", None)
    if check is not None:
        check(example)  # a one-line error for a size the network cannot take, before tracing
    fuse_batchnorm(model, example)
    writer = _write_onnx if format == "onnx" else _write_torchscript
    with atomic_path(path) as tmp:
        writer(model, example, tmp, dynamic_batch=dynamic_batch, opset=opset)
    return path


def output_names(model: nn.Module) -> list[str]:
    """ONNX output names: ``logits`` (classifier), or ``features_<index>`` per level (``features_only``)."""
    if getattr(model, "features_only", False):
        return [f"features_{i}" for i in model.out_indices]
    return ["logits"]


def _write_onnx(model: nn.Module, example: Tensor, path: Path, *, dynamic_batch: bool, opset: int) -> None:
    dynamic_shapes = {"x": {0: torch.export.Dim("batch")}} if dynamic_batch else None
    with _quiet():
        program = torch.onnx.export(model, (example,), dynamo=True, input_names=["input"],
                                    output_names=output_names(model), opset_version=opset,
                                    dynamic_shapes=dynamic_shapes, verbose=False)
        program.save(str(path), external_data=False)  # one self-contained file (our models are < 2 GB)


def _write_torchscript(model: nn.Module, example: Tensor, path: Path, *, dynamic_batch: bool, opset: int) -> None:
    del dynamic_batch, opset  # a trace of these convnets works for any batch size
    with _quiet(), torch.no_grad():
        traced = torch.jit.freeze(torch.jit.trace(model, example))
        torch.jit.save(traced, str(path))


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' progress lines and tracer warnings about the (static) input-shape checks."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def classes_in_weights(path: str | os.PathLike) -> int:
    """Number of classifier outputs in a weights file (0 when it has no classifier)."""
    from .weights import num_classes_in, read_weights

    return num_classes_in(read_weights(path)[0])


def build_for_export(name: str, *, weights: str | None = None, num_classes: int | None = None,
                     features_only: bool = False, **kwargs: Any) -> nn.Module:
    """The model ``backbonekit export`` writes: ``num_classes`` defaults to the weights file's, else 1000."""
    from . import create_model

    if num_classes is None:
        num_classes = classes_in_weights(weights) if weights else 1000
    return create_model(name, num_classes=num_classes, pretrained=weights, features_only=features_only, **kwargs)


# -- command line ---------------------------------------------------------------------------------------
def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="write a model as ONNX or TorchScript (BatchNorm folded)")
    p.add_argument("model", help="a registered model name (see `backbonekit models`)")
    p.add_argument("--format", choices=FORMATS, default="onnx")
    p.add_argument("--input-size", type=int, default=416, help="input height and width (default 416)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--dynamic-batch", action="store_true", help="ONNX: let the batch dimension vary")
    p.add_argument("--weights", help="weights file to load (backbonekit checkpoint, timm or torchvision)")
    p.add_argument("--num-classes", type=int, help="classifier outputs (default: the weights file's, else 1000)")
    p.add_argument("--features-only", action="store_true", help="export the multi-scale feature extractor")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("-o", "--output", required=True, help="file to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = build_for_export(args.model, weights=args.weights, num_classes=args.num_classes,
                             features_only=args.features_only)
    path = export_model(model, args.output, format=args.format, input_size=args.input_size,
                        batch_size=args.batch_size, dynamic_batch=args.dynamic_batch, opset=args.opset)
    batch = "N" if args.dynamic_batch else str(args.batch_size)
    print(f"wrote {path} ({args.format}, {args.model}, input {batch}x{model.in_chans}x{args.input_size}x"
          f"{args.input_size}, {path.stat().st_size / 2**20:.1f} MiB)")
    return 0

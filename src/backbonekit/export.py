"""Export a model to ONNX or TorchScript (``backbonekit export``).

ONNX goes through ``torch.onnx.export(..., dynamo=True)``, the exporter PyTorch maintains (the
default since 2.9; the older TorchScript-based one warns that it will be removed). It needs
``onnxscript`` (the ``export`` extra). TorchScript is a frozen ``torch.jit.trace``: our forward
has no data-dependent control flow, only input-shape checks that tracing fixes for the traced size.

Both write the BatchNorm-folded eval model (identical outputs, fewer nodes) to a temporary file in
the target folder and rename it into place, so an interrupted export never leaves half a file.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import Tensor, nn

from .checkpoint import atomic_path, check_output, looks_like_onnx, output_file

FORMATS = ("onnx", "torchscript")
# the mark of a model file this package wrote: an ONNX metadata_props key starting with it (every ONNX file we
# write has one: this, or the preprocessing record under "backbonekit"/"backbonekit.fpn"), a TorchScript extra file
WRITER_KEY = "backbonekit"
DEFAULT_OPSET = 18
# torch.onnx's dynamo exporter implements opset 18 and later; asked for less, it tries a version conversion
# that fails on our models (ReduceMean's axes) and silently keeps 18, so lower opsets are refused
MIN_OPSET = 18


def supported_opsets() -> range:
    """The ONNX opsets :func:`export_model` writes: 18 up to the newest the installed ``onnx`` knows."""
    import onnx

    return range(MIN_OPSET, onnx.defs.onnx_opset_version() + 1)


def check_opset(opset: int) -> None:
    """Raise one ValueError line unless ``opset`` is in :func:`supported_opsets`."""
    supported = supported_opsets()
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in supported:
        raise ValueError(f"expected an ONNX opset from {supported.start} to {supported.stop - 1} (torch.onnx's "
                         f"exporter with the installed onnx), found {opset!r}")


def exported_here(path: Path) -> bool:
    """Whether ``path`` is a model file this package exported (ONNX or TorchScript, with :data:`WRITER_KEY`'s mark)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return any(name.endswith(f"/extra/{WRITER_KEY}") for name in archive.namelist())
        with open(path, "rb") as f:
            if not looks_like_onnx(f.read(3)):
                return False
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # unreadable, not ONNX after all, onnx not installed: not known to be ours
        return False
    return any(p.key.startswith(WRITER_KEY) for p in proto.metadata_props)


def _not_exported_here(path: Path) -> str | None:
    if path.is_dir():
        return "is a folder"
    return None if exported_here(path) else "is not a model file backbonekit exported"


def export_destination(path: str | os.PathLike, *, inputs: Iterable[Any] = (), force: bool = False) -> Path:
    """Where an export may write (:func:`backbonekit.checkpoint.check_output`'s rules): never over one of
    ``inputs`` (the checkpoint or weights it reads), over an existing file only when this package exported it
    (a re-export), or with ``force``; and only into a folder that exists."""
    return output_file(check_output(path, inputs=inputs, force=force, replaceable=_not_exported_here))


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
        opset: ONNX opset version, one of :func:`supported_opsets` (the written file has exactly this one).
    """
    from .optimize import fuse_batchnorm

    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, found {format!r}")
    if input_size < 1 or batch_size < 1:
        raise ValueError(f"input size and batch size must be positive, found {input_size} and {batch_size}")
    if format == "onnx":
        check_opset(opset)
    path = output_file(path)
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
        program.model.metadata_props[f"{WRITER_KEY}.writer"] = f"backbonekit {_version()}"  # see exported_here
        program.save(str(path), external_data=False)  # one self-contained file (our models are < 2 GB)
    written = onnx_opset(path)
    if written != opset:  # the exporter falls back to another opset with only a log message
        raise ValueError(f"torch.onnx wrote opset {written} where opset {opset} was asked for; nothing was written")


def onnx_opset(path: str | os.PathLike) -> int:
    """The default-domain (``ai.onnx``) opset an ONNX file imports."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def _write_torchscript(model: nn.Module, example: Tensor, path: Path, *, dynamic_batch: bool, opset: int) -> None:
    del dynamic_batch, opset  # a trace of these convnets works for any batch size
    with _quiet(), torch.no_grad():
        traced = torch.jit.freeze(torch.jit.trace(model, example))
        torch.jit.save(traced, str(path), _extra_files={WRITER_KEY: f"backbonekit {_version()}"})  # exported_here


def _version() -> str:
    from . import __version__

    return __version__


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' progress lines and tracer warnings about the (static) input-shape checks."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export` wrote."""

    path: Path
    format: str
    model: str
    input_shape: tuple[int | str, int, int, int]  # "N" for the batch when it is dynamic
    nbytes: int


def build_for_export(name: str, *, weights: str | os.PathLike | None = None, num_classes: int | None = None,
                     features_only: bool = False, **kwargs: Any) -> nn.Module:
    """The model ``backbonekit export`` writes: ``num_classes`` defaults to the weights file's, else 1000.

    The weights file is read once, for its classifier size and its tensors both.
    """
    from . import create_model
    from .pretrained import weights_file
    from .weights import num_classes_in, read_weights

    pretrained = read_weights(weights_file(weights, name)) if weights else None  # a file, URL or published tag
    if num_classes is None:
        num_classes = num_classes_in(pretrained.state) if pretrained else 1000
    return create_model(name, num_classes=num_classes, pretrained=pretrained, features_only=features_only, **kwargs)


def export(name: str, output: str | os.PathLike, *, format: str = "onnx", weights: str | os.PathLike | None = None,
           num_classes: int | None = None, features_only: bool = False, input_size: int = 416, batch_size: int = 1,
           dynamic_batch: bool = False, opset: int = DEFAULT_OPSET, force: bool = False) -> ExportResult:
    """Build a registered model (:func:`build_for_export`) and write it with :func:`export_model`; ``output``
    as :func:`export_destination` allows (``force``: over a file this package did not export)."""
    if format == "onnx":
        check_opset(opset)  # before building the model and reading its weights
    export_destination(output, inputs=[weights], force=force)
    model = build_for_export(name, weights=weights, num_classes=num_classes, features_only=features_only)
    path = export_model(model, output, format=format, input_size=input_size, batch_size=batch_size,
                        dynamic_batch=dynamic_batch, opset=opset)
    batch: int | str = "N" if dynamic_batch else batch_size
    return ExportResult(path, format, name, (batch, int(model.in_chans), input_size, input_size), path.stat().st_size)

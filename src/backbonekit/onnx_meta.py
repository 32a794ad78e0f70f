"""ONNX files that carry their preprocessing: export with metadata, read it back, add it to a file.

The metadata schema lives in :mod:`backbonekit.deploy.metadata` (torch-free, so the deployment runtime
can read it); this module writes it at export time, from a training checkpoint's ``preprocessing``
(what ``evaluate``/``predict`` use) or from arguments.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from .checkpoint import atomic_path
from .deploy.metadata import KEY, classifier_metadata, from_props, to_props
from .export import DEFAULT_OPSET, export_destination, export_model
from .pretrained import IMAGENET_MEAN, IMAGENET_STD  # timm / torchvision weights: what a model with no checkpoint gets


def write_metadata(path: str | os.PathLike, meta: Mapping[str, Any]) -> Path:
    """Store ``meta`` in the ONNX file at ``path`` (replacing earlier backbonekit metadata), atomically."""
    import onnx

    path = Path(path)
    proto = set_metadata(load_proto(path), meta)
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    return path


def set_metadata(proto, meta: Mapping[str, Any]):
    """``proto`` (an ``onnx.ModelProto``) with ``meta`` as its backbonekit metadata, in place."""
    kept = [p for p in proto.metadata_props if p.key != KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in to_props(meta).items():
        proto.metadata_props.add(key=key, value=value)
    return proto


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The backbonekit metadata of an ONNX file (ValueError naming the file when it has none)."""
    proto = load_proto(path, load_weights=False)
    return from_props({p.key: p.value for p in proto.metadata_props}, str(path))


def load_proto(path: str | os.PathLike, load_weights: bool = True):
    """``onnx.load`` with one line for a missing file or one that is not ONNX."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file not found: expected a file at {path}")
    try:
        return onnx.load(str(path), load_external_data=load_weights)
    except Exception as exc:  # protobuf DecodeError, ...
        raise ValueError(f"cannot read {path}: expected an ONNX model file ({type(exc).__name__})") from None


def preprocessing_metadata(model: nn.Module, preprocessing: Mapping[str, Any] | None = None, *,
                           name: str | None = None, input_size: int | None = None) -> dict[str, Any]:
    """Classifier metadata from a checkpoint's ``preprocessing`` dict (dataset, classes, image_size, mean,
    std); without one, ImageNet's mean/std, class indices as names and ``input_size``."""
    prep = dict(preprocessing or {})
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    classes = prep.get("classes") or [str(i) for i in range(num_classes)]
    if num_classes and len(classes) != num_classes:
        raise ValueError(f"expected {num_classes} class names (the model's classifier outputs), found {len(classes)}")
    size = prep.get("image_size") or input_size
    if not size:
        raise ValueError("expected an input size for a model without a training checkpoint's preprocessing")
    if input_size and input_size != size:
        raise ValueError(f"input size {input_size} differs from the {size}x{size} images the model was trained on")
    return classifier_metadata(classes=classes, image_size=size, mean=prep.get("mean", IMAGENET_MEAN),
                               std=prep.get("std", IMAGENET_STD), in_chans=int(getattr(model, "in_chans", 3)),
                               model=name, dataset=prep.get("dataset"))


def load_classifier(model_or_checkpoint: nn.Module | str | os.PathLike) -> tuple[nn.Module, dict | None, str | None]:
    """(model on the CPU in eval mode, its checkpoint's preprocessing or None, its registered name or None)."""
    if isinstance(model_or_checkpoint, nn.Module):
        return model_or_checkpoint.cpu().eval(), None, None
    import torch

    from .train.trainer import load_trained_model

    model, ckpt = load_trained_model(model_or_checkpoint, torch.device("cpu"))
    return model, dict(ckpt["preprocessing"]), str(ckpt["model"])


def export_onnx(model_or_checkpoint: nn.Module | str | os.PathLike, path: str | os.PathLike, *,
                preprocessing: Mapping[str, Any] | None = None, input_size: int | None = None,
                batch_size: int = 1, dynamic_batch: bool = True, opset: int = DEFAULT_OPSET, force: bool = False) -> Path:
    """:func:`backbonekit.export.export_model` for a classifier, with its preprocessing in the file's metadata.

    ``model_or_checkpoint``: a model, or a best.pt/last.pt written by ``backbonekit train`` (whose
    preprocessing is used). ``preprocessing`` overrides the checkpoint's (keys as in a checkpoint).
    ``path``: as :func:`backbonekit.export.export_destination` allows (never the checkpoint; ``force``: over
    a file this package did not export).
    """
    import onnx

    path = export_destination(path, inputs=[model_or_checkpoint], force=force)
    model, ckpt_prep, name = load_classifier(model_or_checkpoint)
    meta = preprocessing_metadata(model, preprocessing or ckpt_prep, name=name, input_size=input_size)
    with atomic_path(path) as tmp:  # the file appears complete, metadata included, or not at all
        export_model(model, tmp, format="onnx", input_size=meta["image_size"], batch_size=batch_size,
                     dynamic_batch=dynamic_batch, opset=opset)
        onnx.save(set_metadata(load_proto(tmp), meta), str(tmp))
    return path

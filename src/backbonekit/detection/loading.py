"""One way to get a detector from what a user names: a run folder, a file, or a registered name.

:func:`load_detector` takes

* a run folder of ``backbonekit detect train`` (its ``best.pt``);
* a ``best.pt``/``last.pt`` written by ``detect train`` (any detector: the file records the model, its
  arguments and the class names);
* a Darknet ``yolov3.weights`` file (or any YOLOv3 checkpoint ``create_model("yolov3", pretrained=)`` reads);
* a torchvision ``fasterrcnn_resnet50_fpn`` / ``retinanet_resnet50_fpn`` / ``fcos_resnet50_fpn`` state_dict
  (the kind is told by its keys);
* a registered detector name, with ``weights`` (a file, a URL or a published tag such as
  ``yolov3.darknet_coco``; none: random weights, or its default published weights with ``published=True``);
* a published detector tag (``yolov3.darknet_coco``, ``fasterrcnn.tv_coco``: ``backbonekit weights``).

Anything else is refused with one line.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._text import few, first_line
from ..checkpoint import CheckpointError, load_file
from ..engine.runs import best_checkpoint
from .training.config import check_input_size

WHAT = ("a weights file, a run folder or a detector (a best.pt/last.pt of backbonekit detect train, yolov3.weights, "
        "a torchvision fasterrcnn/retinanet/fcos state_dict, a published tag, or a name with --weights)")


def is_run_checkpoint(ckpt: Any) -> bool:
    """Whether ``ckpt`` (a loaded file) is a best.pt/last.pt written by ``backbonekit detect train``."""
    return isinstance(ckpt, dict) and ckpt.get("task") == "detection" and "model_kwargs" in ckpt and "model" in ckpt


def size_options(model_name: str, input_size: int | None) -> dict[str, Any]:
    """``input_size`` as the detector takes it: YOLOv3's letterbox side, the others' ``min_size``/``max_size``."""
    if input_size is None:
        return {}
    check_input_size(input_size)
    if model_name == "yolov3":
        return {"input_size": input_size}
    return {"min_size": input_size, "max_size": input_size}


def model_from_checkpoint(ckpt: dict[str, Any], source: str | os.PathLike, input_size: int | None = None) -> nn.Module:
    """The detector a ``detect train`` checkpoint records, with its weights, class names (``class_names``)
    and the training file's category ids (``category_ids``, None when its labels are the ids)."""
    from ..models import create_model

    kwargs = {**copy.deepcopy(ckpt["model_kwargs"]), **size_options(ckpt["model"], input_size)}
    model = create_model(ckpt["model"], num_classes=int(ckpt["num_classes"]), **kwargs)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{source}: its weights do not fit its recorded model "
                              f"({first_line(exc, 160, lines=None)})") from None
    model.class_names = list(ckpt["classes"]) if ckpt.get("classes") else None
    # the training file's category id of each label (COCO's); None (and in files older than the field): the label
    model.category_ids = [int(i) for i in ckpt["category_ids"]] if ckpt.get("category_ids") else None
    return model


def _from_file(path: Path, input_size: int | None) -> tuple[nn.Module, dict[str, Any]]:
    from ..models import create_model
    from ..weights import detect_file_format, read_weights, weights_from_checkpoint
    from .weights import detector_kind

    fmt = detect_file_format(path)
    if fmt == "darknet":
        return create_model("yolov3", pretrained=path, **size_options("yolov3", input_size)), {}
    ckpt = load_file(path) if fmt == "torch" else None
    if is_run_checkpoint(ckpt):
        return model_from_checkpoint(ckpt, path, input_size), ckpt
    state, _ = weights_from_checkpoint(ckpt, path) if ckpt is not None else read_weights(path)
    kind = detector_kind(state) or ("yolov3" if "head.convs_pred.0.weight" in state else None)
    if kind is None:
        raise CheckpointError(f"cannot load a detector from {path}: expected {WHAT}; found keys like "
                              f"{few(sorted(state))}")
    return create_model(kind, pretrained=path, **size_options(kind, input_size)), {}


def load_detector(spec: str | os.PathLike, *, weights: str | os.PathLike | None = None,
                  input_size: int | None = None, device: torch.device | str = "cpu", published: bool = False
                  ) -> tuple[nn.Module, dict[str, Any]]:
    """``(detector in eval mode on device, checkpoint dict)`` from ``spec`` (see the module docstring).

    The checkpoint dict is the ``detect train`` file's (config, classes, history) or ``{}`` for other
    sources. ``input_size`` overrides the detector's input size (YOLOv3's letterbox side, the FPN
    detectors' ``min_size`` and ``max_size``). ``published``: a detector name without ``weights`` takes its
    default published weights (``detect predict yolov3 photo.jpg``) instead of random ones.
    """
    from ..models import create_model, list_models
    from ..pretrained import find

    path = best_checkpoint(spec, "backbonekit detect train")
    tag = None if path.exists() else find(str(spec))
    if path.is_file():
        if weights is not None:
            raise ValueError(f"--weights goes with a detector name, found a file or run folder too ({spec})")
        model, ckpt = _from_file(path, input_size)
    elif str(spec) in list_models(task="detection"):
        pretrained = weights if weights is not None else (True if published else None)
        model, ckpt = create_model(str(spec), pretrained=pretrained, **size_options(str(spec), input_size)), {}
    elif tag is not None and tag.model in list_models(task="detection") and weights is None:
        model, ckpt = create_model(tag.model, pretrained=tag.name, **size_options(tag.model, input_size)), {}
    else:
        from ..engine.runs import refuse_missing_checkpoint

        refuse_missing_checkpoint(spec, list_models(task=None))  # a path that does not exist says so
        names = ", ".join(list_models(task="detection"))
        raise CheckpointError(f"expected {WHAT}; detectors: {names}; found {str(spec)!r}")
    return model.to(device).eval(), ckpt


def load_run_checkpoint(checkpoint: str | os.PathLike, device: torch.device | str = "cpu"
                        ) -> tuple[nn.Module, dict[str, Any]]:
    """The detector of a ``detect train`` best.pt/last.pt (or run folder), and its checkpoint dict;
    one CheckpointError line for any other source (evaluation needs the recorded classes and data)."""
    model, ckpt = load_detector(checkpoint, device=device)
    if not ckpt:
        raise CheckpointError(f"{checkpoint}: expected a best.pt/last.pt written by backbonekit detect train "
                              f"(or its run folder), found another kind of file")
    return model, ckpt

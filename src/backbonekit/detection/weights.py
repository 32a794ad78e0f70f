"""A detector's weights files: every ``pretrained=`` source read in one place, one rule for its input
normalisation, and YOLOv3's files written and converted.

:func:`read_pretrained` reads what a detector may start from: a Darknet ``yolov3.weights`` (any class count)
or Darknet-53 backbone file (``darknet53.conv.74``, ``darknet53.weights``), a torchvision
``fasterrcnn``/``retinanet``/``fcos`` state_dict, a backbonekit checkpoint (``detect train``'s best.pt,
``backbonekit train``'s best.pt, a converted file), a ``.safetensors`` file, or a backbone's torchvision or
timm state_dict (a published tag or URL is fetched to a file first: :func:`backbonekit.pretrained.weights_file`).
:func:`pretrained_normalisation` decides the (mean, std) the weights were trained with, for both detector
families. The Darknet file format itself is :mod:`backbonekit.darknet_yolov3`.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from .._text import few
from ..checkpoint import CheckpointError, atomic_save, check_output, load_file
from ..darknet_weights import DarknetHeader
from ..darknet_yolov3 import (YOLOV3_CFG_NECK_CHANNELS, inspect_yolov3_file, read_yolov3_weights,
                              write_yolov3_weights)
from ..models.darknet import DARKNET_SLOPE
from ..pretrained import IMAGENET_MEAN, IMAGENET_STD
from ..weights import (architecture_kwargs, check_destination, check_fits, detect_file_format, detect_layout,
                       load_into, lost_by_replacing, output_format_for, read_weights, to_backbonekit,
                       weights_from_checkpoint, write_safetensors)
from .models.yolov3 import current_kwargs
from .task.anchors import YOLOV3_MASKS

Normalisation = tuple[list[float], list[float]]  # (mean, std) per RGB channel, applied to [0, 1] pixels
NORM_KEYS = ("image_mean", "image_std")  # the detectors' arguments for it (YOLOv3's and torchvision's)
YOLOV3_KEY = "head.convs_pred.0.weight"  # the first output conv: only a YOLOv3 detector has it
CLASS_KEYS = {  # the tensors of torchvision's detectors whose shape depends on the number of classes
    "fasterrcnn": ("roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.bias",
                   "roi_heads.box_predictor.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.bias"),
    "retinanet": ("head.classification_head.cls_logits.weight", "head.classification_head.cls_logits.bias"),
    "fcos": ("head.classification_head.cls_logits.weight", "head.classification_head.cls_logits.bias"),
}


@dataclass
class PretrainedSource:
    """What a ``pretrained=`` file holds for a detector: the whole detector, or a backbone only."""

    path: Path
    state: dict[str, Tensor]  # a detector's own keys; a backbone's in this package's names, unprefixed
    num_classes: int  # 0: backbone only
    description: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # what a detector file records to rebuild it
    header: DarknetHeader | None = None  # a Darknet file's header
    # the (mean, std) the weights were trained with (:func:`pretrained_normalisation`); None: raw [0, 1] pixels
    normalisation: Normalisation | None = None
    # a backbone-only file: the backbone it names (None: it does not say) and the architecture arguments
    # its weights need (weights.architecture_kwargs: Darknet's slope 0.1, timm's darknet53 0.01, ...)
    backbone: str | None = None
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def input_norm(self) -> dict[str, list[float]]:
        """The normalisation as YOLOv3's arguments (``image_mean``/``image_std``); empty for raw input."""
        return dict(zip(NORM_KEYS, self.normalisation)) if self.normalisation else {}


# -- the normalisation rule ---------------------------------------------------------------------------
def recorded_normalisation(model_kwargs: Mapping[str, Any], preprocessing: Any = None) -> Normalisation | None:
    """(mean, std) a file records for its input: a detector's ``image_mean``/``image_std`` in its model
    arguments (YOLOv3's old ``input_mean``/``input_std`` too), else a classification run's ``preprocessing``;
    None when it records none."""
    prep = preprocessing if isinstance(preprocessing, Mapping) else {}
    model_kwargs = current_kwargs(model_kwargs)
    for mean, std in ((model_kwargs.get("image_mean"), model_kwargs.get("image_std")),
                      (prep.get("mean"), prep.get("std"))):
        if mean is not None and std is not None:
            return [float(v) for v in mean], [float(v) for v in std]
    return None


def pretrained_normalisation(state: Mapping[str, Tensor], meta: Mapping[str, Any],
                             preprocessing: Any = None) -> Normalisation | None:
    """The (mean, std) the weights of a file were trained with; None for Darknet's raw [0, 1] pixels.

    ``state`` and ``meta`` are what :func:`backbonekit.weights.read_weights` gives (the file's own key names);
    ``preprocessing`` a ``backbonekit train`` checkpoint's. In order:

    1. what the file records (:func:`recorded_normalisation`): a detector's mean/std, a classification run's;
    2. none for weights trained on Darknet's raw input: a Darknet file; a YOLOv3 detector (its default input
       is Darknet's); Darknet-53 in this package's names computing with Darknet's LeakyReLU slope (0.1,
       recorded or by default), which only Darknet's own weights, converted, are;
    3. ImageNet's otherwise: torchvision's and timm's state_dicts (ResNet, timm's Darknet-53, torchvision's
       detectors) and the files this package converted from them (``backbonekit train``'s own files always
       record their normalisation, so a backbone file that records none is a converted one).
    """
    recorded = recorded_normalisation(meta.get("model_kwargs") or {}, preprocessing)
    if recorded is not None:
        return recorded
    if meta.get("format") == "darknet" or meta.get("model") == "yolov3" or YOLOV3_KEY in state:
        return None
    slope = (meta.get("model_kwargs") or {}).get("act_slope", DARKNET_SLOPE)
    if detect_layout(state) == "darknet" and slope == DARKNET_SLOPE:
        return None
    return list(IMAGENET_MEAN), list(IMAGENET_STD)


def normalisation_of(path: str | os.PathLike) -> Normalisation | None:
    """:func:`pretrained_normalisation` of the weights file at ``path`` (any kind)."""
    path = Path(path)
    fmt = detect_file_format(path)
    if fmt == "darknet":  # a YOLOv3 file too, which read_weights (Darknet-53's files) cannot read
        return pretrained_normalisation({}, {"format": "darknet"})
    return pretrained_normalisation(*_read_with_preprocessing(path, fmt))


def _read_with_preprocessing(path: Path, fmt: str) -> tuple[dict[str, Tensor], dict[str, Any], Any]:
    """(state, meta) as :func:`~backbonekit.weights.read_weights` gives them, and a training run's
    ``preprocessing`` (the file is read once)."""
    ckpt = load_file(path) if fmt == "torch" else None
    state, meta = weights_from_checkpoint(ckpt, path) if ckpt is not None else read_weights(path)
    return state, meta, ckpt.get("preprocessing") if isinstance(ckpt, Mapping) else None


# -- reading --------------------------------------------------------------------------------------------
def detector_kind(state: Mapping[str, Tensor]) -> str | None:
    """Which of torchvision's detectors a state_dict is (by its head's keys), or None."""
    if CLASS_KEYS["fasterrcnn"][0] in state:
        return "fasterrcnn"
    if CLASS_KEYS["fcos"][0] in state:
        return "fcos" if "head.regression_head.bbox_ctrness.weight" in state else "retinanet"
    return None


def classes_in_file(kind: str, state: Mapping[str, Tensor], path: Any) -> int:
    """Object classes of a ``kind`` detector state_dict (torchvision's layout): Faster R-CNN's class scores
    minus background; RetinaNet's and FCOS's class logits per anchor."""
    found = detector_kind(state)
    if found != kind:
        what = f"a state_dict of {found}" if found else f"keys like {few(sorted(state))}"
        raise CheckpointError(f"cannot use {path} for {kind}: expected a state_dict of {kind} "
                              f"({CLASS_KEYS[kind][0]}, ...), found {what}")
    if kind == "fasterrcnn":
        return int(state[CLASS_KEYS[kind][0]].shape[0]) - 1
    anchors = int(state["head.regression_head.bbox_reg.weight"].shape[0]) // 4
    return int(state[CLASS_KEYS[kind][0]].shape[0]) // anchors


def _detector_classes(kind: str, state: Mapping[str, Tensor], model_kwargs: Mapping[str, Any], path: Path) -> int:
    """Object classes of a whole ``kind`` detector in ``state``; 0 when it holds no detector."""
    if kind == "yolov3":
        if YOLOV3_KEY not in state:
            return 0
        anchors_per_level = len(model_kwargs.get("masks", YOLOV3_MASKS)[0])
        return int(state[YOLOV3_KEY].shape[0]) // anchors_per_level - 5
    return classes_in_file(kind, state, path) if any(k.startswith("backbone.body.") for k in state) else 0


def _darknet_yolov3_source(path: Path, neck_channels: Sequence[int]) -> PretrainedSource:
    state, info = read_yolov3_weights(path, neck_channels)
    kind = (f"Darknet v{info.header.version}, {info.num_classes} classes" if info.num_classes else
            "Darknet-53 backbone file")
    if not info.num_classes:
        state = {k.removeprefix("backbone."): v for k, v in state.items()}
    return PretrainedSource(path, state, info.num_classes, kind, header=info.header,
                            normalisation=pretrained_normalisation(state, {"format": "darknet"}),
                            backbone="darknet53", backbone_kwargs={"act_slope": DARKNET_SLOPE})


def read_pretrained(path: str | os.PathLike, kind: str = "yolov3",
                    neck_channels: Sequence[int] = YOLOV3_CFG_NECK_CHANNELS) -> PretrainedSource:
    """Read a ``pretrained=`` file for the detector ``kind`` (``yolov3``, ``fasterrcnn``, ``retinanet``,
    ``fcos``): a whole detector (``num_classes`` from the file) or a backbone (``num_classes`` 0), with the
    normalisation its weights were trained with. One CheckpointError line for anything else."""
    path = Path(path)
    fmt = detect_file_format(path)
    if fmt == "darknet" and kind == "yolov3":
        return _darknet_yolov3_source(path, neck_channels)
    state, meta, preprocessing = _read_with_preprocessing(path, fmt)
    norm = pretrained_normalisation(state, meta, preprocessing)
    layout = detect_layout(state)
    if meta.get("model") not in (None, kind) and layout == "unknown":
        raise CheckpointError(f"{path} holds weights for {meta['model']}, found {kind}")
    model_kwargs = dict(meta.get("model_kwargs") or {})
    classes = _detector_classes(kind, state, model_kwargs, path)
    if classes:
        return PretrainedSource(path, state, classes, "detector checkpoint", model_kwargs, normalisation=norm)
    if layout == "unknown":
        expected = ("a YOLOv3 checkpoint" if kind == "yolov3" else "a detector state_dict (backbone.body.*)")
        raise CheckpointError(f"cannot use {path} for {kind}: expected {expected} or a backbone's weights, found "
                              f"keys like {few(sorted(state))}")
    return PretrainedSource(path, to_backbonekit(state, layout), 0, f"{layout} backbone checkpoint",
                            normalisation=norm, backbone=meta.get("model"),
                            backbone_kwargs=architecture_kwargs(state, meta))


def is_detector_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a whole YOLOv3 detector (a Darknet file of some class count, or a checkpoint)."""
    try:
        return read_pretrained(path).num_classes > 0
    except (CheckpointError, ValueError, KeyError):
        return False


# -- loading --------------------------------------------------------------------------------------------
def load_pretrained(model: nn.Module, source: PretrainedSource) -> str:
    """Load ``source`` into a YOLOv3 strictly; return a note when only the backbone was loaded."""
    if source.num_classes:
        load_into(model, source.state, source=f"weights file {source.path}")
        return ""
    load_into(model.backbone, source.state, source=f"weights file {source.path}", allow_missing_head=True)
    return (f"{source.path} ({source.description}) holds the backbone only: loaded it; the neck and head "
            f"start from scratch (YOLOv3's training recipe)")


def load_fine_tuned(model: nn.Module, source: PretrainedSource) -> str:
    """Load ``source`` into a YOLOv3 to train on; a detector's output convs of another class count start
    from scratch. Returns what was loaded, for the log."""
    if not source.num_classes:
        return load_pretrained(model, source)
    own = model.state_dict()
    head = [k for k, v in source.state.items() if k in own and own[k].shape != v.shape and ".convs_pred." in k]
    state = {k: v for k, v in source.state.items() if k not in head}
    missing, unexpected = model.load_state_dict(state, strict=False)
    wrong = [k for k in missing if k not in head] + list(unexpected)
    if wrong:
        raise CheckpointError(f"cannot start from {source.path}: its detector does not fit this one "
                              f"(keys {few(sorted(wrong))}; check --backbone and --neck-width)")
    note = f"; its output convs ({source.num_classes} classes) start from scratch" if head else ""
    return f"loaded the detector in {source.path}{note}"


def load_detector_state(model: nn.Module, state: Mapping[str, Tensor], source: str,
                        skip: Sequence[str] = (), prefix: str = "") -> None:
    """Load ``state`` into one of torchvision's detectors strictly (only ``skip`` may be absent; under ``prefix``
    when given); one CheckpointError line otherwise. BatchNorm counters are matched to the model (a
    FrozenBatchNorm2d has none)."""
    own = {k: v for k, v in model.state_dict().items() if k.startswith(prefix)}
    state = {k: v for k, v in state.items() if k not in skip
             and not (k.endswith("num_batches_tracked") and k not in own)}
    state.update({k: v for k, v in own.items() if k.endswith("num_batches_tracked") and k not in state})
    if prefix:  # a backbone file: the classifier has no place in a features-only body
        state = {k: v for k, v in state.items() if k in own or not k.startswith(prefix + "fc.")}
    missing = sorted(set(own) - set(state) - set(skip))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: {len(missing)} missing keys "
                              f"{few(missing)}, {len(unexpected)} unexpected keys {few(unexpected)}")
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if v.shape != own[k].shape]
    if wrong:
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: shape mismatch (file vs model) for "
                              f"{len(wrong)} tensors, e.g. {wrong[0]}")
    model.load_state_dict(state, strict=False)


# -- saving and converting ------------------------------------------------------------------------------
def save_detector(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model`` by the name ``path`` implies: ``.weights`` (Darknet; Darknet-53 backbone only),
    ``.safetensors``, or a backbonekit checkpoint (``.pt``/``.pth``) recording how to rebuild it."""
    return write_detector_state(model.state_dict(), path, getattr(model, "model_kwargs", {}))


def write_detector_state(state: Mapping[str, Tensor], path: str | os.PathLike, model_kwargs: Mapping[str, Any],
                         header: DarknetHeader = DarknetHeader(0, 2, 0)) -> Path:
    path = Path(path)
    kind = output_format_for(path)
    if kind == "darknet":
        if model_kwargs.get("backbone", "darknet53") != "darknet53":
            raise ValueError(f"the Darknet weights format holds YOLOv3 on darknet53 only, found backbone "
                             f"{model_kwargs['backbone']}; write .pt or .safetensors instead")
        norm = current_kwargs(model_kwargs)
        if norm.get("image_mean") is not None or norm.get("image_std") is not None:
            raise ValueError(f"the Darknet weights format has no input normalisation, found image_mean="
                             f"{norm.get('image_mean')} image_std={norm.get('image_std')} "
                             f"(Darknet would feed raw [0, 1] pixels); write .pt or .safetensors instead")
        write_yolov3_weights(state, path, header=header,
                             neck_channels=model_kwargs.get("neck_channels", YOLOV3_CFG_NECK_CHANNELS))
    elif kind == "safetensors":
        write_safetensors(state, path, "yolov3", dict(model_kwargs))
    else:
        atomic_save({"format": "backbonekit", "model": "yolov3", "model_kwargs": dict(model_kwargs),
                     "state_dict": {k: v.detach().cpu() for k, v in state.items()}}, path)
    return path


def _lost_by_replacing(dst: Path) -> str | None:
    """What writing a converted detector over ``dst`` would lose (None: nothing): the backbone files' rule
    (:func:`backbonekit.weights.lost_by_replacing`), except that a YOLOv3 Darknet file, which that rule cannot
    read, holds weights alone (an earlier conversion's output)."""
    with contextlib.suppress(CheckpointError, OSError):
        if detect_file_format(dst) == "darknet" and inspect_yolov3_file(dst).num_classes:
            return None
    return lost_by_replacing(dst, has_classifier=True)


def convert_detector_weights(src: str | os.PathLike, dst: str | os.PathLike, *, force: bool = False) -> Path:
    """Convert a YOLOv3 detector file between Darknet ``.weights``, backbonekit ``.pt`` and ``.safetensors``
    (the format from ``dst``'s name); checked against the model it describes before anything is written.
    A Darknet source keeps its header (version and ``seen``) when written back as Darknet. As for backbones,
    ``dst`` may not be ``src``, and an existing ``dst`` holding a training record is kept unless ``force``."""
    from ..models import create_model

    check_destination(Path(src), Path(dst))
    check_output(Path(dst), force=force, replaceable=_lost_by_replacing)
    source = read_pretrained(src)
    if not source.num_classes:
        raise CheckpointError(f"{src} holds a backbone only ({source.description}): expected a whole YOLOv3 detector")
    with torch.device("meta"):
        model = create_model("yolov3", num_classes=source.num_classes, **source.model_kwargs)
    check_fits(model, source.state, source=f"weights file {src}")
    kwargs = {**getattr(model, "model_kwargs", {}), **source.model_kwargs}
    header = source.header.standard() if source.header else DarknetHeader(0, 2, 0)  # one Darknet itself reads
    return write_detector_state(source.state, dst, kwargs, header=header)

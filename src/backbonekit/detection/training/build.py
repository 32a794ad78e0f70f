"""The detector a run trains, built from its config: YOLOv3 with its loss and prior-initialised head, or one
of torchvision's detectors, starting from ``--pretrained`` (read, and its normalisation decided, by
:mod:`backbonekit.detection.weights`)."""

from __future__ import annotations

import copy
import math
from typing import Callable, Sequence

from torch import nn

from ...models import create_model
from ...pretrained import IMAGENET_MEAN, IMAGENET_STD, weights_file
from ..models.yolov3 import current_kwargs
from ..task.anchors import YOLOV3_MASKS
from ..task.loss import YOLOv3Loss
from ..weights import NORM_KEYS, PretrainedSource, load_fine_tuned, normalisation_of, read_pretrained
from .config import DetectConfig

RAW_INPUT = ([0.0] * 3, [1.0] * 3)  # Darknet's [0, 1] pixels as torchvision's transform takes them


def build_from_config(cfg: DetectConfig, num_classes: int, anchors: Sequence[Sequence[float]] | None, *,
                   load_pretrained: bool = True, resumed_kwargs: dict | None = None,
                   log: Callable[[str], None] = print) -> tuple[nn.Module, dict]:
    """``cfg.model`` on ``cfg.backbone`` ready to train (YOLOv3 with its loss attached), and the model
    arguments a checkpoint records.

    YOLOv3's input normalisation (``image_mean``/``image_std``) is the pretrained source's
    (:func:`~backbonekit.detection.weights.pretrained_normalisation`), or ``resumed_kwargs``'s (the run being
    resumed records it); none for Darknet's raw [0, 1] input.
    ``cfg.pretrained`` may be a file, a URL or a published tag (fetched once into torch's hub cache)."""
    if cfg.model != "yolov3":
        return build_torchvision_detector(cfg, num_classes, load_pretrained=load_pretrained, resumed_kwargs=resumed_kwargs)
    # a resumed run keeps the backbone options it recorded (act_slope of a timm file, ...)
    source, arch = (_pretrained_source(cfg) if cfg.pretrained and load_pretrained
                    else (None, dict((resumed_kwargs or {}).get("backbone_kwargs") or {})))
    norm = source.input_norm if source is not None else \
        {k: v for k, v in current_kwargs(resumed_kwargs or {}).items() if k in NORM_KEYS and v is not None}
    model_kwargs = {"backbone": cfg.backbone, "backbone_kwargs": dict(arch), "input_size": cfg.input_size,
                    "anchors": [list(map(float, a)) for a in anchors], "masks": [list(m) for m in YOLOV3_MASKS],
                    "neck_channels": list(cfg.neck_channels), **norm}
    kwargs = copy.deepcopy(model_kwargs)
    kwargs["backbone_kwargs"]["frozen_stages"] = cfg.stages_to_freeze
    model = create_model(cfg.model, num_classes=num_classes, **kwargs)
    init_prior_bias(model)
    if source is not None:
        log(load_fine_tuned(model, source))
    attach_loss(model, ignore_thresh=cfg.ignore_thresh, iou_thresh=cfg.iou_thresh)
    return model, model_kwargs


def _pretrained_source(cfg: DetectConfig) -> tuple[PretrainedSource, dict]:
    """(source, backbone kwargs) of ``cfg.pretrained``: a Darknet file, a detector, or a backbone checkpoint
    (the file is read once)."""
    source = read_pretrained(weights_file(cfg.pretrained, cfg.model), "yolov3", cfg.neck_channels)
    if source.num_classes:
        return source, {}
    if source.backbone and source.backbone != cfg.backbone:
        raise ValueError(f"pretrained {cfg.pretrained} holds {source.backbone} weights, found --backbone "
                         f"{cfg.backbone} (pass --backbone {source.backbone})")
    return source, dict(source.backbone_kwargs)


def build_torchvision_detector(cfg: DetectConfig, num_classes: int, *, load_pretrained: bool = True,
                               resumed_kwargs: dict | None = None) -> tuple[nn.Module, dict]:
    """torchvision's ``cfg.model`` (fasterrcnn, retinanet, fcos) on ``cfg.backbone`` through an FPN, taking
    ``cfg.input_size`` images as they come (``min_size = max_size = input_size``), normalised as the
    pretrained backbone was (:func:`~backbonekit.detection.weights.pretrained_normalisation`; ImageNet's
    from scratch, torchvision's default). With ``cfg.pretrained`` the backbone gets torchvision's frozen
    BatchNorm and trainable layers; the checkpoint records that (``frozen_bn``). A resumed run takes the
    normalisation its checkpoint recorded (the pretrained file need not exist any more)."""
    if resumed_kwargs and "image_mean" in resumed_kwargs:
        mean, std = resumed_kwargs["image_mean"], resumed_kwargs["image_std"]
    elif cfg.pretrained:
        mean, std = normalisation_of(weights_file(cfg.pretrained, cfg.model)) or RAW_INPUT
    else:  # from scratch: torchvision's default
        mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
    model_kwargs = {"backbone": cfg.backbone, "min_size": cfg.input_size, "max_size": cfg.input_size,
                    "image_mean": mean, "image_std": std, "frozen_bn": bool(cfg.pretrained)}
    if cfg.model == "retinanet":
        model_kwargs["detections_per_img"] = 100  # COCO's maxDets (torchvision's RetinaNet keeps 300)
    model_kwargs.update(cfg.rpn_proposals)  # Faster R-CNN's proposal counts, when set
    level = cfg.fpn_min_level if cfg.fpn_min_level is not None else (resumed_kwargs or {}).get("fpn_min_level")
    if level is not None:
        model_kwargs["fpn_min_level"] = level
    pretrained = cfg.pretrained if load_pretrained else None
    model = create_model(cfg.model, num_classes=num_classes, pretrained=pretrained, **model_kwargs)
    if "fpn_min_level" in model.model_kwargs:  # the pretrained file's own level, when the config sets none
        model_kwargs["fpn_min_level"] = model.model_kwargs["fpn_min_level"]
    return model, model_kwargs


def init_prior_bias(model: nn.Module, objects_per_image: float = 4.0, class_prior: float = 0.6) -> None:
    """Start the output convs' objectness and class biases at prior probabilities (RetinaNet's "prior"
    initialisation, Lin et al. 2017, section 4.1; YOLOv5 does the same for YOLO heads): about
    ``objects_per_image`` objects spread over each level's cells, and ``class_prior`` over the classes.

    With a zero bias every cell starts at objectness 0.5, and the first hundreds of steps are spent
    pushing thousands of empty cells down (the noobj term dwarfs the others).
    """
    head = model.head
    for conv, (h, w) in zip(head.convs_pred, _grids(model)):
        bias = conv.bias.detach().view(-1, 5 + head.num_classes)  # (anchors, 5 + C)
        p_obj = min(0.5, objects_per_image / (h * w * bias.shape[0]))
        bias[:, 4] = math.log(p_obj / (1 - p_obj))
        p_cls = min(0.5, class_prior / max(head.num_classes - 0.99, 1.0))
        bias[:, 5:] = math.log(p_cls / (1 - p_cls))


def _grids(model: nn.Module) -> list[tuple[int, int]]:
    return [(model.input_size // s, model.input_size // s) for s in model.strides]


def attach_loss(model: nn.Module, *, ignore_thresh: float, iou_thresh: float) -> nn.Module:
    """Give a YOLOv3 its training loss (``model(images, targets)`` in train mode then returns the loss dict)."""
    model.loss_fn = YOLOv3Loss(model.anchors.tolist(), model.masks, model.strides, model.num_classes,
                               ignore_thresh=ignore_thresh, iou_thresh=iou_thresh)
    return model

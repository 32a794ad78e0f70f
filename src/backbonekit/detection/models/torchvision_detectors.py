"""Faster R-CNN, RetinaNet and FCOS from torchvision's own classes, on this package's backbones through an FPN.

``create_model("fasterrcnn" | "retinanet" | "fcos", backbone=NAME, num_classes=N, **torchvision_kwargs)``.
Heads, losses, samplers, anchors and post-processing are torchvision's (Ren et al. arXiv 1506.01497,
Lin et al. arXiv 1708.02002, Tian et al. arXiv 1904.01355); this module only chooses the pyramid
(:func:`~backbonekit.detection.models.fpn.build_fpn_backbone`), one anchor size per map, the RoI pooler
(:class:`~backbonekit.detection.models.fpn.LevelRoIAlign`), and the label convention:

* ``labels`` are 0-based object classes and ``num_classes`` counts objects only, for every detector.
  Faster R-CNN's background slot (torchvision's label 0) is internal: targets are shifted up by one on the
  way in and detections down by one on the way out. RetinaNet and FCOS have no background slot.
* Module names are torchvision's, so torchvision's ``fasterrcnn_resnet50_fpn``, ``retinanet_resnet50_fpn``
  and ``fcos_resnet50_fpn`` state_dicts load with ``pretrained=FILE`` (``backbone="resnet50"``).
* A backbone that starts from weights (``pretrained=``, a detector or a backbone file) gets
  ``FrozenBatchNorm2d`` and ``trainable_layers`` (default: all but the stem and the first stage) as
  torchvision's builders do; from scratch it keeps plain BatchNorm and trains every layer.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn
from torchvision.models import detection as tvd
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import box_area

from ...models._registry import ModelInfo, register_model
from ..weights import CLASS_KEYS, PretrainedSource, load_detector_state, read_pretrained
from .fpn import BackboneWithFPN, LevelRoIAlign, build_fpn_backbone
from .yolov3 import check_images

DEFAULT_BACKBONE = "resnet50"
DEFAULT_NUM_CLASSES = 80  # COCO's object classes, as yolov3


# -- the label convention, on top of torchvision's classes ------------------------------------------
def check_targets(targets: Any, num_images: int, num_classes: int) -> list[dict[str, Tensor]]:
    """One ValueError line for targets torchvision would choke on; labels must be in [0, num_classes)."""
    if not isinstance(targets, (list, tuple)) or len(targets) != num_images:
        found = f"{len(targets)} targets" if isinstance(targets, (list, tuple)) else type(targets).__name__
        raise ValueError(f"expected one target dict per image ({num_images}), found {found}")
    for i, target in enumerate(targets):
        if not isinstance(target, Mapping) or "boxes" not in target or "labels" not in target:
            raise ValueError(f"target {i}: expected a dict with 'boxes' (N, 4) and 'labels' (N,), found "
                             f"{sorted(target) if isinstance(target, Mapping) else type(target).__name__}")
        boxes, labels = target["boxes"], target["labels"]
        if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4 or not boxes.is_floating_point():
            raise ValueError(f"target {i}: expected float 'boxes' of shape (N, 4) in xyxy pixels, found "
                             f"{tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__}")
        if not isinstance(labels, Tensor) or labels.shape != (boxes.shape[0],) or labels.is_floating_point():
            raise ValueError(f"target {i}: expected integer 'labels' of shape ({boxes.shape[0]},), found "
                             f"{tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__}"
                             f"{' floats' if isinstance(labels, Tensor) and labels.is_floating_point() else ''}")
        bad = labels[(labels < 0) | (labels >= num_classes)]
        if bad.numel():
            raise ValueError(f"target {i}: expected 0-based labels in [0, {num_classes - 1}] ({num_classes} object "
                             f"classes, no background), found {int(bad[0])}")
        flat = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        if flat.any():
            raise ValueError(f"target {i}: expected boxes with x2 > x1 and y2 > y1 (xyxy), found "
                             f"{boxes[flat][0].tolist()}")
    return list(targets)


class _ZeroBasedLabels:
    """Mixin over a torchvision detector: checks the input and shifts labels by ``label_offset``."""

    label_offset = 0
    num_classes: int

    def forward(self, images: Sequence[Tensor] | Tensor, targets: list[dict[str, Tensor]] | None = None) -> Any:
        images = check_images(images)
        if self.training and targets is None:
            raise ValueError("in train mode the detector takes targets: model(images, targets); "
                             "call model.eval() for detections")
        if targets is not None:
            targets = [{**t, "labels": t["labels"].long() + self.label_offset}
                       for t in check_targets(targets, len(images), self.num_classes)]
        out = super().forward(images, targets)  # type: ignore[misc]
        if self.training or not self.label_offset:
            return out
        return [{**d, "labels": d["labels"] - self.label_offset} for d in out]

    def postprocess_owner(self) -> nn.Module:
        """The module whose ``score_thresh``, ``nms_thresh`` and ``detections_per_img`` apply (torchvision's)."""
        return self

    @torch.no_grad()
    def detect(self, images: Sequence[Tensor] | Tensor, *, score_thresh: float | None = None,
               nms_thresh: float | None = None, detections_per_img: int | None = None) -> list[dict[str, Tensor]]:
        """One ``{boxes, scores, labels}`` dict per image (eval mode), with YOLOv3's threshold arguments:
        each given one replaces torchvision's setting for this call only. Boxes left with no area by
        torchvision's clipping (RetinaNet and FCOS keep them; anchors lie over the batch padding too) are
        dropped before the ``detections_per_img`` cap, which torchvision applies after its NMS."""
        cap = self.postprocess_owner().detections_per_img if detections_per_img is None else detections_per_img
        was_training = self.training  # type: ignore[attr-defined]
        try:
            with postprocess_settings(self, score_thresh, nms_thresh, sys.maxsize):  # type: ignore[arg-type]
                self.eval()  # type: ignore[attr-defined]
                found = self(images)  # type: ignore[operator]
        finally:
            self.train(was_training)  # type: ignore[attr-defined]
        return [_best_with_area(d, cap) for d in found]


def _best_with_area(found: dict[str, Tensor], cap: int) -> dict[str, Tensor]:
    """The first ``cap`` detections (best first, as torchvision sorts them) whose box has an area."""
    keep = (box_area(found["boxes"]) > 0).nonzero().flatten()[:cap]
    return {key: value[keep] for key, value in found.items()}


@contextlib.contextmanager
def postprocess_settings(model: nn.Module, score_thresh: float | None = None, nms_thresh: float | None = None,
                         detections_per_img: int | None = None) -> Iterator[None]:
    """Within the block, torchvision's post-processing settings of ``model`` are the given ones (None: kept)."""
    owner = model.postprocess_owner()
    given = {k: v for k, v in (("score_thresh", score_thresh), ("nms_thresh", nms_thresh),
                               ("detections_per_img", detections_per_img)) if v is not None}
    saved = {k: getattr(owner, k) for k in given}
    try:
        for key, value in given.items():
            setattr(owner, key, value)
        yield
    finally:
        for key, value in saved.items():
            setattr(owner, key, value)


class FasterRCNN(_ZeroBasedLabels, tvd.FasterRCNN):
    """torchvision's ``FasterRCNN``, 0-based labels in and out (background is slot 0 inside)."""

    label_offset = 1

    def postprocess_owner(self) -> nn.Module:
        return self.roi_heads


class RetinaNet(_ZeroBasedLabels, tvd.RetinaNet):
    """torchvision's ``RetinaNet`` with this package's input checks."""


class FCOS(_ZeroBasedLabels, tvd.FCOS):
    """torchvision's ``FCOS`` with this package's input checks."""


# -- pieces -------------------------------------------------------------------------------------------
def anchor_generator(kind: str, num_maps: int) -> AnchorGenerator:
    """One anchor size per pyramid map, i-th map the i-th of torchvision's defaults extended by doubling:
    RPN 32, 64, ... (aspect 0.5, 1, 2); RetinaNet x, x 2^(1/3), x 2^(2/3) for x = 32, 64, ...; FCOS 8, 16, ...
    (one square "anchor" whose size sets the map's regression range [4 s, 8 s], see :func:`assemble_torchvision_detector`)."""
    if kind == "fcos":
        return AnchorGenerator(tuple((8 * 2 ** i,) for i in range(num_maps)), ((1.0,),) * num_maps)
    if kind == "retinanet":
        sizes = tuple((x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))) for x in (32 * 2 ** i for i in range(num_maps)))
        return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * num_maps)
    return AnchorGenerator(tuple((32 * 2 ** i,) for i in range(num_maps)), ((0.5, 1.0, 2.0),) * num_maps)


def assemble_torchvision_detector(kind: str, backbone: BackboneWithFPN, num_classes: int,
                                  **kwargs: Any) -> nn.Module:
    """torchvision's detector ``kind`` on ``backbone``: anchors per map, and for Faster R-CNN the level-aware
    RoI pooler over the backbone's own maps. ``kwargs`` go to torchvision's class unchanged."""
    num_maps = len(backbone.levels)
    if kind == "fasterrcnn":
        names = backbone.body_names
        pool = LevelRoIAlign(names, backbone.strides[:len(names)], backbone.levels[:len(names)], 7, 2)
        kwargs.setdefault("rpn_anchor_generator", anchor_generator(kind, num_maps))
        kwargs.setdefault("box_roi_pool", pool)
        model = FasterRCNN(backbone, num_classes + 1, **kwargs)
    elif kind == "retinanet":
        kwargs.setdefault("anchor_generator", anchor_generator(kind, num_maps))
        model = RetinaNet(backbone, num_classes, **kwargs)
    else:
        kwargs.setdefault("anchor_generator", anchor_generator(kind, num_maps))
        model = FCOS(backbone, num_classes, **kwargs)
    model.num_classes = num_classes
    return model


# -- the registered builders --------------------------------------------------------------------------
def create_detector(kind: str, *, num_classes: int | None = None, in_chans: int = 3,
                    pretrained: str | os.PathLike | None = None, backbone: str | None = None,
                    backbone_kwargs: Mapping[str, Any] | None = None, trainable_layers: int | None = None,
                    frozen_bn: bool | None = None, bn_eps: float | None = None, out_channels: int | None = None,
                    fpn_min_level: int | None = None, **kwargs: Any) -> nn.Module:
    """torchvision's ``kind`` detector on ``backbone`` (default: the file's, else resnet50) through an FPN.

    Args:
        num_classes: object classes, background not counted (default: the file's, else 80). A value
            other than the file's keeps everything but the class-specific layers (fine-tuning).
        pretrained: torchvision's ``fasterrcnn_resnet50_fpn`` / ``retinanet_resnet50_fpn`` / ``fcos_resnet50_fpn``
            state_dict (or any state_dict of this layout, or a backbonekit checkpoint), or a backbone's
            weights (ImageNet ResNet, ...), whose FPN and heads then start from scratch.
        backbone_kwargs: options of the backbone builder (``output_stride``, ...).
        trainable_layers: with weights, how many of the backbone's levels train, counted from the top
            (torchvision's ``trainable_backbone_layers``; default all but the stem and the first stage:
            3 for ResNet, as torchvision). Ignored with a warning from scratch, as torchvision.
        frozen_bn: ``FrozenBatchNorm2d`` in the backbone (default: with weights only).
        bn_eps: the frozen BatchNorms' epsilon; pass 0.0 with torchvision's COCO files of
            ``fasterrcnn_resnet50_fpn`` and ``retinanet_resnet50_fpn`` (their builders set it).
        fpn_min_level: the pyramid's first level, 2 (stride 4) or 3 (stride 8); default: P2 for Faster
            R-CNN and for DetNet, P3 for RetinaNet and FCOS on the other backbones, as torchvision
            (:func:`~backbonekit.detection.models.fpn.detector_pyramid`).
        **kwargs: keyword arguments of torchvision's class (``min_size``, ``max_size``, ``box_score_thresh``,
            ``rpn_post_nms_top_n_test``, ``score_thresh``, ``detections_per_img``, ...).
    """
    if in_chans != 3:
        raise ValueError(f"{kind} takes RGB images: expected in_chans=3, found {in_chans}")
    source = read_pretrained(pretrained, kind) if pretrained is not None else None
    file_classes = source.num_classes if source is not None else 0
    recorded = dict(source.model_kwargs) if source is not None else {}
    # a detect-train file records the builder's own arguments beside torchvision's: the caller's win
    backbone = backbone or recorded.pop("backbone", None) or DEFAULT_BACKBONE
    backbone_kwargs = backbone_kwargs or recorded.pop("backbone_kwargs", None)
    out_channels = out_channels or recorded.pop("out_channels", None) or 256
    if fpn_min_level is None:
        fpn_min_level = recorded.get("fpn_min_level")
    for own in ("backbone", "backbone_kwargs", "out_channels", "fpn_min_level", "frozen_bn", "bn_eps",
                "trainable_layers"):
        recorded.pop(own, None)
    for key, value in recorded.items():
        kwargs.setdefault(key, value)
    if num_classes is None:
        num_classes = file_classes or DEFAULT_NUM_CLASSES
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1 (object classes, no background), found {num_classes!r}")
    frozen = pretrained is not None if frozen_bn is None else bool(frozen_bn)
    body = build_fpn_backbone(backbone, kind, frozen=frozen, trainable_layers=trainable_layers, bn_eps=bn_eps,
                              out_channels=out_channels, backbone_kwargs=backbone_kwargs, min_level=fpn_min_level)
    model = assemble_torchvision_detector(kind, body, num_classes, **kwargs)
    model.model_kwargs = {"backbone": backbone, **({"backbone_kwargs": dict(backbone_kwargs)} if backbone_kwargs else {}),
                          **({"out_channels": out_channels} if out_channels != 256 else {}),
                          **({"fpn_min_level": fpn_min_level} if fpn_min_level is not None else {}),
                          **{k: v for k, v in kwargs.items() if isinstance(v, (int, float, str, bool, list, tuple))}}
    if source is not None:
        _load(model, kind, source, num_classes, pretrained)
    return model


def _load(model: nn.Module, kind: str, source: PretrainedSource, num_classes: int, path: Any) -> None:
    where, file_classes = f"weights file {path}", source.num_classes
    if not file_classes:
        body = {f"backbone.body.{k}": v for k, v in source.state.items()}
        load_detector_state(model, body, where, prefix="backbone.body.")
        warnings.warn(f"{path} holds a backbone only: loaded it; the FPN and the heads start from scratch",
                      stacklevel=4)
        return
    skip = CLASS_KEYS[kind] if file_classes != num_classes else ()
    load_detector_state(model, source.state, where, skip=skip)
    if skip:
        warnings.warn(f"{path} holds a {file_classes}-class {kind}, found num_classes={num_classes}: loaded all but "
                      f"the class-specific layers ({', '.join(sorted({k.rsplit('.', 1)[0] for k in skip}))})",
                      stacklevel=4)


def _info(name: str, paper: str, params: int, gmacs: float, box_map: float) -> ModelInfo:
    return ModelInfo(name=name, paper=paper, input_size=800, params=params, gmacs=gmacs, task="detection",
                     source=f"torchvision {name}_resnet50_fpn COCO_V1 meta: {params:,} params (ResNet-50, 91 class "
                            f"slots = num_classes {90 if name == 'fasterrcnn' else 91} here, FrozenBatchNorm2d), "
                            f"_ops {gmacs} G, COCO val2017 box mAP {box_map}",
                     extra={"coco_box_map": box_map, "backbone": DEFAULT_BACKBONE})


@register_model(_info("fasterrcnn", "arXiv:1506.01497", 41_755_286, 134.38, 37.0))
def fasterrcnn(**kwargs: Any) -> nn.Module:
    """Faster R-CNN with FPN (Ren et al. arXiv 1506.01497; Lin et al. arXiv 1612.03144); see :func:`create_detector`."""
    return create_detector("fasterrcnn", **kwargs)


@register_model(_info("retinanet", "arXiv:1708.02002", 34_014_999, 151.54, 36.4))
def retinanet(**kwargs: Any) -> nn.Module:
    """RetinaNet (Lin et al., "Focal Loss for Dense Object Detection", arXiv 1708.02002); see :func:`create_detector`."""
    return create_detector("retinanet", **kwargs)


@register_model(_info("fcos", "arXiv:1904.01355", 32_269_600, 128.207, 39.2))
def fcos(**kwargs: Any) -> nn.Module:
    """FCOS (Tian et al., arXiv 1904.01355); see :func:`create_detector`."""
    return create_detector("fcos", **kwargs)

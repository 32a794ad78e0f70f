"""Backbones for torchvision's detectors: multi-scale features plus a Feature Pyramid Network.

torchvision's FasterRCNN, RetinaNet, FCOS and MaskRCNN take a backbone that returns an
``OrderedDict[str, Tensor]`` and has an ``out_channels`` int shared by every map; an FPN
gives exactly that from this package's features-only models.

Pyramids (Lin et al., arXiv 1612.03144; DetNet: Li et al., arXiv 1804.06215). Each output map has
an FPN *level* k (stride about 2^k); the levels are numbered consecutively from the first map's
stride, whatever the strides of the later maps:

================  ==========================  ==================  ====================
backbone           detector                    maps (strides)      levels
================  ==========================  ==================  ====================
ResNet, Darknet    two-stage (Faster R-CNN)    4, 8, 16, 32 + pool 2, 3, 4, 5, 6
ResNet, Darknet    one-stage (RetinaNet, FCOS) 8, 16, 32 + P6, P7  3, 4, 5, 6, 7
DetNet-59          every detector              4, 8, 16, 16, 16    2, 3, 4, 5, 6
================  ==========================  ==================  ====================

DetNet's stages 4-6 keep stride 16, so its pyramid is its five stages (P2-P6) and needs no extra
level. ``fpn_min_level=3`` starts any of them at P3 (stride 8): DetNet then gives P3-P6 (strides 8, 16,
16, 16), about the cost of a ResNet's P3-P7 in a one-stage detector's head.

The top-down path needs no change for DetNet: torchvision's ``FeaturePyramidNetwork`` resizes the coarser
map to the lateral's size with nearest-neighbour ``F.interpolate``, and between maps of equal size that is
an exact copy, so equal-stride levels are added without upsampling (tested).

:func:`build_fpn_backbone` is the backbone of ``create_model("fasterrcnn" | "retinanet" | "fcos")``: the
pyramid above, with torchvision's ``FrozenBatchNorm2d`` and trainable layers when it starts from weights.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from typing import Any, Mapping, Sequence

from torch import Tensor, nn
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d
from torchvision.ops.poolers import LevelMapper

from ...models import Backbone, FeatureInfo

EXTRA_LEVELS = ("maxpool", "p6p7", "none")  # what BackboneWithFPN adds above the backbone's last map
FPN_MIN_LEVELS = (2, 3)  # where a detector's pyramid may start: P2 (stride 4) or P3 (stride 8)


def _extra_block(extra: ExtraFPNBlock | str | None, out_channels: int) -> tuple[ExtraFPNBlock | None, int | None]:
    """The block for a name (``None`` is ``"maxpool"``, the default) and how many maps it adds (None: unknown)."""
    if isinstance(extra, ExtraFPNBlock):
        known = {LastLevelMaxPool: 1, LastLevelP6P7: 2}
        return extra, known.get(type(extra))
    if extra is None or extra == "maxpool":
        return LastLevelMaxPool(), 1
    if extra == "p6p7":  # from P5, as torchvision's retinanet_resnet50_fpn and fcos_resnet50_fpn
        return LastLevelP6P7(out_channels, out_channels), 2
    if extra == "none":
        return None, 0
    raise ValueError(f"extra_blocks must be one of {', '.join(EXTRA_LEVELS)} or an ExtraFPNBlock, found {extra!r}")


def pyramid_levels(strides: Sequence[int]) -> tuple[int, ...]:
    """FPN level of each map: log2 of the first map's stride, then one more per map (equal strides too)."""
    first = round(math.log2(strides[0]))
    return tuple(range(first, first + len(strides)))


class BackboneWithFPN(nn.Module):
    """A features-only backbone followed by ``torchvision.ops.FeaturePyramidNetwork``.

    Module names are torchvision's (``body``, ``fpn``), so torchvision detector state_dicts load.
    ``levels`` and ``strides`` describe every output map, extra ones included (``None`` for an
    ExtraFPNBlock this class does not know); ``body_names`` are the maps the backbone itself gives.
    """

    def __init__(self, body: Backbone, out_channels: int = 256, extra_blocks: ExtraFPNBlock | str | None = None) -> None:
        super().__init__()
        if not getattr(body, "features_only", False):
            raise ValueError("BackboneWithFPN expects a features_only model, found a classification model")
        block, num_extra = _extra_block(extra_blocks, out_channels)
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.out_channels, out_channels, block)
        self.out_channels = out_channels
        strides = [info.stride for info in body.feature_info]
        self.body_names = [str(i) for i in range(len(strides))]
        if num_extra is None:
            self.strides, self.levels = None, None
        else:
            self.strides = tuple(strides + [strides[-1] * 2 ** (i + 1) for i in range(num_extra)])
            self.levels = pyramid_levels(self.strides)

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        features = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))


def fpn_backbone(name: str, *, out_channels: int = 256, out_indices: Sequence[int] | None = None,
                 extra_blocks: ExtraFPNBlock | str | None = None, **kwargs: Any) -> BackboneWithFPN:
    """``create_model(name, features_only=True, ...)`` wrapped with an FPN, ready for torchvision detectors.

    Defaults: the backbone's last three maps and a max-pool level. :func:`detector_pyramid` gives the
    maps each detector in this package uses (DetNet: its five stages, no extra level).
    """
    from ...models import create_model

    body = create_model(name, features_only=True, out_indices=out_indices, **kwargs)
    return BackboneWithFPN(body, out_channels, extra_blocks)


def detector_pyramid(feature_info: Sequence[FeatureInfo], two_stage: bool,
                     min_level: int | None = None) -> tuple[tuple[int, ...], str]:
    """``(out_indices, extra_blocks)`` of the pyramid a detector takes from a backbone (table above).

    ``feature_info``: every level of the backbone (stem included). A backbone with equal-stride stages
    (DetNet) gives all its maps from stride 4 on and no extra level; others give strides 4-32 plus a
    max-pool level (two-stage) or strides 8-32 plus P6 and P7 (one-stage), as torchvision's ResNet detectors.
    ``min_level`` (2 or 3) starts the pyramid at P2 (stride 4) or P3 (stride 8) instead: 3 gives DetNet the
    P3-P6 a one-stage detector takes from a ResNet (RetinaNet leaves out P2 for its cost, Lin et al. 2017).
    """
    if min_level is not None and min_level not in FPN_MIN_LEVELS:
        raise ValueError(f"fpn_min_level must be one of {', '.join(map(str, FPN_MIN_LEVELS))} (the pyramid's "
                         f"first level: P2 at stride 4 or P3 at stride 8), found {min_level!r}")
    strides = [info.stride for info in feature_info]
    if len(set(strides)) < len(strides):
        first = 4 if min_level is None else 2 ** min_level
        return tuple(info.index for info in feature_info if info.stride >= first), "none"
    first = (4 if two_stage else 8) if min_level is None else 2 ** min_level
    wanted = tuple(s for s in (4, 8, 16, 32) if s >= first)
    by_stride = {info.stride: info.index for info in feature_info}
    missing = [s for s in wanted if s not in by_stride]
    if missing:
        raise ValueError(f"an FPN detector needs backbone maps at strides {wanted}, found strides {strides}")
    return tuple(by_stride[s] for s in wanted), "maxpool" if two_stage else "p6p7"


class LevelRoIAlign(MultiScaleRoIAlign):
    """``MultiScaleRoIAlign`` told each map's stride and FPN level instead of inferring them.

    torchvision infers the scales from the map sizes and the level range from the first and last
    map's scale, which assumes the stride doubles from map to map: on DetNet's P2-P6 (strides 4, 8,
    16, 16, 16) it finds levels 2-4, so P5 and P6 never pool. Here a RoI of size sqrt(wh) goes to
    level k = floor(4 + log2(sqrt(wh) / 224)) clamped to the maps' levels (FPN's Eqn. 1, torchvision's
    ``LevelMapper``) and is pooled from the map of that level with ``torchvision.ops.roi_align``.
    On a stride-doubling pyramid this is exactly torchvision's pooler.
    """

    def __init__(self, featmap_names: Sequence[str], strides: Sequence[int], levels: Sequence[int],
                 output_size: int | Sequence[int] = 7, sampling_ratio: int = 2, *, canonical_scale: int = 224,
                 canonical_level: int = 4) -> None:
        super().__init__(list(featmap_names), output_size, sampling_ratio, canonical_scale=canonical_scale,
                         canonical_level=canonical_level)
        levels = tuple(int(k) for k in levels)
        if not len(featmap_names) == len(strides) == len(levels) or levels != tuple(range(levels[0], levels[-1] + 1)):
            raise ValueError(f"expected one stride and one consecutive level per map ({len(featmap_names)} maps), "
                             f"found strides {tuple(strides)} and levels {levels}")
        self.strides, self.levels = tuple(strides), levels
        # MultiScaleRoIAlign.forward infers these only while they are None
        self.scales = [1.0 / s for s in strides]
        self.map_levels = LevelMapper(levels[0], levels[-1], canonical_scale, canonical_level)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(featmap_names={self.featmap_names}, strides={self.strides}, "
                f"levels={self.levels}, output_size={self.output_size}, sampling_ratio={self.sampling_ratio})")


# -- the backbone a torchvision detector takes: frozen BatchNorm and trainable layers as torchvision's builders
def freeze_batchnorm(module: nn.Module, eps: float | None = None) -> nn.Module:
    """Replace every ``BatchNorm2d`` in ``module`` by torchvision's ``FrozenBatchNorm2d`` with its statistics.

    ``eps``: the frozen layers' epsilon (default: each BatchNorm's own; torchvision's COCO_V1 Faster R-CNN
    and RetinaNet weights were trained with 0.0, which its builders set with ``overwrite_eps``).
    """
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, child.eps if eps is None else eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen.to(child.weight.device))
        else:
            freeze_batchnorm(child, eps)
    return module


def build_fpn_backbone(name: str, kind: str, *, frozen: bool, trainable_layers: int | None, bn_eps: float | None,
                       out_channels: int = 256, backbone_kwargs: Mapping[str, Any] | None = None,
                       min_level: int | None = None) -> BackboneWithFPN:
    """The backbone named ``name`` with the FPN ``kind`` takes (from P``min_level``, default: the table above);
    frozen BatchNorm and trainable layers as torchvision."""
    from ... import create_model
    from ...models import model_info

    if model_info(name).task != "classification":  # KeyError with close matches for unknown names
        raise ValueError(f"backbone must be a registered backbone (list_models()), found the detector {name!r}")
    body = create_model(name, num_classes=0, **dict(backbone_kwargs or {}))
    num_levels = len(body.feature_info)
    if frozen:
        trainable = num_levels - 2 if trainable_layers is None else trainable_layers
        if isinstance(trainable, bool) or not isinstance(trainable, int) or not 0 <= trainable <= num_levels:
            raise ValueError(f"trainable_layers must be an integer in [0, {num_levels}] for {name} "
                             f"(stem + {num_levels - 1} stages), found {trainable!r}")
        freeze_batchnorm(body, bn_eps)
        body.frozen_stages = num_levels - 1 - trainable  # stem and the first stages get no gradient
        body._freeze()
    elif trainable_layers is not None:
        warnings.warn(f"trainable_layers={trainable_layers} has no effect on a backbone trained from scratch "
                      f"(no pretrained=): every layer trains, as torchvision does", stacklevel=4)
    out_indices, extra = detector_pyramid(body.feature_info, two_stage=kind == "fasterrcnn", min_level=min_level)
    return BackboneWithFPN(body.as_features(out_indices), out_channels, extra)

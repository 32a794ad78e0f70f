"""Backbones for torchvision's detectors: multi-scale features plus a Feature Pyramid Network.

torchvision's FasterRCNN, RetinaNet, FCOS and MaskRCNN take a backbone that returns an
``OrderedDict[str, Tensor]`` and has an ``out_channels`` int shared by every map; an FPN
gives exactly that from this package's features-only models.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

from torch import Tensor, nn
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, FeaturePyramidNetwork, LastLevelMaxPool

from ..models import Backbone


class BackboneWithFPN(nn.Module):
    """A features-only backbone followed by ``torchvision.ops.FeaturePyramidNetwork``."""

    def __init__(self, body: Backbone, out_channels: int = 256, extra_blocks: ExtraFPNBlock | None = None) -> None:
        super().__init__()
        if not getattr(body, "features_only", False):
            raise ValueError("BackboneWithFPN expects a features_only model, found a classification model")
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.out_channels, out_channels,
                                         extra_blocks if extra_blocks is not None else LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        features = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))


def fpn_backbone(name: str, *, out_channels: int = 256, out_indices: Sequence[int] | None = None,
                 extra_blocks: ExtraFPNBlock | None = None, **kwargs: Any) -> BackboneWithFPN:
    """``create_model(name, features_only=True, ...)`` wrapped with an FPN, ready for torchvision detectors."""
    from .. import create_model

    body = create_model(name, features_only=True, out_indices=out_indices, **kwargs)
    return BackboneWithFPN(body, out_channels, extra_blocks)

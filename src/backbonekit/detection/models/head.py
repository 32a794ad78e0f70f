"""YOLOv3's head: per output level a 3x3 conv to ``2n`` then a 1x1 conv with bias to ``A * (5 + C)``.

In ``cfg/yolov3.cfg`` these are the two convs before each ``[yolo]`` layer (layers 80-81, 92-93,
104-105): the 3x3 has BatchNorm and LeakyReLU(0.1), the 1x1 ``filters=255`` has neither
(``activation=linear``) and so has its own bias. Output channels are anchor-major: channel
``a * (5 + C) + k`` is item ``k`` (tx, ty, tw, th, to, class logits) of anchor ``a``
(see :mod:`backbonekit.detection.task.coder`). Module names follow mmdetection's ``YOLOV3Head``.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from ...models.darknet import ConvNormAct


class YOLOv3Head(nn.Module):
    """``convs_bridge[i]`` (3x3, BN, leaky) then ``convs_pred[i]`` (1x1, bias) for each level."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, num_anchors: Sequence[int] = (3, 3, 3)) -> None:
        super().__init__()
        if len(num_anchors) != len(in_channels):
            raise ValueError(f"expected anchors for each of the {len(in_channels)} levels, found {len(num_anchors)}")
        self.num_classes = num_classes
        self.num_anchors = tuple(num_anchors)
        self.convs_bridge = nn.ModuleList(ConvNormAct(c, 2 * c, 3) for c in in_channels)
        self.convs_pred = nn.ModuleList(nn.Conv2d(2 * c, a * (5 + num_classes), 1)
                                        for c, a in zip(in_channels, num_anchors))

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        return [pred(bridge(x)) for x, bridge, pred in zip(features, self.convs_bridge, self.convs_pred)]

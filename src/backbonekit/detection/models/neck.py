"""YOLOv3's neck: the top-down path that joins Darknet-53's three deepest maps (paper section 2.3).

Darknet's ``cfg/yolov3.cfg`` after the backbone, per level from the deepest (stride 32) to stride 8:
five convs alternating 1x1 to ``n`` and 3x3 to ``2n`` (n = 512, 256, 128) form a *detection block*;
its output feeds that level's head and, through a 1x1 conv to ``n/2`` and nearest 2x upsampling
(``[route] layers=-4``, ``[upsample] stride=2``), is concatenated in front of the next shallower
backbone map (``[route] layers=-1, 61`` then ``-1, 36``). Every conv is bias-free with BatchNorm
and LeakyReLU(0.1). Module names follow mmdetection's ``YOLOV3Neck`` (``detect1..3``, ``conv1..2``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ...darknet_yolov3 import YOLOV3_CFG_NECK_CHANNELS
from ...models.darknet import ConvNormAct

YOLOV3_NECK_CHANNELS = YOLOV3_CFG_NECK_CHANNELS  # n per level, deepest first: yolov3.cfg's, one definition


class DetectionBlock(nn.Module):
    """Five convs: 1x1 n, 3x3 2n, 1x1 n, 3x3 2n, 1x1 n (cfg layers 75-79, 87-91, 99-103)."""

    def __init__(self, in_ch: int, n: int) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(in_ch, n, 1)
        self.conv2 = ConvNormAct(n, 2 * n, 3)
        self.conv3 = ConvNormAct(2 * n, n, 1)
        self.conv4 = ConvNormAct(n, 2 * n, 3)
        self.conv5 = ConvNormAct(2 * n, n, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv5(self.conv4(self.conv3(self.conv2(self.conv1(x)))))


class YOLOv3Neck(nn.Module):
    """Top-down path over backbone maps given shallow to deep (C3, C4, C5); returns deep to shallow.

    Args:
        in_channels: channels of the backbone maps, shallow to deep (Darknet-53: 256, 512, 1024).
        channels: ``n`` of each detection block, deepest first (Darknet: 512, 256, 128).
    """

    def __init__(self, in_channels: Sequence[int], channels: Sequence[int] = YOLOV3_NECK_CHANNELS) -> None:
        super().__init__()
        if len(in_channels) != len(channels) or len(channels) < 1:
            raise ValueError(f"expected one neck width per backbone map, found {len(channels)} widths for "
                             f"{len(in_channels)} maps")
        deep_first = list(reversed(in_channels))
        self.channels = tuple(channels)
        self.detect1 = DetectionBlock(deep_first[0], channels[0])
        for i in range(1, len(channels)):
            # conv{i}: the lateral 1x1 to n/2 before upsampling; detect{i+1} sees [upsampled, backbone map]
            self.add_module(f"conv{i}", ConvNormAct(channels[i - 1], channels[i - 1] // 2, 1))
            self.add_module(f"detect{i + 1}", DetectionBlock(channels[i - 1] // 2 + deep_first[i], channels[i]))

    @property
    def out_channels(self) -> tuple[int, ...]:
        return self.channels

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        maps = list(reversed(features))
        x = self.detect1(maps[0])
        outputs = [x]
        for i in range(1, len(self.channels)):
            up = F.interpolate(getattr(self, f"conv{i}")(x), scale_factor=2.0, mode="nearest")
            x = getattr(self, f"detect{i + 1}")(torch.cat((up, maps[i]), 1))  # Darknet's route order
            outputs.append(x)
        return outputs

"""Darknet-53, the backbone of YOLOv3 (Redmon & Farhadi, "YOLOv3: An Incremental Improvement", arXiv 1804.02767).

A 3x3 stem conv to 32 channels, then five stages; each stage is a stride-2 3x3 conv that doubles
the channels, followed by residual blocks (1x1 conv to half the channels, 3x3 conv back, add).
Every conv is bias-free with BatchNorm and LeakyReLU; there is no activation after the add
(Darknet's ``[shortcut] activation=linear``) and no max-pooling anywhere.

Module names follow timm's ``darknet53`` except that the stem conv is ``stem`` rather than
``stem.conv1``, which lets a loader tell the two layouts apart (see ``backbonekit.weights``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ._base import Backbone, FeatureInfo, check_num_classes, dilation_schedule, init_weights
from ._layers import ActFactory, ActSpec, NormFactory, NormSpec, resolve_act, resolve_norm
from ._registry import ModelInfo, register_model

DARKNET_SLOPE = 0.1  # Darknet's leaky_activate (src/activations.h); timm's darknet53 uses 0.01


@dataclass(frozen=True)
class DarknetConfig:
    stem_channels: int
    depths: tuple[int, ...]
    channels: tuple[int, ...]


DARKNET_CONFIGS = {
    "darknet53": DarknetConfig(stem_channels=32, depths=(1, 2, 8, 8, 4), channels=(64, 128, 256, 512, 1024)),
}


class ConvNormAct(nn.Sequential):
    """Bias-free conv, norm (BatchNorm by default), activation (LeakyReLU): Darknet's
    ``[convolutional] batch_normalize=1``."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, dilation: int = 1,
                 norm: NormFactory = nn.BatchNorm2d, act: ActFactory | None = None) -> None:
        padding = dilation * (kernel_size - 1) // 2
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, dilation=dilation, bias=False)
        self.bn = norm(out_ch)
        self.act = act() if act is not None else nn.LeakyReLU(DARKNET_SLOPE, inplace=True)


class DarkBlock(nn.Module):
    def __init__(self, channels: int, dilation: int, norm: NormFactory, act: ActFactory) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(channels, channels // 2, 1, norm=norm, act=act)
        self.conv2 = ConvNormAct(channels // 2, channels, 3, dilation=dilation, norm=norm, act=act)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.conv1(x))


class DarkStage(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, depth: int, stride: int, first_dilation: int, dilation: int,
                 norm: NormFactory, act: ActFactory) -> None:
        super().__init__()
        self.conv_down = ConvNormAct(in_ch, out_ch, 3, stride, first_dilation, norm, act)
        self.blocks = nn.Sequential(*(DarkBlock(out_ch, dilation, norm, act) for _ in range(depth)))

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.conv_down(x))


class ClassifierHead(nn.Module):
    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.global_pool(x).flatten(1)  # flatten, not squeeze: batch size 1 keeps its batch dim
        return x if pre_logits else self.fc(x)


class Darknet(Backbone):
    def __init__(self, cfg: DarknetConfig, num_classes: int = 1000, in_chans: int = 3, output_stride: int = 32,
                 act_slope: float = DARKNET_SLOPE, frozen_stages: int = -1, norm_eval: bool = False,
                 zero_init_residual: bool = False, norm_layer: NormSpec = None, act_layer: ActSpec = None) -> None:
        super().__init__()
        self.in_chans, self.act_slope = in_chans, act_slope
        norm = resolve_norm(norm_layer)
        act = resolve_act(act_layer, lambda: nn.LeakyReLU(act_slope, inplace=True))
        self.stem = ConvNormAct(in_chans, cfg.stem_channels, 3, norm=norm, act=act)
        plan = dilation_schedule([2] * len(cfg.depths), output_stride, base_stride=1)
        self.feature_info = [FeatureInfo(0, "stem", cfg.stem_channels, 1)]
        stages, in_ch, reduction = [], cfg.stem_channels, 1
        for i, (depth, out_ch, (stride, first_dilation, dilation)) in enumerate(zip(cfg.depths, cfg.channels, plan)):
            stages.append(DarkStage(in_ch, out_ch, depth, stride, first_dilation, dilation, norm, act))
            in_ch, reduction = out_ch, reduction * stride
            self.feature_info.append(FeatureInfo(i + 1, f"stages.{i}", out_ch, reduction))
        self.stages = nn.Sequential(*stages)
        self.num_features = in_ch
        self.head = ClassifierHead(in_ch, num_classes)
        residual_bns = [b.conv2.bn for s in stages for b in s.blocks] if zero_init_residual else None
        init_weights(self, residual_bns)
        self._finish_init(frozen_stages, norm_eval)

    def stem_modules(self) -> list[nn.Module]:
        return [self.stem]

    def stage_modules(self) -> list[nn.Module]:
        return list(self.stages)

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.stem(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.head(x, pre_logits)

    def reset_classifier(self, num_classes: int) -> None:
        check_num_classes(num_classes)
        self.head = ClassifierHead(self.num_features, num_classes)

    def _drop_stages_after(self, last_index: int) -> None:
        self.stages = self.stages[:last_index]

    def _drop_head(self) -> None:
        del self.head


@register_model(ModelInfo(
    name="darknet53", paper="arXiv:1804.02767", input_size=256, params=41_609_928, gmacs=9.285,
    source="params: timm results-imagenet.csv (41.61M); MACs: seed 002's 24,515,805,184 conv MACs at 416x416 "
           "(thop, torchsummaryX) scaled to 256x256, plus the 1000-class fc",
    extra={"backbone_params": 40_584_928, "backbone_macs_416": 24_515_805_184},
))
def darknet53(**kwargs) -> Darknet:
    """Darknet-53 (YOLOv3's backbone). ``act_slope`` (the LeakyReLU slope, unless ``act_layer`` replaces the
    LeakyReLU) defaults to Darknet's 0.1."""
    return Darknet(DARKNET_CONFIGS["darknet53"], **kwargs)

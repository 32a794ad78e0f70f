"""ResNet (He et al., "Deep Residual Learning for Image Recognition", arXiv 1512.03385), torchvision layout.

Module names (``conv1, bn1, layer1..layerN, downsample.0/.1, fc``) are torchvision's, so a
torchvision ResNet state_dict loads with ``strict=True``. Like torchvision this is ResNet v1.5:
the bottleneck puts the downsampling stride on its 3x3 conv, not on the first 1x1 conv as the
paper does (more accurate, and 4.09 instead of 3.86 GMACs for ResNet-50 at 224x224).

The builder takes a table of stage rows, so DetNet (``detnet.py``) is this class plus two rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ._base import Backbone, FeatureInfo, check_num_classes, dilation_schedule, init_weights
from ._layers import ActFactory, ActSpec, NormFactory, NormSpec, resolve_act, resolve_norm
from ._registry import ModelInfo, register_model


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride, padding=dilation, dilation=dilation, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)


def _relu() -> nn.Module:
    return nn.ReLU(inplace=True)


class BasicBlock(nn.Module):
    """Two 3x3 convs. In the first block of a dilated stage the first conv keeps the previous dilation
    and the second takes the new one (timm's ``first_dilation``/``dilation``)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 first_dilation: int = 1, dilation: int = 1, norm: NormFactory = nn.BatchNorm2d,
                 act: ActFactory = _relu) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride, first_dilation)
        self.bn1 = norm(planes)
        self.relu = act()
        self.conv2 = conv3x3(planes, planes, dilation=dilation)
        self.bn2 = norm(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)

    def last_bn(self) -> nn.Module:
        return self.bn2


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries stride and dilation), 1x1 expand; ReLU after the residual add only.

    The 3x3 conv is the only one with a receptive field: in the first block of a dilated stage it
    keeps the previous dilation (``first_dilation``, as torchvision and timm do); ``dilation`` is unused.
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 first_dilation: int = 1, dilation: int = 1, norm: NormFactory = nn.BatchNorm2d,
                 act: ActFactory = _relu) -> None:
        super().__init__()
        del dilation
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = norm(planes)
        self.conv2 = conv3x3(planes, planes, stride, first_dilation)
        self.bn2 = norm(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = norm(planes * self.expansion)
        self.relu = act()
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)

    def last_bn(self) -> nn.Module:
        return self.bn3


@dataclass(frozen=True)
class Stage:
    """One row of a ResNet-style stage table."""

    planes: int  # width of the block; the stage outputs planes * block.expansion channels
    depth: int  # number of blocks
    stride: int = 2  # stride of the first block
    dilation: int = 1  # intrinsic dilation of the stage's 3x3 convs (DetNet's stages 5 and 6 use 2)
    projection: bool = False  # give the first block a 1x1 projection shortcut even when shapes match


def resnet_stages(depths: tuple[int, int, int, int]) -> tuple[Stage, ...]:
    return tuple(Stage(planes, depth, 1 if i == 0 else 2) for i, (planes, depth) in enumerate(zip((64, 128, 256, 512), depths)))


class ResNet(Backbone):
    def __init__(self, block: type[BasicBlock] | type[Bottleneck], stages: tuple[Stage, ...], num_classes: int = 1000,
                 in_chans: int = 3, output_stride: int = 32, frozen_stages: int = -1, norm_eval: bool = False,
                 zero_init_residual: bool = False, norm_layer: NormSpec = None, act_layer: ActSpec = None) -> None:
        super().__init__()
        self.in_chans, self.num_stages = in_chans, len(stages)
        norm, act = resolve_norm(norm_layer), resolve_act(act_layer, _relu)
        self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm(64)
        self.relu = act()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.feature_info = [FeatureInfo(0, "relu", 64, 2)]
        plan = dilation_schedule([spec.stride for spec in stages], output_stride, base_stride=4)  # after maxpool
        inplanes, reduction = 64, 4
        for i, (spec, (stride, first_dilation, dilation)) in enumerate(zip(stages, plan)):
            reduction *= stride
            layer, inplanes = self._make_layer(block, inplanes, spec, stride, first_dilation, dilation, norm, act)
            setattr(self, f"layer{i + 1}", layer)
            self.feature_info.append(FeatureInfo(i + 1, f"layer{i + 1}", inplanes, reduction))
        self.num_features = inplanes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes) if num_classes > 0 else nn.Identity()
        residual_bns = [b.last_bn() for layer in self.stage_modules() for b in layer] if zero_init_residual else None
        init_weights(self, residual_bns)
        self._finish_init(frozen_stages, norm_eval)

    @staticmethod
    def _make_layer(block: type[BasicBlock] | type[Bottleneck], inplanes: int, spec: Stage, stride: int,
                    first_dilation: int, dilation: int, norm: NormFactory,
                    act: ActFactory) -> tuple[nn.Sequential, int]:
        outplanes = spec.planes * block.expansion
        downsample = None
        if stride != 1 or inplanes != outplanes or spec.projection:
            downsample = nn.Sequential(conv1x1(inplanes, outplanes, stride), norm(outplanes))
        first_dilation, dilation = first_dilation * spec.dilation, dilation * spec.dilation
        if spec.dilation > 1:  # an intrinsically dilated stage (DetNet) dilates its first block too
            first_dilation = dilation
        blocks = [block(inplanes, spec.planes, stride, downsample, first_dilation, dilation, norm, act)]
        blocks += [block(outplanes, spec.planes, 1, None, dilation, dilation, norm, act) for _ in range(1, spec.depth)]
        return nn.Sequential(*blocks), outplanes

    def stem_modules(self) -> list[nn.Module]:
        return [self.conv1, self.bn1]

    def stage_modules(self) -> list[nn.Module]:
        return [getattr(self, f"layer{i}") for i in range(1, self.num_stages + 1)]

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.relu(self.bn1(self.conv1(x)))

    def enter_stage(self, index: int, x: Tensor) -> Tensor:
        return self.maxpool(x) if index == 0 else x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.avgpool(x).flatten(1)
        return x if pre_logits else self.fc(x)

    def reset_classifier(self, num_classes: int) -> None:
        check_num_classes(num_classes)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _drop_stages_after(self, last_index: int) -> None:
        for i in range(last_index + 1, self.num_stages + 1):
            delattr(self, f"layer{i}")
        self.num_stages = last_index

    def _drop_head(self) -> None:
        del self.fc


def _resnet_info(name: str, params: int, gmacs: float) -> ModelInfo:
    return ModelInfo(name=name, paper="arXiv:1512.03385", input_size=224, params=params, gmacs=gmacs,
                     source=f"torchvision {name.capitalize()}_Weights meta (num_params, _ops in G multiply-adds)")


@register_model(_resnet_info("resnet18", 11_689_512, 1.814))
def resnet18(**kwargs) -> ResNet:
    return ResNet(BasicBlock, resnet_stages((2, 2, 2, 2)), **kwargs)


@register_model(_resnet_info("resnet34", 21_797_672, 3.664))
def resnet34(**kwargs) -> ResNet:
    return ResNet(BasicBlock, resnet_stages((3, 4, 6, 3)), **kwargs)


@register_model(_resnet_info("resnet50", 25_557_032, 4.089))
def resnet50(**kwargs) -> ResNet:
    return ResNet(Bottleneck, resnet_stages((3, 4, 6, 3)), **kwargs)


@register_model(_resnet_info("resnet101", 44_549_160, 7.801))
def resnet101(**kwargs) -> ResNet:
    return ResNet(Bottleneck, resnet_stages((3, 4, 23, 3)), **kwargs)


@register_model(_resnet_info("resnet152", 60_192_808, 11.514))
def resnet152(**kwargs) -> ResNet:
    return ResNet(Bottleneck, resnet_stages((3, 8, 36, 3)), **kwargs)

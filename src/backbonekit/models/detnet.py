"""DetNet-59 (Zeming Li et al., "DetNet: A Backbone network for Object Detection", arXiv 1804.06215).

ResNet-50's stages 1-4 (stem, ``layer1``-``layer3``: output stride 16), then two extra stages,
the paper's stages 5 and 6 (``layer4``, ``layer5`` here), of three dilated bottlenecks each
that keep stride 16: 1x1 conv to 256, 3x3 conv with dilation 2, 1x1 conv to 1024, BatchNorm
after each conv, ReLU after the residual add. The first block of each has a 1x1 projection
shortcut ("bottleneck B"), the other two an identity shortcut ("bottleneck A").

Seed 003's ``DetBottleneck`` has no skip connection at all; this is the residual form.
The stride sits on the 3x3 conv (torchvision's ResNet v1.5), so this counts 5.00 GMACs at
224x224 where the paper, with the stride on the first 1x1 conv, reports 4.8 GFLOPs.
"""

from __future__ import annotations

from ._registry import ModelInfo, register_model
from .resnet import Bottleneck, ResNet, Stage, resnet_stages

DETNET59_STAGES = resnet_stages((3, 4, 6, 3))[:3] + (
    Stage(planes=256, depth=3, stride=1, dilation=2, projection=True),  # stage 5
    Stage(planes=256, depth=3, stride=1, dilation=2, projection=True),  # stage 6
)


@register_model(ModelInfo(
    name="detnet59", paper="arXiv:1804.06215", input_size=224, params=18_372_648, gmacs=5.00,
    source="paper: 4.8 GFLOPs (multiply-adds, stride on the 1x1 conv); 18,372,648 params and 5.00 GMACs "
           "computed from the architecture with v1.5 stride placement (no published count)",
))
def detnet59(output_stride: int = 16, **kwargs) -> ResNet:
    """DetNet-59: output stride 16 by design; ``output_stride=8`` dilates ``layer3`` as well."""
    if output_stride not in (8, 16):
        raise ValueError(f"detnet59 has output stride 16 by design: expected output_stride 16 or 8, found {output_stride}")
    return ResNet(Bottleneck, DETNET59_STAGES, output_stride=output_stride, **kwargs)

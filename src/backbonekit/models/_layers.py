"""The norm and activation layers a builder may be given (``norm_layer``, ``act_layer``).

Detectors want backbones with other normalisations than trainable BatchNorm: torchvision's
detectors use ``FrozenBatchNorm2d`` (BatchNorm's eval-mode affine transform with every tensor a
buffer), small-batch training uses GroupNorm. A norm keeps the module name of the BatchNorm it
replaces (``bn1``, ``downsample.1``, ``stem.bn``), so BatchNorm and FrozenBatchNorm2d models share
their state_dict keys except BatchNorm's ``num_batches_tracked`` counters, which the weight loader
fills or drops (``backbonekit.weights``).
"""

from __future__ import annotations

import math
from typing import Callable, Union

from torch import nn

NormFactory = Callable[[int], nn.Module]  # channels -> norm module
ActFactory = Callable[[], nn.Module]
NormSpec = Union[str, NormFactory, None]
ActSpec = Union[str, ActFactory, None]

GROUPNORM_GROUPS = 32  # Wu & He, "Group Normalization" (arXiv 1803.08494): 32 groups by default


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups (fewer when ``channels`` is not a multiple of 32)."""
    return nn.GroupNorm(math.gcd(GROUPNORM_GROUPS, channels), channels)


def frozen_batchnorm(channels: int) -> nn.Module:
    """torchvision's ``FrozenBatchNorm2d`` (what its detectors put in their backbones)."""
    from torchvision.ops import FrozenBatchNorm2d

    return FrozenBatchNorm2d(channels)


NORM_LAYERS: dict[str, NormFactory] = {
    "batchnorm": nn.BatchNorm2d,
    "frozen_batchnorm": frozen_batchnorm,
    "groupnorm": group_norm,
}

ACT_LAYERS: dict[str, ActFactory] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(inplace=True),  # PyTorch's default slope 0.01
    "silu": lambda: nn.SiLU(inplace=True),
    "mish": lambda: nn.Mish(inplace=True),
    "gelu": nn.GELU,
    "hardswish": lambda: nn.Hardswish(inplace=True),
}


def resolve_norm(norm_layer: NormSpec) -> NormFactory:
    """A factory ``channels -> module`` from a name in :data:`NORM_LAYERS`, a callable, or ``None`` (BatchNorm2d)."""
    if norm_layer is None:
        return nn.BatchNorm2d
    if isinstance(norm_layer, str):
        if norm_layer not in NORM_LAYERS:
            raise ValueError(f"norm_layer must be one of {', '.join(NORM_LAYERS)} or a callable taking the number "
                             f"of channels, found {norm_layer!r}")
        return NORM_LAYERS[norm_layer]
    if not callable(norm_layer):
        raise ValueError(f"norm_layer must be a name ({', '.join(NORM_LAYERS)}) or a callable taking the number "
                         f"of channels, found {type(norm_layer).__name__}")
    return lambda channels: _checked(norm_layer(channels), "norm_layer")


def resolve_act(act_layer: ActSpec, default: ActFactory) -> ActFactory:
    """A factory ``() -> module`` from a name in :data:`ACT_LAYERS`, a callable, or ``None`` (``default``)."""
    if act_layer is None:
        return default
    if isinstance(act_layer, str):
        if act_layer not in ACT_LAYERS:
            raise ValueError(f"act_layer must be one of {', '.join(ACT_LAYERS)} or a callable returning a module, "
                             f"found {act_layer!r}")
        return ACT_LAYERS[act_layer]
    if not callable(act_layer):
        raise ValueError(f"act_layer must be a name ({', '.join(ACT_LAYERS)}) or a callable returning a module, "
                         f"found {type(act_layer).__name__}")
    return lambda: _checked(act_layer(), "act_layer")


def _checked(made: object, what: str) -> nn.Module:
    if not isinstance(made, nn.Module):
        raise ValueError(f"{what} must return a torch.nn.Module, found {type(made).__name__}")
    return made

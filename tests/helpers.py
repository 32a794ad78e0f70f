"""Helpers shared by the test modules (importable: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import torch
from torch import nn


def with_random_bn_statistics(model: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine terms, so folding has something to fold."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return model.eval()


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """Draw every parameter and every float buffer of ``model`` at random (seeded); return it in eval mode.

    Norm scales in [0.5, 1.5], running variances in [0.5, 2], shifts, means and biases around 0, conv and
    linear weights N(0, 1/fan_in) (small enough that 50 residual blocks stay finite in float32). No tensor
    is left at a value that hides a difference: not timm's zero-initialised last BatchNorm of each residual
    branch, not the identity statistics (mean 0, var 1) a fresh BatchNorm starts with.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            tensors = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
            for name, t in tensors:
                if t.is_floating_point():
                    t.copy_(_draw(name, t, g))
    return model.eval()


def _draw(name: str, t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    if name == "running_var":
        return torch.rand(t.shape, generator=g) * 1.5 + 0.5
    if name in ("running_mean", "bias"):
        return torch.randn(t.shape, generator=g) * 0.2
    if t.dim() <= 1:  # a norm's scale
        return torch.rand(t.shape, generator=g) + 0.5
    return torch.randn(t.shape, generator=g) / t[0].numel() ** 0.5



FLOAT32_EPS = torch.finfo(torch.float32).eps
ROUNDING_PER_LAYER = 4 * FLOAT32_EPS


def weight_layers(model: nn.Module) -> int:
    """How many convolutions and linear layers an input passes through at most (their count)."""
    return max(1, sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules()))


def assert_same_network_output(actual: torch.Tensor, expected: torch.Tensor, model: nn.Module) -> None:
    """Two float32 computations of one network agree up to the rounding its depth accumulates.

    Another kernel family (AVX2 against AVX-512), another BatchNorm class or a folded layer rounds
    differently at every layer; the differences add up along the layers an input goes through and are
    proportional to the size of the activations, so the tolerance is measured against the output's
    magnitude (as torchvision's and timm's suites compare outputs), not element by element: a few float32
    epsilons per weight layer, times the largest output. A real difference (another activation slope,
    BatchNorm epsilon or stride) is orders of magnitude above it.
    """
    layers = weight_layers(model)
    scale = max(expected.abs().max().item(), 1e-6)
    tolerance = ROUNDING_PER_LAYER * layers
    torch.testing.assert_close(actual, expected, rtol=tolerance, atol=tolerance * scale)

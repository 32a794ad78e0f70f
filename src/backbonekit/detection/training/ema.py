"""The exponential moving average of the weights that ``--ema`` trains beside the model (and evaluates)."""

from __future__ import annotations

import math

import torch
from torch import nn

EMA_DECAY, EMA_RAMP_STEPS = 0.999, 100


class EmaRamp:
    """EMA of weights with a warm-up of the decay (``decay * (1 - exp(-n / ramp))``), as YOLOv5 does,
    so the first steps' random weights fade quickly. A class, so it pickles."""

    def __init__(self, decay: float = EMA_DECAY, ramp: float = EMA_RAMP_STEPS) -> None:
        self.decay, self.ramp = decay, ramp

    def __call__(self, averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        d = self.decay * (1 - math.exp(-float(num_averaged) / self.ramp))
        return averaged * d + current * (1 - d)


def ema_model(model: nn.Module) -> torch.optim.swa_utils.AveragedModel:
    """The EMA of ``model`` (pass the unwrapped model, not its DDP wrapper) that training updates each step."""
    # use_buffers: BatchNorm statistics are averaged too, so the EMA model is evaluated as it is
    return torch.optim.swa_utils.AveragedModel(model, avg_fn=EmaRamp(), use_buffers=True)

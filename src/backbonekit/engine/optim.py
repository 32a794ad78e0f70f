"""What both trainers step with: the optimizer, the per-step learning-rate schedule, the NaN check and one
optimizer step (zero, backward, clip, step)."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor, nn

from ..optimize import fused_optimizer
from . import dist


class NonFiniteLoss(ValueError):
    """The loss became NaN or infinite."""


def build_optimizer(name: str, model: nn.Module, lr: float, weight_decay: float, momentum: float = 0.9,
                    nesterov: bool = True) -> torch.optim.Optimizer:
    """sgd (momentum, nesterov), adamw or adam, fused where the device allows (``benchmarks/bench_train.py``).

    BatchNorm and bias parameters get no weight decay.
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "sgd":
        return fused_optimizer(torch.optim.SGD, groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)
    if name == "adamw":
        return fused_optimizer(torch.optim.AdamW, groups, lr=lr)
    if name == "adam":
        return fused_optimizer(torch.optim.Adam, groups, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}: expected sgd, adamw or adam")


class WarmupCosine:
    """Linear warm-up over ``warmup`` steps, then cosine decay to zero at ``total`` steps (a LambdaLR factor).

    The warm-up takes at most half the steps, so a run shorter than two warm-ups still decays
    (:meth:`resize` keeps that when a time budget shortens the run). A class, not a closure, so LambdaLR's
    state_dict holds plain values.
    """

    def __init__(self, warmup: int, total: int) -> None:
        self.requested_warmup = warmup
        self.resize(total)

    def resize(self, total: int) -> None:
        """End the decay at ``total`` steps instead (the warm-up asked for, at most half of them)."""
        self.total = total
        self.warmup = min(self.requested_warmup, total // 2)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, lr: float, epochs: int, steps_per_epoch: int,
                    warmup_epochs: float = 1.0) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedules: ``onecycle`` (torchvision's OneCycleLR) or ``cosine`` with linear warm-up."""
    total = epochs * steps_per_epoch
    if name == "onecycle":
        if total < 4:  # too short for two phases: OneCycleLR divides by the length of each
            return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
        # the warm-up phase needs at least two steps; cycle_momentum=False keeps the given --momentum / betas
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total,
                                                   pct_start=max(0.25, 2 / total), cycle_momentum=False)
    if name == "cosine":
        warmup = int(round(warmup_epochs * steps_per_epoch))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(max(warmup, 0), total))
    raise ValueError(f"unknown schedule {name!r}: expected onecycle or cosine")


def check_finite(loss_value: float, epoch: int, step: int) -> None:
    """Raise :class:`NonFiniteLoss` when the loss is NaN/inf on any rank (every rank raises, naming the
    bad ranks), so no rank steps with a broken loss or waits for one that stopped."""
    bad_ranks = dist.nonfinite_ranks(loss_value)
    if bad_ranks:
        value = "non-finite" if math.isfinite(loss_value) else loss_value
        where = f" on rank {', '.join(map(str, bad_ranks))}" if dist.world_size() > 1 else ""
        raise NonFiniteLoss(f"loss became {value}{where} at epoch {epoch + 1}, step {step + 1}")


@contextlib.contextmanager
def epoch_progress(steps: int, epoch: int, epochs: int, out: Path) -> Iterator:
    """A tqdm bar over one training epoch's ``steps`` (rank 0 only) for the block; a NonFiniteLoss raised in
    it says which checkpoint of the run folder ``out`` is left and what to try."""
    from tqdm.auto import tqdm

    bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=False,
               disable=None if dist.is_main() else True, dynamic_ncols=True)
    try:
        yield bar
    except NonFiniteLoss as exc:
        kept = (f"the last good checkpoint is {out / 'last.pt'} (epoch {epoch})" if epoch > 0
                else "no checkpoint was written")
        raise NonFiniteLoss(f"{exc}; training stopped, {kept}. Try a lower --lr or --grad-clip") from None
    finally:
        bar.close()


def backward_and_step(loss: Tensor, model: nn.Module, optimizer: torch.optim.Optimizer,
                      scaler: torch.amp.GradScaler | None = None, grad_clip: float = 0.0) -> None:
    """One optimizer step on ``loss``: zero the gradients, backward (scaled with ``scaler``), clip the
    gradient norm to ``grad_clip`` (unscaled first; 0: no clipping), step (and update the scaler)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        if grad_clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()

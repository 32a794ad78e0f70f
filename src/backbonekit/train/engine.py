"""The training loop: one function trains an epoch, one evaluates; optimizers and schedules."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import Tensor, nn

from ..optimize import fused_optimizer, training_autocast
from ..engine import dist


class NonFiniteLoss(ValueError):
    """The loss became NaN or infinite."""


@dataclass
class EpochStats:
    loss: float
    acc: float
    images: int
    seconds: float


TOPK = 5  # the second accuracy reported besides top-1, where it means something (see ``EvalResult``)


@dataclass
class EvalResult:
    """Validation figures over the whole set (all ranks), predictions in dataset order.

    ``top5`` is None with 5 classes or fewer: every label is then among the top 5 and it would read 100%.
    """

    loss: float
    top1: float
    top5: float | None
    count: int
    indices: Tensor = field(repr=False)
    targets: Tensor = field(repr=False)
    preds: Tensor = field(repr=False)

    def accuracies(self) -> dict[str, float]:
        """``{"top1": ..., "top5": ...}``, without top5 where it is not reported."""
        return {"top1": self.top1, **({} if self.top5 is None else {"top5": self.top5})}

    def summary(self) -> str:
        """``top1 97.50% top5 99.72%`` (top-5 only where reported), for log lines."""
        return " ".join(f"{k} {100 * v:.2f}%" for k, v in self.accuracies().items())


def reports_topk(num_classes: int, k: int = TOPK) -> bool:
    """Top-k accuracy says something only with more than k classes."""
    return num_classes > k


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

    A class, not a closure, so LambdaLR's state_dict holds plain values.
    """

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup, self.total = warmup, total

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
        warmup = min(total - 1, int(round(warmup_epochs * steps_per_epoch))) if total > 1 else 0
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


def train_one_epoch(model: nn.Module, batches: Iterable, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, loss_fn: nn.Module, *,
                    device: torch.device, amp_dtype: torch.dtype | None = None,
                    scaler: torch.amp.GradScaler | None = None, grad_clip: float = 0.0,
                    progress=None, epoch: int = 0) -> EpochStats:
    """Train over ``batches`` once; raise NonFiniteLoss as soon as the loss is NaN/inf.

    ``progress``: an optional tqdm bar to update with running loss, accuracy and images/s.
    Loss and accuracy are averaged over this rank's images, then over all ranks.
    """
    model.train()
    start = time.perf_counter()
    total_loss, correct, seen = 0.0, 0, 0
    for step, (x, y, _) in enumerate(batches):
        with training_autocast(device, enabled=amp_dtype is not None, dtype=amp_dtype):
            logits = model(x)
            loss = loss_fn(logits, y)
        loss_value = loss.item()
        check_finite(loss_value, epoch, step)
        backward_and_step(loss, model, optimizer, scaler, grad_clip)
        scheduler.step()
        total_loss += loss_value * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        if progress is not None:
            elapsed = time.perf_counter() - start
            progress.update(1)
            progress.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{100 * correct / seen:.2f}%",
                                 img_s=f"{seen * dist.world_size() / max(elapsed, 1e-9):.0f}", refresh=False)
    total_loss, correct, seen = dist.sum_values(total_loss, correct, seen)
    return EpochStats(total_loss / max(seen, 1), correct / max(seen, 1), int(seen), time.perf_counter() - start)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, loss_fn: nn.Module, *, device: torch.device,
             amp_dtype: torch.dtype | None = None, reduce: bool = True) -> EvalResult:
    """Loss, top-1 and top-5 accuracy (top-5 with more than 5 classes only) over every sample of the
    (sharded) set, each counted once.

    ``reduce``: sum the figures and gather the predictions of all ranks (each rank passes its shard).
    """
    model.eval()
    total_loss, top1, top5, num_classes = 0.0, 0, 0, 0
    indices, targets, preds = [], [], []
    for x, y, idx in batches:
        with training_autocast(device, enabled=amp_dtype is not None, dtype=amp_dtype):
            logits = model(x)
        logits = logits.float()
        total_loss += float(loss_fn(logits, y)) * len(y)
        num_classes = logits.shape[1]
        k = min(TOPK, num_classes)
        topk = logits.topk(k, dim=1).indices
        hits = topk == y[:, None]
        top1 += int(hits[:, 0].sum())
        top5 += int(hits.any(1).sum())
        indices.append(idx.cpu())
        targets.append(y.cpu())
        preds.append(topk[:, 0].cpu())
    indices_t, targets_t, preds_t = (torch.cat(t) if t else torch.zeros(0, dtype=torch.long)
                                     for t in (indices, targets, preds))
    count = len(targets_t)
    if reduce:
        total_loss, top1, top5, count = dist.sum_values(total_loss, top1, top5, count)
        indices_t, targets_t, preds_t = dist.gather_in_order(indices_t, targets_t, preds_t)
    else:
        order = indices_t.argsort()
        indices_t, targets_t, preds_t = indices_t[order], targets_t[order], preds_t[order]
    count = int(count)
    top5_rate = top5 / max(count, 1) if reports_topk(num_classes) else None
    return EvalResult(total_loss / max(count, 1), top1 / max(count, 1), top5_rate, count,
                      indices_t, targets_t, preds_t)

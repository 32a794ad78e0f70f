"""The classification training loop: one function trains an epoch, one evaluates (the optimizers, schedules
and the optimizer step are :mod:`backbonekit.engine.optim`, shared with detection)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import Tensor, nn

from ..engine import dist
from ..engine.optim import backward_and_step, check_finite
from ..optimize import training_autocast


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

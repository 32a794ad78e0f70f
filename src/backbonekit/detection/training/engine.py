"""The detection training loop: batches, one training epoch, one evaluation.

Randomness: every epoch draws its order, Mosaic partners and augmentation from generators seeded
by (seed, epoch, rank) alone, so a resumed run repeats the epochs an uninterrupted one would run.
Evaluation shards the validation set by rank (image ``i`` on rank ``i % world``, no padding, so
every image is evaluated exactly once), and rank 0 gathers all predictions and computes COCO mAP
once with :class:`~.metrics.DetectionEvaluator`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as td
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from ...engine import dist
from ...engine.optim import backward_and_step, check_finite
from ...optimize import training_autocast
from ..data.augment import NO_AUGMENT, AugmentConfig, Letterbox, Mosaic, augment_batch, collate_detection, multiscale_size
from ..data.datasets import training_target
from .metrics import DetectionEvaluator, DetectionMetrics

EPOCH_SEED_STRIDE = 1_000_003  # generators are seeded with seed * stride + epoch * 1000 + rank


@dataclass
class EpochLosses:
    """Mean of each loss part over the epoch's images (all ranks), with the images seen and the time."""

    parts: dict[str, float]
    images: int
    seconds: float


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    return seed * EPOCH_SEED_STRIDE + epoch * 1000 + rank


class _Resized(Dataset):
    """Each item letterboxed to ``size`` (uint8), so a batch stacks into one tensor."""

    def __init__(self, dataset: Dataset, size: int) -> None:
        self.dataset, self.letterbox = dataset, Letterbox(size)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        image, target = self.dataset[index]
        if tuple(image.shape[-2:]) == (self.letterbox.size, self.letterbox.size):
            return image, target
        return self.letterbox(image, target)


def augment_config(scale_jitter: float = 0.25, translate: float = 0.1, hflip: bool = False,
                   hsv: bool = True) -> AugmentConfig:
    """The batched augmentation of a training batch (:func:`~backbonekit.detection.data.augment.augment_batch`)."""
    colour = {} if hsv else {"hue": 0.0, "saturation": 1.0, "value": 1.0}
    return AugmentConfig(scale=(1 - scale_jitter, 1 + scale_jitter), translate=translate,
                         hflip=0.5 if hflip else 0.0, **colour)


class TrainBatches:
    """One epoch of training batches: (float images in [0, 1] on ``device``, targets on ``device``).

    The dataset's items are letterboxed to ``input_size`` (or made into mosaics with probability
    ``mosaic``) in DataLoader workers; each uint8 batch is then scaled, translated, flipped and
    colour-jittered at once on ``device`` (:func:`~backbonekit.detection.data.augment.augment_batch`), at a
    size that changes every 10 steps with ``multiscale`` (Darknet's ``random=1``). Each rank takes its share of a
    seeded permutation (torch's DistributedSampler); incomplete batches are dropped.
    """

    def __init__(self, dataset: Dataset, batch_size: int, input_size: int, device: torch.device, *,
                 seed: int, epoch: int, augment: AugmentConfig = NO_AUGMENT, mosaic: float = 0.0,
                 multiscale: bool = False, workers: int = 0, rank: int = 0, world: int = 1,
                 step_offset: int = 0) -> None:
        from torch.utils.data import DistributedSampler

        self.input_size, self.device, self.augment, self.multiscale = input_size, device, augment, multiscale
        self.seed, self.epoch, self.rank, self.step_offset = seed, epoch, rank, step_offset
        source = Mosaic(dataset, input_size, p=mosaic) if mosaic > 0 else _Resized(dataset, input_size)
        sampler = DistributedSampler(source, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
        sampler.set_epoch(epoch)
        generator = torch.Generator().manual_seed(epoch_seed(seed, epoch, rank))
        self.loader = DataLoader(source, batch_size=batch_size, sampler=sampler, drop_last=True,
                                 num_workers=workers, collate_fn=collate_detection, generator=generator,
                                 persistent_workers=False)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, list[dict]]]:
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch, self.rank) + 1)
        state = torch.get_rng_state()
        torch.manual_seed(epoch_seed(self.seed, self.epoch, self.rank) + 2)  # Mosaic in the main process
        try:
            for step, (images, targets) in enumerate(self.loader):
                size = multiscale_size(self.step_offset + step, self.input_size, seed=self.seed) \
                    if self.multiscale else self.input_size
                images, targets = augment_batch(images.to(self.device), targets, size, self.augment, generator)
                yield images, [_to_device(t, self.device) for t in targets]
        finally:
            torch.set_rng_state(state)


def _to_device(target: dict, device: torch.device) -> dict:
    target = training_target(target)
    return {"boxes": target["boxes"].float().to(device), "labels": target["labels"].long().to(device)}


def with_total(losses: dict[str, Tensor]) -> dict[str, Tensor]:
    """The loss dict with ``"loss"``, the sum of its parts, when the detector does not give it (torchvision's)."""
    return losses if "loss" in losses else {"loss": sum(losses.values()), **losses}


def train_one_epoch(model: nn.Module, batches: Any, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, *, device: torch.device,
                    amp_dtype: torch.dtype | None = None, scaler: torch.amp.GradScaler | None = None,
                    grad_clip: float = 0.0, ema: nn.Module | None = None, progress=None,
                    epoch: int = 0) -> EpochLosses:
    """Train over ``batches`` once (``model(images, targets)`` -> loss dict); raise NonFiniteLoss as
    soon as the loss is NaN/inf on any rank. Returns each loss part averaged over images."""
    model.train()
    start = time.perf_counter()
    sums: dict[str, float] = {}
    seen = 0
    for step, (images, targets) in enumerate(batches):
        with training_autocast(device, enabled=amp_dtype is not None, dtype=amp_dtype):
            losses = with_total(model(images, targets))
        check_finite(float(losses["loss"].detach()), epoch, step)
        backward_and_step(losses["loss"], model, optimizer, scaler, grad_clip)
        scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        n = len(targets)
        for key, part in losses.items():
            sums[key] = sums.get(key, 0.0) + float(part.detach()) * n
        seen += n
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{sums['loss'] / seen:.3f}",
                                 img_s=f"{seen * dist.world_size() / max(time.perf_counter() - start, 1e-9):.1f}",
                                 refresh=False)
    keys = sorted(sums)
    totals = dist.sum_values(*(sums[k] for k in keys), seen)
    seen_all = int(totals[-1])
    parts = {k: v / max(seen_all, 1) for k, v in zip(keys, totals[:-1])}
    return EpochLosses(parts, seen_all, time.perf_counter() - start)


# -- evaluation ---------------------------------------------------------------------------------

def _as_lists(batch: Sequence[tuple[Tensor, dict]]) -> tuple[list[Tensor], list[dict]]:
    images, targets = zip(*batch)
    return list(images), list(targets)


def shard_indices(n: int, rank: int, world: int) -> list[int]:
    """Image ``i`` belongs to rank ``i % world``: every image once, no padding (DistributedSampler pads)."""
    return list(range(rank, n, world))


@torch.no_grad()
def predict_dataset(model: nn.Module, dataset: Dataset, *, device: torch.device, batch_size: int = 16,
                    score_thresh: float = 0.01, nms_thresh: float = 0.45, rank: int = 0, world: int = 1,
                    workers: int = 0, amp_dtype: torch.dtype | None = None) -> list[tuple[int, dict, dict]]:
    """(index, prediction, target) for this rank's shard, on the CPU; predictions in original pixels."""
    model.eval()
    indices = shard_indices(len(dataset), rank, world)
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=_as_lists)
    out, position = [], 0
    for images, targets in loader:
        batch = [image.to(device, non_blocking=True).float().div_(255) for image in images]
        with training_autocast(device, enabled=amp_dtype is not None, dtype=amp_dtype):
            preds = model.detect(batch, score_thresh=score_thresh, nms_thresh=nms_thresh)
        for pred, target in zip(preds, targets):
            pred = {k: v.float().cpu() if k != "labels" else v.cpu() for k, v in pred.items()}
            out.append((indices[position], pred, _evaluated_target(target)))
            position += 1
    return out


EVALUATED_KEYS = ("labels", "image_id", "iscrowd", "area", "difficult")  # besides boxes, what evaluation reads


def _evaluated_target(target: dict) -> dict:
    return {"boxes": target["boxes"].float(), **{k: target[k] for k in EVALUATED_KEYS if k in target}}


def gather_to_main(items: list) -> list | None:
    """Every rank's list, concatenated on rank 0 (``torch.distributed.gather_object``); None on other ranks."""
    if not dist.is_distributed():
        return items
    parts = [None] * dist.world_size() if dist.is_main() else None
    td.gather_object(items, parts, dst=0)
    return [item for part in parts for item in part] if dist.is_main() else None


def evaluate(model: nn.Module, dataset: Dataset, class_names: Sequence[str], *, device: torch.device,
             batch_size: int = 16, score_thresh: float = 0.01, nms_thresh: float = 0.45, distributed: bool = True,
             workers: int = 0, amp_dtype: torch.dtype | None = None, count_difficult: bool = False
             ) -> tuple[DetectionMetrics | None, list[tuple[int, dict, dict]]]:
    """COCO mAP of ``model`` (eval mode, ``model.detect``) on ``dataset`` (uint8 images, targets in pixels).

    ``distributed``: each rank predicts its shard once and rank 0 computes mAP over all ranks'
    predictions once (other ranks get ``(None, [])``). Crowd regions are ignored, and so are VOC's
    difficult objects unless ``count_difficult`` (:class:`~.metrics.DetectionEvaluator`). Returns the
    metrics and the (index, prediction, target) triples in dataset order.
    """
    rank, world = (dist.rank(), dist.world_size()) if distributed else (0, 1)
    items = predict_dataset(model, dataset, device=device, batch_size=batch_size, score_thresh=score_thresh,
                            nms_thresh=nms_thresh, rank=rank, world=world, workers=workers, amp_dtype=amp_dtype)
    if distributed:
        items = gather_to_main(items)
        if items is None:
            return None, []
    items.sort(key=lambda item: item[0])
    evaluator = DetectionEvaluator(class_names, count_difficult=count_difficult)
    evaluator.update([p for _, p, _ in items], [t for _, _, t in items])
    return evaluator.compute(), items

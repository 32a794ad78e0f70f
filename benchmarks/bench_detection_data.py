"""Images/s of backbonekit's batched detection augmentation vs torchvision's per-image box-aware transforms, on the CPU.

Both pipelines produce the same thing from the same uint8 ``photodigits`` images and boxes: random
scale (0.75-1.25) and translation (10%), horizontal flip (p = 0.5), colour jitter, float images in
[0, 1] at ``--size``, boxes clipped and small ones dropped, in batches of ``--batch-size``:

- batched: ``backbonekit.detection.data.augment.augment_batch`` (one ``grid_sample`` and one colour
  matrix per batch, boxes of the whole batch at once), as training uses it;
- per-image: torchvision ``transforms.v2`` on PIL images with ``tv_tensors.BoundingBoxes``
  (``RandomAffine -> RandomHorizontalFlip -> ColorJitter -> Resize -> ToImage -> ToDtype ->
  SanitizeBoundingBoxes``) in a ``DataLoader``.

Run:  PYTHONPATH=src python benchmarks/bench_detection_data.py [--images 2000] [--workers 0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from backbonekit.detection.data.augment import AugmentConfig, augment_batch
from backbonekit.detection.data.photodigits import photodigits


class PerImage(Dataset):
    def __init__(self, images: torch.Tensor, targets: list[dict], size: int) -> None:
        self.images, self.targets = images, targets
        self.transform = v2.Compose([
            v2.RandomAffine(degrees=0, translate=(0.1, 0.1), scale=(0.75, 1.25), fill=128),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=0.5, saturation=0.5, hue=0.1),
            v2.Resize((size, size), antialias=True),
            v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
            v2.SanitizeBoundingBoxes(min_size=2),
        ])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        image = v2.functional.to_pil_image(self.images[i])
        target = self.targets[i]
        boxes = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=tuple(self.images.shape[-2:]))
        return self.transform(image, {"boxes": boxes, "labels": target["labels"]})


def per_image_epoch(loader: DataLoader) -> int:
    seen = 0
    for images, _ in loader:
        seen += len(images)
    return seen


def batched_epoch(images: torch.Tensor, targets: list[dict], batch_size: int, size: int, epoch: int) -> int:
    g = torch.Generator().manual_seed(epoch)
    order = torch.randperm(len(images), generator=g)
    seen = 0
    for start in range(0, len(images) - batch_size + 1, batch_size):
        idx = order[start:start + batch_size]
        out, _ = augment_batch(images[idx], [targets[i] for i in idx.tolist()], size, AugmentConfig(), g)
        seen += len(out)
    return seen


def best_rate(run, epochs: int) -> float:
    best = 0.0
    for epoch in range(epochs):
        start = time.perf_counter()
        seen = run(epoch)
        best = max(best, seen / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2, help="passes per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (best of each side is kept)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers for the per-image pipeline")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    data = photodigits("train")
    reps = -(-args.images // len(data))
    images = data.images.repeat(reps, 1, 1, 1)[:args.images].contiguous()
    targets = (data.targets * reps)[:args.images]
    loader = DataLoader(PerImage(images, targets, args.size), batch_size=args.batch_size, shuffle=True,
                        num_workers=args.workers, drop_last=True, collate_fn=lambda b: tuple(zip(*b)))

    fast = slow = 0.0
    for _ in range(args.rounds):  # alternate, keep each side's best: the machine may be shared
        fast = max(fast, best_rate(lambda e: batched_epoch(images, targets, args.batch_size, args.size, e),
                                   args.epochs))
        slow = max(slow, best_rate(lambda e: per_image_epoch(loader), args.epochs))
    result = {"images": args.images, "batch_size": args.batch_size, "size": args.size,
              "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "per_image_workers": args.workers,
              "batched_images_per_s": round(fast), "per_image_images_per_s": round(slow),
              "ratio": round(fast / slow, 1), "load_average": os.getloadavg()[0]}
    print(f"batched (grid_sample + colour matrix per batch): {fast:10.0f} images/s")
    print(f"per-image torchvision v2 on PIL ({args.workers} workers): {slow:10.0f} images/s")
    print(f"ratio: {fast / slow:.1f}x  (load average {result['load_average']:.1f}, {result['threads']} torch threads)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()

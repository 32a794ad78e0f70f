"""Images/s of backbonekit's batched in-memory augmentation vs a per-image PIL DataLoader, on the CPU.

Both pipelines produce the same thing from the same uint8 images: random crop 32 with 4-pixel zero padding,
random horizontal flip, float tensors normalised with the dataset's mean/std, in batches of 256.

- batched: ``backbonekit.train.data.Batches`` (whole-batch tensor ops, no DataLoader), as training uses it;
- per-image: torchvision ``ToPILImage -> RandomCrop(32, padding=4) -> RandomHorizontalFlip -> ToTensor ->
  Normalize`` in a ``DataLoader`` (the usual CIFAR recipe, e.g. seed 001's pipeline plus augmentation).

Run:  PYTHONPATH=src python benchmarks/bench_data.py [--images 10000] [--workers 0] [--json out.json]
The data are scikit-learn's digits upscaled to 32x32 RGB (offline), tiled to ``--images`` images.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from backbonekit.train.data import Batches, Normalizer, Split, load_dataset


class PerImageDataset(Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.labels[i]


def tiled_digits(n: int) -> Split:
    train = load_dataset("digits").train
    reps = -(-n // len(train))
    return Split(train.images.repeat(reps, 1, 1, 1)[:n].contiguous(), train.labels.repeat(reps)[:n])


def time_epochs(make_iter, epochs: int) -> float:
    """Best images/s over ``epochs`` passes."""
    best = 0.0
    for epoch in range(epochs):
        start, seen = time.perf_counter(), 0
        for x, y, *_ in make_iter(epoch):
            seen += len(y)
        best = max(best, seen / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2, help="passes per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (best of each side is kept)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers for the per-image pipeline")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    data = tiled_digits(args.images)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    device = torch.device("cpu")
    normalize = Normalizer(mean, std, device)

    def batched(epoch: int):
        return Batches(data, args.batch_size, normalize, device, seed=0, epoch=epoch, train=True,
                       crop_padding=4, hflip=True)

    per_image_tf = transforms.Compose([transforms.ToPILImage(), transforms.RandomCrop(32, padding=4),
                                       transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                       transforms.Normalize(mean, std)])
    loader = DataLoader(PerImageDataset(data.images, data.labels, per_image_tf), batch_size=args.batch_size,
                        shuffle=True, num_workers=args.workers, drop_last=True)

    fast = slow = 0.0
    for _ in range(args.rounds):  # alternate, keep each side's best: the machine may be shared
        fast = max(fast, time_epochs(batched, args.epochs))
        slow = max(slow, time_epochs(lambda epoch: loader, args.epochs))
    result = {"images": args.images, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
              "cpus": os.cpu_count(), "per_image_workers": args.workers,
              "batched_images_per_s": round(fast), "per_image_images_per_s": round(slow),
              "ratio": round(fast / slow, 1), "load_average": os.getloadavg()[0]}
    print(f"batched (tensor ops, whole batch): {fast:10.0f} images/s")
    print(f"per-image PIL DataLoader ({args.workers} workers): {slow:10.0f} images/s")
    print(f"ratio: {fast / slow:.1f}x  (load average {result['load_average']:.1f}, {result['threads']} torch threads)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()

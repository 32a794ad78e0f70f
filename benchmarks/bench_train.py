"""Training throughput in seed 001's setting, side by side, and where the time goes.

Setting (seed 001, a CIFAR-10 Darknet-53 tutorial): Darknet-53 with 10 classes, 32x32 images,
batch 64, Adam lr 1e-3, cross-entropy. The reference is the seed's recipe with timm's darknet53
(same layers and cost as the seed's network): a DataLoader over PIL images with ``ToTensor``,
``torch.optim.Adam`` defaults, eager PyTorch. The data are random CIFAR-shaped uint8 images held
in memory (no download); what is timed is identical work for every candidate.

Candidates run in one process, one step each per round (interleaved), after warm-up. Each step is
split into data, forward (with the loss), backward and optimizer (with ``zero_grad``).

    PYTHONPATH=src python benchmarks/bench_train.py            # writes the training part of RESULTS.md
    PYTHONPATH=src python benchmarks/bench_train.py --omp-passive --repeats 6   # on a busy machine
"""

from __future__ import annotations

import argparse
import os
import sys

if "--omp-passive" in sys.argv:  # must precede the OpenMP runtime's start (importing torch)
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

import statistics  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable, Iterator  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torchvision.transforms import ToTensor  # noqa: E402

import backbonekit as bk  # noqa: E402
from backbonekit.bench import environment  # noqa: E402
from backbonekit.optimize import (  # noqa: E402
    compile_for_training,
    fast_adam,
    prepare_for_training,
    training_autocast,
)
from results_file import CpuWatch, load_note, write_section  # noqa: E402

NUM_CLASSES, SIZE, BATCH, LR = 10, 32, 64, 1e-3
PHASES = ("data", "forward", "backward", "optimizer")
VARIANTS = ("seed-timm", "seed-ours", "fast-adam", "fast", "fast-cl", "fast-compiled", "fast-bf16")
DEFAULT_VARIANTS = VARIANTS[:-1]  # fast-bf16 takes ~7 s a step here (see docs/speed.md): run it on request
DESCRIPTIONS = {
    "seed-timm": "timm darknet53, DataLoader(PIL + ToTensor), Adam (defaults), eager: seed 001's recipe",
    "seed-ours": "backbonekit darknet53 in the seed's recipe",
    "fast-adam": "backbonekit darknet53 + fast_adam (fused Adam), batches sliced from an in-memory tensor",
    "fast": "fast-adam + prepare_for_training (kernel taps that only see padding skipped): exact, same results",
    "fast-cl": "fast + channels_last",
    "fast-compiled": "fast + torch.compile of the model (forward and backward)",
    "fast-bf16": "fast + training_autocast(enabled=True) (bfloat16 mixed precision: changes numerics)",
}


class UInt8Images(Dataset):
    """CIFAR10's ``__getitem__``: a uint8 HWC array to a PIL image, then the transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def loader_batches(images: np.ndarray, labels: np.ndarray) -> Iterator[tuple[Tensor, Tensor]]:
    """The seed's data path, endlessly: DataLoader(batch 64, shuffle, ToTensor), no workers."""
    loader = DataLoader(UInt8Images(images, labels, ToTensor()), batch_size=BATCH, shuffle=True, drop_last=True)
    while True:
        yield from loader


def tensor_batches(images: np.ndarray, labels: np.ndarray) -> Iterator[tuple[Tensor, Tensor]]:
    """The whole set as one tensor; a batch is an index into it (what backbonekit's training data does)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(labels).long()
    while True:
        order = torch.randperm(len(y))
        for start in range(0, len(y) - BATCH + 1, BATCH):
            idx = order[start:start + BATCH]
            yield x[idx].float().div_(255), y[idx]


@dataclass
class Trainer:
    label: str
    model: nn.Module
    forward: Callable[[Tensor], Tensor]
    optimizer: torch.optim.Optimizer
    batches: Iterator[tuple[Tensor, Tensor]]
    channels_last: bool = False
    autocast: bool = False
    phase_times: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PHASES})

    def step(self, record: bool = True) -> None:
        t0 = time.perf_counter()
        x, y = next(self.batches)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        t1 = time.perf_counter()
        with training_autocast("cpu", enabled=self.autocast):
            loss = F.cross_entropy(self.forward(x), y)
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        if record:
            for phase, seconds in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                self.phase_times[phase].append(seconds)

    def step_times(self) -> list[float]:
        return [sum(parts) for parts in zip(*self.phase_times.values())]


def build(variant: str, images: np.ndarray, labels: np.ndarray) -> Trainer:
    torch.manual_seed(0)
    if variant == "seed-timm":
        import timm

        model = timm.create_model("darknet53", num_classes=NUM_CLASSES).train()
    else:
        model = bk.create_model("darknet53", num_classes=NUM_CLASSES).train()
    if variant.startswith("seed"):
        return Trainer(variant, model, model, torch.optim.Adam(model.parameters(), lr=LR),
                       loader_batches(images, labels))
    channels_last = variant == "fast-cl"
    prepare_for_training(model, channels_last=channels_last, skip_dead_taps=variant != "fast-adam")
    forward = compile_for_training(model) if variant == "fast-compiled" else model
    return Trainer(variant, model, forward, fast_adam(model.parameters(), lr=LR), tensor_batches(images, labels),
                   channels_last, autocast=variant == "fast-bf16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(DEFAULT_VARIANTS))
    parser.add_argument("--repeats", type=int, default=6, help="timed steps per candidate")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per candidate (compiled: +compile)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=2048, help="size of the in-memory training set")
    parser.add_argument("--omp-passive", action="store_true", help="OMP_WAIT_POLICY=PASSIVE (busy machines)")
    parser.add_argument("--results", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, SIZE, SIZE, 3), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, args.images)
    env_before = environment(torch.device("cpu"))
    trainers = [build(v, images, labels) for v in args.variants]
    for trainer in trainers:
        for _ in range(args.warmup):
            trainer.step(record=False)
    with CpuWatch() as watch:
        for _ in range(args.repeats):
            for trainer in trainers:
                trainer.step()
    env = environment(torch.device("cpu"))
    env["others_cores"] = watch.others_cores
    env["load_average_before"] = env_before.get("load_average_1_5_15")
    env["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY", "(default)")
    text = report(trainers, env, args)
    print(text)
    if not args.no_write:
        write_section(args.results, "training", text)
        print(f"wrote the training section of {args.results}")


def report(trainers: list[Trainer], env: dict, args: argparse.Namespace) -> str:
    reference = next((t for t in trainers if t.label == "seed-timm"), trainers[0])
    ref_rate = statistics.median(BATCH / s for s in reference.step_times())
    lines = [
        "## Training throughput: seed 001's setting (Darknet-53, 10 classes, 32x32, batch 64, Adam lr 1e-3)",
        "",
        f"`PYTHONPATH=src python benchmarks/bench_train.py {' '.join(sys.argv[1:])}`".replace(" `", "`"),
        "",
        f"{env['device']}, {env['torch_threads']} torch threads, torch {env['torch']}, "
        f"OMP_WAIT_POLICY {env['OMP_WAIT_POLICY']}, load average (1/5/15 min) before {env['load_average_before']}, "
        f"after {env.get('load_average_1_5_15')}; {args.repeats} interleaved steps each after {args.warmup} warm-up.",
        load_note(env["others_cores"], env["cpu_count"]),
        "",
        f"| variant | images/s median (min-max) | vs {reference.label} | "
        + " | ".join(f"{p} ms" for p in PHASES) + " |",
        "|---|---|---|" + "---|" * len(PHASES),
    ]
    for t in trainers:
        rates = [BATCH / s for s in t.step_times()]
        median = statistics.median(rates)
        phases = " | ".join(f"{statistics.median(t.phase_times[p]) * 1e3:.0f}" for p in PHASES)
        lines.append(f"| {t.label} | {median:.1f} ({min(rates):.1f}-{max(rates):.1f}) | "
                     f"{median / ref_rate:.2f}x | {phases} |")
    lines += ["", "Phases are medians over the timed steps (they need not add up to the median step).", ""]
    lines += [f"- `{t.label}`: {DESCRIPTIONS[t.label]}" for t in trainers]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

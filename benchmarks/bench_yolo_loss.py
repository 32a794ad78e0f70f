"""YOLOv3's target assignment + loss against a whole training step (issue 12's target: at most 10%).

A training step here is: the detector's forward to its three raw levels, ``YOLOv3Loss`` (target
assignment, ignore-region IoU, the five parts), and the backward of everything. Separately, the
loss alone (its forward and backward, on leaf copies of the same levels) is timed; its share of the
step is the figure to check. The model is ``create_model("yolov3")`` when it is registered;
otherwise a stand-in with the same convolutions: Darknet-53 (C3-C5) and the cfg's neck and head
(five alternating 1x1/3x3 convs per level, 1x1 + 2x upsampling + concatenation, 3x3 and the 1x1
output conv). Targets are random boxes, ``--boxes`` per image, at any position and size.

Steps run after ``--warmup`` untimed ones; the median of ``--repeats`` is printed.

    PYTHONPATH=src python benchmarks/bench_yolo_loss.py                     # batch 16 at 416, 80 classes
    PYTHONPATH=src python benchmarks/bench_yolo_loss.py --write             # and the section of RESULTS.md
    PYTHONPATH=src python benchmarks/bench_yolo_loss.py --batch 2 --size 64 --repeats 1 --warmup 0  # smoke
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
import torch
from torch import Tensor, nn

import backbonekit as bk
from backbonekit.bench import environment
from backbonekit.detection.task.anchors import COCO_ANCHORS, YOLOV3_MASKS, YOLOV3_STRIDES
from backbonekit.detection.task.loss import YOLOv3Loss
from results_file import CpuWatch, load_note, write_section


def conv(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.LeakyReLU(0.1))


class StandInYOLOv3(nn.Module):
    """Darknet-53 C3-C5 and the cfg's YOLOv3 neck and head, for timing only (no weights layout)."""

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (512, 256, 128)) -> None:
        super().__init__()
        self.backbone = bk.create_model("darknet53", features_only=True)
        chans = list(reversed(self.backbone.out_channels))  # stride 32, 16, 8
        self.blocks, self.outs, self.laterals = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        extra = 0
        for cin, n in zip(chans, widths):
            c = cin + extra
            self.blocks.append(nn.Sequential(conv(c, n, 1), conv(n, 2 * n, 3), conv(2 * n, n, 1),
                                             conv(n, 2 * n, 3), conv(2 * n, n, 1)))
            self.outs.append(nn.Sequential(conv(n, 2 * n, 3), nn.Conv2d(2 * n, 3 * (5 + num_classes), 1)))
            self.laterals.append(conv(n, n // 2, 1))
            extra = n // 2

    def forward_levels(self, x: Tensor) -> list[Tensor]:
        maps, levels, up = list(reversed(self.backbone(x))), [], None
        for fmap, block, out, lateral in zip(maps, self.blocks, self.outs, self.laterals):
            y = block(fmap if up is None else torch.cat((up, fmap), 1))
            levels.append(out(y))
            up = nn.functional.interpolate(lateral(y), scale_factor=2.0, mode="nearest")
        return levels


def build_model(num_classes: int, size: int) -> tuple[nn.Module, str]:
    try:
        model = bk.create_model("yolov3", num_classes=num_classes, input_size=size)
        if hasattr(model, "forward_levels"):
            return model, "backbonekit yolov3 (Darknet-53)"
    except (KeyError, ValueError, TypeError):
        pass
    return StandInYOLOv3(num_classes), "stand-in: Darknet-53 + the cfg's neck and head convs"


def random_targets(n: int, boxes: int, size: int, num_classes: int, gen: torch.Generator) -> list[dict]:
    out = []
    for _ in range(n):
        wh = (torch.rand(boxes, 2, generator=gen) * 0.6 + 0.02) * size
        xy = torch.rand(boxes, 2, generator=gen) * (size - wh) + wh / 2
        out.append({"boxes": torch.cat((xy - wh / 2, xy + wh / 2), 1),
                    "labels": torch.randint(0, num_classes, (boxes,), generator=gen)})
    return out


def clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=416)
    p.add_argument("--classes", type=int, default=80)
    p.add_argument("--boxes", type=int, default=8, help="ground-truth boxes per image")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--iou-thresh", type=float, default=0.213,
                   help="extra anchors per box above this shape IoU (detect train's default; 1: yolov3.cfg)")
    p.add_argument("--write", action="store_true", help="write the section of benchmarks/RESULTS.md")
    args = p.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    model, name = build_model(args.classes, args.size)
    model.to(device).train()
    loss_fn = YOLOv3Loss(COCO_ANCHORS, YOLOV3_MASKS, YOLOV3_STRIDES, args.classes,
                         iou_thresh=args.iou_thresh).to(device)
    x = torch.rand(args.batch, 3, args.size, args.size, device=device)
    targets = [{k: v.to(device) for k, v in t.items()} for t in
               random_targets(args.batch, args.boxes, args.size, args.classes, torch.Generator().manual_seed(0))]
    rows: dict[str, list[float]] = {k: [] for k in ("forward", "loss", "backward", "step", "loss alone")}
    with CpuWatch() as watch:
        for i in range(args.warmup + args.repeats):
            model.zero_grad(set_to_none=True)
            t0 = clock(device)
            levels = model.forward_levels(x)
            t1 = clock(device)
            losses = loss_fn(levels, targets)
            t2 = clock(device)
            losses["loss"].backward()
            t3 = clock(device)
            leaves = [r.detach().requires_grad_(True) for r in levels]
            loss_fn(leaves, targets)["loss"].backward()
            alone = clock(device) - t3
            if i >= args.warmup:
                for k, v in zip(rows, (t1 - t0, t2 - t1, t3 - t2, t3 - t0, alone)):
                    rows[k].append(v)
    med = {k: statistics.median(v) for k, v in rows.items()}
    share = med["loss alone"] / med["step"]
    lines = [
        f"YOLOv3 training step, batch {args.batch} at {args.size}x{args.size}, {args.classes} classes, "
        f"{args.boxes} boxes/image, iou_thresh {args.iou_thresh}; model: {name}",
        f"environment: {environment(device)}",
        "",
        "| part | ms (median) |",
        "|---|---:|",
        *(f"| {k} | {1000 * v:.1f} |" for k, v in med.items()),
        "",
        f"**assignment + loss (forward and backward): {100 * share:.1f}% of the step** (target: at most 10%)",
    ]
    note = load_note(watch.others_cores, os.cpu_count())
    text = "\n".join(lines + ([note] if note else []))
    print(text)
    if args.write:
        write_section(Path(__file__).with_name("RESULTS.md"), "yolo-loss", "## YOLOv3 loss share\n\n" + text)


if __name__ == "__main__":
    main()

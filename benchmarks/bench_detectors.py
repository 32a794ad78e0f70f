"""Every detector of the package on the same data, input size and CPU training budget, in one table.

YOLOv3 (Darknet-53, full-width neck), Faster R-CNN on DetNet-59 and on ResNet-50 with FPN, RetinaNet and
FCOS on ResNet-50 with FPN: each trains from scratch with ``backbonekit detect train``'s trainer for the same
epochs on the same subset of the built-in photodigits set (written once as a YOLO folder), at the same input
size (YOLOv3's letterbox side; the others' ``min_size = max_size``), then is evaluated on the same
validation images (COCO mAP@[.5:.95], @.5, @.75, small, large). Parameters and MACs come from this package's
profiler at that size; inference images/s is ``model.detect`` on the validation images, every detector in
the same run, interleaved round by round (median). Training seconds per image is the training epochs' wall
time over the images seen. These are tiny CPU budgets, not COCO: compare detectors with each other here,
and with published COCO figures only in kind (docs/detection.md).

    PYTHONPATH=src python benchmarks/bench_detectors.py --write        # 200 train / 100 val images, 128 px, 1 epoch
    PYTHONPATH=src python benchmarks/bench_detectors.py --train-images 8 --val-images 4 --size 64 --rounds 1  # smoke
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from results_file import CpuWatch, load_note, write_section

ROOT = Path(__file__).resolve().parents[1]
DETECTORS = {  # label: (model, backbone, extra DetectConfig fields)
    "YOLOv3 Darknet-53": ("yolov3", "darknet53", {"neck_width": 1.0}),
    "Faster R-CNN DetNet-59 FPN": ("fasterrcnn", "detnet59", {}),
    "Faster R-CNN R50-FPN": ("fasterrcnn", "resnet50", {}),
    "RetinaNet R50-FPN": ("retinanet", "resnet50", {}),
    "FCOS R50-FPN": ("fcos", "resnet50", {}),
}
COLUMNS = ("detector", "params (M)", "GMACs", "img/s", "mAP", "mAP@.5", "mAP@.75", "mAP small", "mAP large",
           "train s/img")


def _train(label: str, data: Path, out: Path, args: argparse.Namespace):
    from backbonekit.detection.training.config import DetectConfig
    from backbonekit.detection.training.trainer import train

    model, backbone, extra = DETECTORS[label]
    cfg = DetectConfig(model=model, backbone=backbone, dataset=f"yolo:{data}", epochs=args.epochs,
                       batch_size=args.batch_size, lr=args.lr, input_size=args.size, device="cpu",
                       seed=args.seed, out=str(out), **extra)
    start = time.perf_counter()
    result = train(cfg, log=lambda line: print(f"  {label}: {line}", flush=True))
    seconds = sum(row["time_s"] for row in result.history)
    images = args.epochs * (args.train_images // args.batch_size) * args.batch_size
    print(f"  {label}: trained in {time.perf_counter() - start:.0f}s (epochs {seconds:.0f}s)", flush=True)
    return result, seconds / max(images, 1)


def _images_per_second(models: dict, images: list[torch.Tensor], rounds: int) -> dict[str, float]:
    """``model.detect`` on ``images``, every model once per round, in turn; the median per model."""
    times: dict[str, list[float]] = {label: [] for label in models}
    with torch.no_grad():
        for label, model in models.items():  # warm-up
            model.detect(images[:1])
        for _ in range(rounds):
            for label, model in models.items():
                start = time.perf_counter()
                model.detect(images)
                times[label].append(time.perf_counter() - start)
    return {label: len(images) / statistics.median(t) for label, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="input size of every detector (multiple of 32)")
    parser.add_argument("--train-images", type=int, default=200)
    parser.add_argument("--val-images", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3, help="inference timing rounds")
    parser.add_argument("--speed-images", type=int, default=8, help="validation images per timing round")
    parser.add_argument("--only", nargs="+", choices=list(DETECTORS), metavar="LABEL", help="a subset of the detectors")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--write", action="store_true", help="replace this benchmark's section of benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="bench_detectors_") as folder:  # five runs' checkpoints: removed
        return _run(args, Path(folder))


def _run(args: argparse.Namespace, tmp: Path) -> int:
    from backbonekit.detection.data import load_detection_dataset
    from backbonekit.detection.loading import load_detector
    from backbonekit.detection.data.photodigits import make_data
    from backbonekit.profiler import profile_model

    data = make_data(tmp / "data", num_train=args.train_images, num_val=args.val_images, seed=args.seed)
    val = load_detection_dataset(f"yolo:{data}", None, "val")
    images = [val[i][0].float() / 255 for i in range(min(args.speed_images, len(val)))]
    labels = args.only or list(DETECTORS)
    rows, models = {}, {}
    with CpuWatch() as watch:
        for label in labels:
            result, train_s = _train(label, data, tmp / label.replace(" ", "_"), args)
            model, _ = load_detector(result.out / "best.pt")
            profile = profile_model(model, args.size)
            s = result.final.summary
            rows[label] = [label, f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}",
                           f"{profile.macs / 1e9:.2f}", "", *(f"{100 * s[k]:.1f}" for k in
                           ("map", "map_50", "map_75", "map_small", "map_large")), f"{train_s:.3f}"]
            models[label] = model
        for label, speed in _images_per_second(models, images, args.rounds).items():
            rows[label][3] = f"{speed:.1f}"
    table = "\n".join(["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
                      + ["| " + " | ".join(r) + " |" for r in rows.values()])
    text = (f"## Detectors on one budget (bench_detectors.py)\n\n"
            f"photodigits subset: {args.train_images} training, {args.val_images} validation images; input "
            f"{args.size} px; {args.epochs} epoch(s) from scratch, batch {args.batch_size}, AdamW lr {args.lr}, "
            f"CPU, {torch.get_num_threads()} threads. mAP on the validation images (COCO definitions, "
            f"-100 where a size class is absent); img/s: model.detect on {len(images)} images, median of "
            f"{args.rounds} interleaved rounds. Not COCO.\n\n{table}\n\n"
            f"{load_note(watch.others_cores, os.cpu_count())}\n\n"
            f"Command: `PYTHONPATH=src python benchmarks/bench_detectors.py "
            f"--train-images {args.train_images} --val-images {args.val_images} --size {args.size} "
            f"--epochs {args.epochs} --batch-size {args.batch_size} --lr {args.lr} --write`\n")
    print(text)
    if args.write:
        write_section(ROOT / "benchmarks" / "RESULTS.md", "bench_detectors", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

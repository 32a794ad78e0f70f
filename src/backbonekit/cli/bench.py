"""``backbonekit bench``: images/s of models side by side (:func:`backbonekit.bench.benchmark`)."""

from __future__ import annotations

import argparse
import json

from ..bench import INFER_VARIANTS, TRAIN_VARIANTS


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="images/s of models side by side (interleaved, warm-up excluded)")
    p.add_argument("models", nargs="+", metavar="MODEL", help="registered model names")
    p.add_argument("--mode", choices=("infer", "train"), default="infer")
    p.add_argument("--variant", nargs="+", default=None,
                   help=f"infer: {' '.join(INFER_VARIANTS)} (default: eager fused); "
                        f"train: {' '.join(TRAIN_VARIANTS)} (default: eager fast)")
    p.add_argument("--compare", nargs="*", default=[], metavar="SPEC",
                   help="reference models, timed eager: timm:NAME or torchvision:NAME")
    p.add_argument("--input-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, nargs="+", default=[1, 8])
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=10, help="timed steps per candidate (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per candidate first (default 2)")
    p.add_argument("--threads", type=int, default=None, help="torch (and ONNX Runtime) threads")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--matmul-peak", action="store_true", help="also measure fp32 matmul GFLOP/s")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bench import benchmark, format_table

    report = benchmark(args.models, mode=args.mode, variants=args.variant, compare=args.compare,
                       input_size=args.input_size, batch_sizes=args.batch_size, num_classes=args.num_classes,
                       repeats=args.repeats, warmup=args.warmup, threads=args.threads, device=args.device,
                       matmul_peak=args.matmul_peak)
    print(json.dumps(report, indent=2) if args.format == "json" else format_table(report))
    return 0

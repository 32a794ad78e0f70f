"""``backbonekit anchors``: k-means anchors for a detection dataset (YOLOv2's 1 - IoU distance)."""

from __future__ import annotations

import argparse
import json

from ..detection.task.anchors import BPR_IOU_THRESHOLD, anchors_for_dataset
from ..detection.data import FORMATS, load_detection_dataset
from ._config import add_skip_bad_data_flag, warn_renamed_flags


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``anchors`` command."""
    p = subparsers.add_parser(
        "anchors", help="k-means anchors for a detection dataset",
        description="Cluster the training boxes' shapes (as letterboxed to --input-size) with 1 - IoU as the "
                    "distance; print the anchors (smallest first), their mean IoU and the best possible recall.")
    p.add_argument("--dataset", default="photodigits", help=f"one of {', '.join(FORMATS)}")
    p.add_argument("--data-dir", default=None, help="image folder for coco: datasets")
    p.add_argument("--split", default="train", choices=("train", "val", "all"))
    p.add_argument("--num", type=int, default=9, help="number of anchors (YOLOv3: 9, three per level)")
    p.add_argument("--input-size", type=int, default=416, help="the model's input size")
    p.add_argument("--threshold", type=float, default=BPR_IOU_THRESHOLD,
                   help="shape IoU a box's best anchor must reach to count for the best possible recall")
    p.add_argument("--seed", type=int, default=0)
    add_skip_bad_data_flag(p, help="drop bad label rows instead of stopping")
    p.add_argument("--format", choices=("text", "json"), default="text", help="how to print the result")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Fit and print the anchors."""
    warn_renamed_flags(args)
    dataset = load_detection_dataset(args.dataset, args.data_dir, args.split, skip_bad_labels=args.skip_bad_data)
    fit = anchors_for_dataset(dataset, args.num, args.input_size, seed=args.seed, threshold=args.threshold)
    anchors = [[round(w, 1), round(h, 1)] for w, h in fit.anchors.tolist()]
    if args.format == "json":
        print(json.dumps({"anchors": anchors, "mean_iou": fit.mean_iou, "best_possible_recall": fit.recall,
                          "threshold": fit.threshold, "boxes": fit.num_boxes, "input_size": args.input_size}))
        return 0
    print(f"anchors for {args.dataset} ({fit.num_boxes} boxes) at input size {args.input_size}, smallest first:")
    print("  " + ", ".join(f"{w:g},{h:g}" for w, h in anchors))
    print(f"mean IoU {fit.mean_iou:.3f}; best possible recall {fit.recall:.3f} "
          f"(boxes whose best anchor has shape IoU >= {fit.threshold:g})")
    return 0

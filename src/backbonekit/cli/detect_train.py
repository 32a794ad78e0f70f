"""``backbonekit detect train | evaluate | make-data``: parse flags, call one library function each.

``register(subparsers)`` takes the sub-parsers of the ``detect`` command. Flags of ``train`` are
generated from :class:`~backbonekit.detection.training.config.DetectConfig`'s fields, as ``backbonekit
train``'s are from TrainConfig; ``--config FILE`` sets any of them and flags win.
"""

from __future__ import annotations

import argparse
import json

from ..detection.training.config import DetectConfig
from ..engine.config import RUN_CHOICES
from ._config import (RUN_FLAG_HELP, add_evaluate_parser, add_skip_bad_data_flag, add_train_parser, run_training,
                      warn_renamed_flags)

FLAG_HELP = {
    **RUN_FLAG_HELP,
    "model": "the detector: yolov3, fasterrcnn, retinanet or fcos (torchvision's, through an FPN)",
    "backbone": "a registered backbone (backbonekit models), e.g. resnet18, darknet53, detnet59",
    "dataset": "photodigits (built in), yolo:PATH, coco:ANNOTATIONS.json[,VAL.json] or voc:PATH",
    "data_dir": "images folder for coco:",
    "lr": "peak learning rate (cosine schedule after the warm-up)",
    "weight_decay": "weight decay on conv weights (not on BatchNorm or biases)",
    "warmup_epochs": "epochs of linear learning-rate warm-up",
    "input_size": "training and evaluation input size (a multiple of 32)",
    "neck_width": "a width multiplier (ultralytics' width_multiple), not a channel list: the YOLOv3 neck's widths "
                  "(512, 256, 128) times this (YOLOv3 only)",
    "multiscale": "multi-scale training (Darknet's random=1: a new size every 10 steps; YOLOv3 only)",
    "mosaic": "probability of a Mosaic sample (four images in one)",
    "hflip": "random horizontal flips (off by default: digits are not mirror-symmetric)",
    "hsv": "HSV colour jitter (Darknet's hue/saturation/exposure)",
    "scale_jitter": "random scale in [1 - s, 1 + s] of the letterbox fit",
    "translate": "random translation, a fraction of the input side",
    "frozen_stages": "frozen backbone stages (-1 none, 0 stem; default 1 with --pretrained, else -1; YOLOv3 only)",
    "ema": "evaluate and save an exponential moving average of the weights",
    "anchors": "coco, auto (k-means on the training boxes) or nine 'w,h' pairs (YOLOv3 only)",
    "ignore_thresh": "IoU above which an unassigned prediction gets no objectness loss (Darknet's; YOLOv3 only)",
    "iou_thresh": "also assign a box to every anchor whose shape IoU with it is above this (AlexeyAB's Darknet; "
                  "1: the best anchor only, as yolov3.cfg; YOLOv3 only)",
    "score_thresh": "score threshold of evaluation detections",
    "nms_thresh": "IoU threshold of class-aware NMS",
    "workers": "DataLoader workers",
    "resume": "continue the run in this folder (or from this last.pt) with its saved config",
    "pretrained": "darknet53.conv.74, a classification run's best.pt, a detector file, or a published tag "
                  "(darknet53.darknet_conv74, resnet50.tv2_in1k, ...: backbonekit weights)",
    "skip_bad_data": "drop bad label rows (with a count) instead of stopping; the images stay",
    "count_difficult": "evaluate VOC's difficult objects as ordinary ones (default: ignored, as VOC's protocol)",
    "nproc": "launch N processes on this machine (DistributedDataParallel)",
    "rpn_pre_nms_top_n_train": "Faster R-CNN: proposals per image before the RPN's NMS in training (torchvision: 2000)",
    "rpn_post_nms_top_n_train": "Faster R-CNN: proposals per image kept after the RPN's NMS in training (torchvision: 2000)",
    "rpn_pre_nms_top_n_test": "Faster R-CNN: proposals per image before the RPN's NMS in evaluation (torchvision: 1000)",
    "rpn_post_nms_top_n_test": "Faster R-CNN: proposals per image kept after the RPN's NMS in evaluation (torchvision: 1000)",
    "fpn_min_level": "Faster R-CNN, RetinaNet, FCOS: the pyramid's first level, 2 (stride 4) or 3 (stride 8) "
                     "(default: P2 for Faster R-CNN and DetNet-59, P3 for RetinaNet/FCOS on the others)",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train``, ``evaluate`` and ``make-data`` to the ``detect`` command's sub-parsers."""
    _register_train(subparsers)
    _register_evaluate(subparsers)
    _register_make_data(subparsers)


def _register_train(subparsers: argparse._SubParsersAction) -> None:
    add_train_parser(subparsers, DetectConfig, FLAG_HELP, RUN_CHOICES, run_train,
                     help="train a detector; writes a run folder with checkpoints, metrics and a report",
                     description="Train YOLOv3, Faster R-CNN, RetinaNet or FCOS (--model). With no arguments: "
                                 "ResNet-18 YOLOv3 on the built-in photodigits set, offline. Every option can be "
                                 "set in a YAML/JSON file given with --config; flags win.")


def run_train(args: argparse.Namespace) -> int:
    from ..detection.training.config import resolve_detect_config
    from ..detection.training.launch import launch_local
    from ..detection.training.trainer import train

    return run_training(args, DetectConfig, resolve_detect_config, train, launch_local)


def _register_evaluate(subparsers: argparse._SubParsersAction) -> None:
    p = add_evaluate_parser(subparsers, run_evaluate, help="COCO mAP of a saved detector (prints the COCO table)",
                            checkpoint_help="best.pt or last.pt written by backbonekit detect train, or an "
                                            "exported .onnx YOLOv3 (fp32 or int8)", batch_size=16,
                            out_help="report folder (default: CHECKPOINT_FOLDER/eval-DATASET-SPLIT; never a run "
                                     "folder) with the report and detections.json (COCO results: the dataset's "
                                     "image and category ids)")
    p.add_argument("--data-dir")
    p.add_argument("--split", choices=("val", "train", "test"), default="val",
                   help="test: a YOLO yaml's test entry or VOC's ImageSets/Main/test.txt")
    p.add_argument("--score-thresh", type=float, help="default: the training run's")
    p.add_argument("--nms-thresh", type=float, help="default: the training run's")
    add_skip_bad_data_flag(p, help="drop bad label rows (with a count) instead of stopping")
    p.add_argument("--count-difficult", action=argparse.BooleanOptionalAction, default=None,
                   help="evaluate VOC's difficult objects as ordinary ones (default: the training run's choice; "
                        "ignored, as VOC's protocol, for runs that made none)")


def run_evaluate(args: argparse.Namespace) -> int:
    from ..detection.training.metrics import format_table
    from ..detection.training.evaluate import evaluate_checkpoint

    warn_renamed_flags(args)
    quiet = args.format == "json"
    common = dict(dataset=args.dataset, data_dir=args.data_dir, split=args.split, batch_size=args.batch_size,
                  nms_thresh=args.nms_thresh, out=args.out, skip_bad_labels=args.skip_bad_data, force=args.force,
                  count_difficult=args.count_difficult, log=(lambda _: None) if quiet else print)
    if str(args.checkpoint).lower().endswith(".onnx"):  # an exported YOLOv3 through ONNX Runtime
        from ..detection.onnx_eval import evaluate_onnx_detector

        metrics = evaluate_onnx_detector(args.checkpoint, score_thresh=0.01 if args.score_thresh is None
                                         else args.score_thresh, **common)
    else:
        metrics = evaluate_checkpoint(args.checkpoint, device=args.device, score_thresh=args.score_thresh, **common)
    if quiet:
        print(json.dumps({"checkpoint": args.checkpoint, "split": args.split, "summary": metrics.summary,
                          "per_class_ap": metrics.per_class_ap, "notes": metrics.notes()}, indent=2))
    else:
        print(format_table(metrics))
    return 0


def _register_make_data(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("make-data", help="write the built-in photodigits set to disk in YOLO format")
    p.add_argument("out", help="a new (or empty) folder")
    p.add_argument("--image-size", type=int, help="default 128")
    p.add_argument("--num-train", type=int, help="default 1000")
    p.add_argument("--num-val", type=int, help="default 200")
    p.add_argument("--seed", type=int, help="default 0")
    p.set_defaults(func=run_make_data)


def run_make_data(args: argparse.Namespace) -> int:
    from ..detection.data.photodigits import make_data

    out = make_data(args.out, image_size=args.image_size, num_train=args.num_train, num_val=args.num_val,
                    seed=args.seed)
    print(f"wrote {out} (YOLO layout: images/{{train,val}}, labels/{{train,val}}, data.yaml); "
          f"train on it with: backbonekit detect train --dataset yolo:{out}")
    return 0

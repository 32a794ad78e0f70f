"""``backbonekit train``, ``evaluate`` and ``predict``: parse, call the Python API (:mod:`backbonekit.train`), print."""

from __future__ import annotations

import argparse
import json

from ..train.config import AMP_MODES, DEVICES, OPTIMIZERS, SCHEDULES, TrainConfig
from ._config import add_config_flags, resolve_from_flags

FLAG_HELP = {
    "model": "a registered model name (backbonekit models)",
    "dataset": "digits, cifar10, cifar100, fake, fake:N or imagefolder:PATH",
    "data_dir": "where cifar10/cifar100 archives are (or are downloaded to)",
    "download": "download CIFAR when absent (--no-download: fail with the list of expected files)",
    "epochs": "number of epochs",
    "time": "wall-clock budget (90s, 10m, 1.5h, or minutes): after each epoch the total epochs and the "
            "learning-rate schedule are fitted to the time left, and training stops when it is spent",
    "batch_size": "images per step per process",
    "lr": "peak learning rate",
    "optimizer": "/".join(OPTIMIZERS),
    "momentum": "SGD momentum",
    "nesterov": "Nesterov momentum for SGD",
    "weight_decay": "weight decay on conv/linear weights (not on BatchNorm or biases)",
    "schedule": "/".join(SCHEDULES) + " (per step; cosine with linear warm-up)",
    "warmup_epochs": "warm-up length of the cosine schedule",
    "label_smoothing": "cross-entropy label smoothing",
    "grad_clip": "clip the gradient norm to this value (0: off)",
    "image_size": "train/test image size (default: 32 for digits/cifar/fake, 224 for imagefolder)",
    "crop_padding": "random-crop padding in pixels (default: cifar 4, digits 2, imagefolder size/8)",
    "hflip": "random horizontal flips (default: on, off for digits)",
    "device": "/".join(DEVICES),
    "amp": "/".join(AMP_MODES) + ": mixed precision, CUDA only (auto: bf16 where supported)",
    "channels_last": "channels_last memory format on CUDA",
    "deterministic": "deterministic algorithms (slower on CUDA)",
    "seed": "random seed (weights, order, augmentation)",
    "workers": "DataLoader workers for imagefolder data",
    "out": "run folder (default runs/MODEL-DATASET[-N])",
    "resume": "continue the run in this folder (or from this last.pt) with its saved config; options that change "
              "what it computes are refused, --epochs may extend it (docs/training.md)",
    "pretrained": "initialise from a weights file, URL or published tag such as resnet50.tv2_in1k (fine-tuning; "
                  "the classifier is re-initialised when the class count differs)",
    "zero_init_residual": "zero the last BatchNorm of each residual branch when training from scratch",
    "sync_bn": "SyncBatchNorm across processes (distributed runs)",
    "nproc": "launch N processes on this machine through torchrun's API (DistributedDataParallel); "
             "under torchrun: its process count",
    "skip_bad_images": "imagefolder: leave out files that are not readable images (default: refuse the folder)",
}


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    _register_train(subparsers)
    _register_evaluate(subparsers)
    _register_predict(subparsers)


def _register_train(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train a model; writes a run folder with checkpoints, metrics and a report",
        description="Train a model. Defaults (darknet53 on digits) run offline in minutes on a CPU. Every option "
                    "can also be set in a YAML/JSON file given with --config; command-line flags win.",
        argument_default=argparse.SUPPRESS)
    add_config_flags(p, TrainConfig, FLAG_HELP, {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "device": DEVICES,
                                                  "amp": AMP_MODES})
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from ..engine import dist
    from ..train.config import read_config_file, resolve_config

    cfg, given = resolve_from_flags(args, TrainConfig, read_config_file, resolve_config)
    if cfg.nproc > 1 and not dist.launched_by_torchrun():
        from ..train.launch import launch_local

        return launch_local(cfg, given=given)

    from ..train.trainer import train

    try:
        train(cfg, given=given)
    finally:
        dist.cleanup()
    return 0


def _register_evaluate(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("evaluate", help="the training report (accuracy, classification report, "
                                               "confusion matrix, predictions) for a saved model")
    p.add_argument("checkpoint", help="best.pt or last.pt written by backbonekit train, or an exported .onnx "
                                      "file (fp32 or int8; run by ONNX Runtime)")
    p.add_argument("--dataset", help="dataset to evaluate on (default: the one it was trained on)")
    p.add_argument("--split", choices=("test", "train"), default="test")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", help="report folder (default: CHECKPOINT_FOLDER/eval-DATASET-SPLIT); never a run folder")
    p.add_argument("--force", action="store_true", help="write into an --out folder that holds other files than "
                                                         "an earlier evaluation report")
    p.add_argument("--no-download", dest="download", action="store_false")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from ..train.trainer import evaluate_checkpoint

    quiet = args.format == "json"
    common = dict(dataset=args.dataset, split=args.split, data_dir=args.data_dir, batch_size=args.batch_size,
                  out=args.out, download=args.download, force=args.force, log=(lambda _: None) if quiet else print)
    if str(args.checkpoint).lower().endswith(".onnx"):  # fp32 or int8, run by ONNX Runtime on the CPU
        from ..train.onnx_eval import evaluate_onnx

        ev = evaluate_onnx(args.checkpoint, **common)
    else:
        ev = evaluate_checkpoint(args.checkpoint, device=args.device, **common)
    if quiet:
        print(json.dumps({"checkpoint": args.checkpoint, "split": args.split, "count": ev.count, "loss": ev.loss,
                          **ev.accuracies()}, indent=2))
    return 0


def _register_predict(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("predict", help="class names and probabilities for image files")
    p.add_argument("checkpoint", help="best.pt or last.pt written by backbonekit train")
    p.add_argument("images", nargs="+", help="PNG/JPEG files (resized the way the model was trained)")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    from ..train.trainer import predict

    if args.topk < 1:
        raise ValueError(f"--topk must be >= 1, found {args.topk}")
    results = predict(args.checkpoint, args.images, topk=args.topk, device=args.device)
    if args.format == "json":
        print(json.dumps([{"image": str(path), "top": [{"class": c, "prob": p} for c, p in top]}
                          for path, top in zip(args.images, results)], indent=2))
        return 0
    for path, top in zip(args.images, results):
        print(f"{path}: " + ", ".join(f"{c} {100 * p:.1f}%" for c, p in top))
    return 0

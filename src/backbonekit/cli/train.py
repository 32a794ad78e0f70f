"""``backbonekit train``, ``evaluate`` and ``predict``: parse, call the Python API (:mod:`backbonekit.train`), print."""

from __future__ import annotations

import argparse
import json

from ..engine.config import AMP_MODES, DEVICES, RUN_CHOICES
from ..train.config import SCHEDULES, TrainConfig
from ._config import RUN_FLAG_HELP, add_evaluate_parser, add_train_parser, run_training

FLAG_HELP = {
    **RUN_FLAG_HELP,
    "model": "a registered model name (backbonekit models)",
    "dataset": "digits, cifar10, cifar100, fake, fake:N or imagefolder:PATH",
    "data_dir": "where cifar10/cifar100 archives are (or are downloaded to)",
    "download": "download CIFAR when absent (--no-download: fail with the list of expected files)",
    "lr": "peak learning rate",
    "nesterov": "Nesterov momentum for SGD",
    "weight_decay": "weight decay on conv/linear weights (not on BatchNorm or biases)",
    "schedule": "/".join(SCHEDULES) + " (per step; cosine with linear warm-up)",
    "warmup_epochs": "warm-up length of the cosine schedule",
    "label_smoothing": "cross-entropy label smoothing",
    "input_size": "train/test image size (default: 32 for digits/cifar/fake, 224 for imagefolder)",
    "crop_padding": "random-crop padding in pixels (default: cifar 4, digits 2, imagefolder size/8)",
    "hflip": "random horizontal flips (default: on, off for digits)",
    "amp": "/".join(AMP_MODES) + ": mixed precision, CUDA only (auto: bf16 where supported)",
    "channels_last": "channels_last memory format on CUDA",
    "deterministic": "deterministic algorithms (slower on CUDA)",
    "workers": "DataLoader workers for imagefolder data",
    "resume": "continue the run in this folder (or from this last.pt) with its saved config; options that change "
              "what it computes are refused, --epochs may extend it (docs/training.md)",
    "pretrained": "initialise from a weights file, URL or published tag such as resnet50.tv2_in1k (fine-tuning; "
                  "the classifier is re-initialised when the class count differs)",
    "zero_init_residual": "zero the last BatchNorm of each residual branch when training from scratch",
    "sync_bn": "SyncBatchNorm across processes (distributed runs)",
    "nproc": "launch N processes on this machine through torchrun's API (DistributedDataParallel); "
             "under torchrun: its process count",
    "skip_bad_data": "imagefolder: leave out files that are not readable images (default: refuse the folder)",
}


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    _register_train(subparsers)
    _register_evaluate(subparsers)
    _register_predict(subparsers)


def _register_train(subparsers: argparse._SubParsersAction) -> None:
    add_train_parser(subparsers, TrainConfig, FLAG_HELP, {**RUN_CHOICES, "schedule": SCHEDULES}, run_train,
                     help="train a model; writes a run folder with checkpoints, metrics and a report",
                     description="Train a model. Defaults (darknet53 on digits) run offline in minutes on a CPU. "
                                 "Every option can also be set in a YAML/JSON file given with --config; "
                                 "command-line flags win.")


def run_train(args: argparse.Namespace) -> int:
    from ..train.config import resolve_config
    from ..train.launch import launch_local
    from ..train.trainer import train

    return run_training(args, TrainConfig, resolve_config, train, launch_local)


def _register_evaluate(subparsers: argparse._SubParsersAction) -> None:
    p = add_evaluate_parser(subparsers, run_evaluate, help="the training report (accuracy, classification report, "
                                                           "confusion matrix, predictions) for a saved model",
                            checkpoint_help="best.pt or last.pt written by backbonekit train, or an exported .onnx "
                                            "file (fp32 or int8; run by ONNX Runtime)", batch_size=256,
                            out_help="report folder (default: CHECKPOINT_FOLDER/eval-DATASET-SPLIT); never a run "
                                     "folder")
    p.add_argument("--split", choices=("test", "train"), default="test")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--no-download", dest="download", action="store_false")


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

"""``backbonekit detect predict | export | convert``: thin commands over :mod:`backbonekit.detection`.

``predict MODEL_OR_RUN IMAGE... --out DIR``: MODEL_OR_RUN is a weights file (``yolov3.weights``, a
detector ``.pt``), a run folder (its ``best.pt``), or a registered detector name with ``--weights``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import detect_train
from .export import add_int8_arguments, check_int8_arguments, export_int8_file

DEFAULT_DETECTOR = "yolov3"


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("detect", help="object detectors (YOLOv3): train, evaluate, predict, export, convert, make-data")
    commands = parser.add_subparsers(dest="detect_command", metavar="COMMAND")
    parser.set_defaults(func=run, detect_parser=parser)
    detect_train.register(commands)  # train, evaluate, make-data
    _accept_onnx_in_evaluate(commands.choices["evaluate"])

    p = commands.add_parser("predict", help="draw boxes on images and write COCO-format detections.json")
    p.add_argument("model", metavar="MODEL_OR_RUN", help="weights file, run folder, or detector name (with --weights)")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--out", required=True, help="folder for the annotated images and detections.json")
    p.add_argument("--weights", help="weights file when MODEL_OR_RUN is a detector name")
    p.add_argument("--names", help="class names file, one per line (default: the checkpoint's; COCO's for 80)")
    p.add_argument("--input-size", type=int, help="letterbox size, a multiple of 32 (default 416)")
    p.add_argument("--score-thresh", type=float, default=0.25)
    p.add_argument("--nms-thresh", type=float, default=0.45)
    p.add_argument("--max-detections", type=int, default=100)
    p.set_defaults(func=run_predict)

    e = commands.add_parser("export", help="ONNX with decoding in the graph (and NMS with --nms)")
    e.add_argument("model", metavar="MODEL_OR_RUN")
    e.add_argument("-o", "--output", required=True)
    e.add_argument("--weights")
    e.add_argument("--input-size", type=int)
    e.add_argument("--batch-size", type=int, default=1)
    e.add_argument("--dynamic-batch", action="store_true")
    e.add_argument("--nms", action="store_true", help="append ONNX NonMaxSuppression (class-aware)")
    e.add_argument("--score-thresh", type=float, default=0.25)
    e.add_argument("--nms-thresh", type=float, default=0.45)
    e.add_argument("--max-detections", type=int, default=100, help="per class and image (ONNX NMS)")
    add_int8_arguments(e)
    e.set_defaults(func=run_export)

    c = commands.add_parser("convert", help="detector weights between .weights, .pt and .safetensors")
    c.add_argument("src")
    c.add_argument("dst", help="output; the format follows the name (.weights, .pt/.pth, .safetensors)")
    c.set_defaults(func=run_convert)


def run(args: argparse.Namespace) -> int:
    """``backbonekit detect`` with no command: list the commands."""
    args.detect_parser.print_help()
    return 2


def load_detector(spec: str, weights: str | None = None, input_size: int | None = None):
    """A detector from a weights file, a run folder (``best.pt``) or a registered name (+ ``weights``)."""
    from .. import create_model, list_models

    path = Path(spec)
    options = {"input_size": input_size} if input_size else {}
    if path.is_dir():
        path = path / "best.pt"
        if not path.is_file():
            raise OSError(f"run folder {spec} has no best.pt: expected a finished `backbonekit detect train` run")
    if path.is_file():
        return create_model(DEFAULT_DETECTOR, pretrained=path, **options)
    if spec not in list_models(task="detection"):
        raise KeyError(f"expected a weights file, a run folder or a detector ({', '.join(list_models(task='detection'))}),"
                       f" found {spec!r}")
    return create_model(spec, pretrained=weights, **options)


def run_predict(args: argparse.Namespace) -> int:
    from ..detection.predict import predict_files

    model = load_detector(args.model, args.weights, args.input_size)
    out = predict_files(model, args.images, args.out, names=args.names, score_thresh=args.score_thresh,
                        nms_thresh=args.nms_thresh, detections_per_img=args.max_detections)
    print(f"wrote {len(args.images)} annotated images and {out}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    import tempfile

    from ..detection.export import export_yolov3_onnx

    int8 = check_int8_arguments(args)
    model = load_detector(args.model, args.weights, args.input_size)
    classes, dataset = _trained_classes(args.model)
    with tempfile.TemporaryDirectory(prefix="backbonekit-detect-export-") as tmp:
        path = export_yolov3_onnx(model, Path(tmp) / "fp32.onnx" if int8 else args.output,
                                  batch_size=args.batch_size, dynamic_batch=args.dynamic_batch, nms=args.nms,
                                  score_thresh=args.score_thresh, nms_thresh=args.nms_thresh,
                                  max_detections=args.max_detections, classes=classes, dataset=dataset)
        if int8:  # the decoding (and NMS) stay fp32; calibration images letterboxed as detect() does
            return export_int8_file(path, args)
    print(f"wrote {path} (onnx, decoding{' + NMS' if args.nms else ''}, {path.stat().st_size / 2**20:.1f} MiB)")
    return 0


def _trained_classes(spec: str) -> tuple[list[str] | None, str | None]:
    """Class names and dataset of a ``detect train`` run folder or checkpoint (None, None for others)."""
    from ..checkpoint import load_file

    path = Path(spec) / "best.pt" if Path(spec).is_dir() else Path(spec)
    if path.suffix.lower() not in (".pt", ".pth") or not path.is_file():
        return None, None
    ckpt = load_file(path)
    if not isinstance(ckpt, dict) or ckpt.get("task") != "detection":
        return None, None
    return list(ckpt.get("classes") or []) or None, (ckpt.get("config") or {}).get("dataset")


def _accept_onnx_in_evaluate(parser: argparse.ArgumentParser) -> None:
    """``detect evaluate FILE.onnx``: an exported YOLOv3 (fp32 or int8) through ONNX Runtime."""
    for action in parser._actions:
        if action.dest == "checkpoint":
            action.help = "best.pt/last.pt written by backbonekit detect train, or an exported .onnx (fp32 or int8)"
    parser.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    import json

    if not str(args.checkpoint).lower().endswith(".onnx"):
        return detect_train.run_evaluate(args)
    from ..detection.metrics import format_table
    from ..detection.onnx_eval import evaluate_onnx_detector

    quiet = args.format == "json"
    metrics = evaluate_onnx_detector(args.checkpoint, dataset=args.dataset, data_dir=args.data_dir,
                                     split=args.split, batch_size=args.batch_size,
                                     score_thresh=0.01 if args.score_thresh is None else args.score_thresh,
                                     nms_thresh=args.nms_thresh, out=args.out, skip_bad_labels=args.skip_bad_labels,
                                     log=(lambda _: None) if quiet else print)
    print(json.dumps({"checkpoint": args.checkpoint, "split": args.split, "summary": metrics.summary,
                      "per_class_ap": metrics.per_class_ap}, indent=2) if quiet else format_table(metrics))
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from ..detection.yolov3_weights import convert_detector_weights

    print(f"wrote {convert_detector_weights(args.src, args.dst)}")
    return 0

"""``backbonekit export``: a model as ONNX or TorchScript, BatchNorm folded (:func:`backbonekit.export.export`)."""

from __future__ import annotations

import argparse

from ..export import DEFAULT_OPSET, FORMATS


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="write a model as ONNX or TorchScript (BatchNorm folded)")
    p.add_argument("model", help="a registered model name (see `backbonekit models`)")
    p.add_argument("--format", choices=FORMATS, default="onnx")
    p.add_argument("--input-size", type=int, default=416, help="input height and width (default 416)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--dynamic-batch", action="store_true", help="ONNX: let the batch dimension vary")
    p.add_argument("--weights", help="weights file to load (backbonekit checkpoint, timm or torchvision)")
    p.add_argument("--num-classes", type=int, help="classifier outputs (default: the weights file's, else 1000)")
    p.add_argument("--features-only", action="store_true", help="export the multi-scale feature extractor")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset, 18 up to the newest the installed onnx knows (default {DEFAULT_OPSET})")
    p.add_argument("-o", "--output", required=True, help="file to write")
    p.add_argument("--nms", action="store_true",
                   help="detectors: append ONNX NonMaxSuppression after the decoding (class-aware)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export import export

    if args.model in _detectors():
        return _export_detector(args)

    result = export(args.model, args.output, format=args.format, weights=args.weights, num_classes=args.num_classes,
                    features_only=args.features_only, input_size=args.input_size, batch_size=args.batch_size,
                    dynamic_batch=args.dynamic_batch, opset=args.opset)
    shape = "x".join(map(str, result.input_shape))
    print(f"wrote {result.path} ({result.format}, {result.model}, input {shape}, {result.nbytes / 2**20:.1f} MiB)")
    return 0


def _detectors() -> list[str]:
    from .. import list_models

    return list_models(task="detection")


def _export_detector(args: argparse.Namespace) -> int:
    """``backbonekit export yolov3``: the same as ``backbonekit detect export`` (decoding in the graph)."""
    from .detect import run_export

    if args.format != "onnx" or args.features_only:
        raise ValueError(f"detectors export as ONNX with their decoding: expected --format onnx without "
                         f"--features-only, found --format {args.format}{' --features-only' if args.features_only else ''}")
    detect_args = argparse.Namespace(model=args.model, output=args.output, weights=args.weights,
                                     input_size=args.input_size, batch_size=args.batch_size,
                                     dynamic_batch=args.dynamic_batch, nms=args.nms, score_thresh=0.25,
                                     nms_thresh=0.45, max_detections=100)
    return run_export(detect_args)

"""``backbonekit convert``: weights between Darknet .weights, timm/torchvision state_dicts,
backbonekit checkpoints and .safetensors (:func:`backbonekit.weights.convert_weights`)."""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from .._text import first_line


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    from ..weights import OUTPUT_FORMATS

    p = subparsers.add_parser(
        "convert", help="convert weights between Darknet .weights, timm, torchvision, backbonekit and safetensors",
        description="Convert a weights file. The source kind is read from its content; the output format "
                    "from DST's name (.weights/.conv.N: darknet, .safetensors, .pth/.pt/.ckpt: backbonekit) "
                    "unless --to is given. DST may not be SRC, and an existing DST that holds more than the "
                    "output would (a training checkpoint's config and history, a classifier) is kept unless "
                    "--force is given.")
    p.add_argument("src", help="weights file to read")
    p.add_argument("dst", help="file to write (replaced atomically)")
    p.add_argument("--model", default=None, help="model name (default: recorded in SRC or inferred from its keys)")
    p.add_argument("--to", choices=OUTPUT_FORMATS, default=None, help="output format (default: from DST's name)")
    p.add_argument("--backbone-only", action="store_true",
                   help="drop the classifier (Darknet output: like darknet53.conv.74)")
    p.add_argument("--force", action="store_true",
                   help="replace DST even when it holds what the output lacks (training record, classifier)")
    p.add_argument("--format", choices=("text", "json"), default="text", help="how to print the summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..detection.weights import convert_detector_weights, is_detector_file
    from ..weights import convert_weights

    if args.model in (None, "yolov3") and not args.backbone_only and is_detector_file(args.src):
        print(f"{args.src} (yolov3) -> {convert_detector_weights(args.src, args.dst, force=args.force)}")
        return 0

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = convert_weights(args.src, args.dst, model=args.model, to=args.to,
                                 backbone_only=args.backbone_only, force=args.force)
    for warning in caught:
        print(f"backbonekit convert: warning: {first_line(str(warning.message), limit=None, lines=None)}", file=sys.stderr)
    if args.format == "json":
        print(json.dumps({"src": str(result.src), "dst": str(result.dst), "src_format": result.src_format,
                          "dst_format": result.dst_format, "model": result.model,
                          "model_kwargs": result.model_kwargs, "tensors": result.num_tensors,
                          "warnings": result.notes}, indent=2))
    else:
        kwargs = ", ".join(f"{k}={v}" for k, v in result.model_kwargs.items())
        print(f"{result.src} ({result.src_format}) -> {result.dst} ({result.dst_format}): {result.model}"
              f"{f' ({kwargs})' if kwargs else ''}, {result.num_tensors} tensors")
    return 0

"""``backbonekit export``: a model as ONNX or TorchScript, BatchNorm folded (:func:`backbonekit.export.export`)."""

from __future__ import annotations

import argparse

from ..export import DEFAULT_OPSET, FORMATS

DEFAULT_INPUT_SIZE = 416


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="write a model as ONNX or TorchScript (BatchNorm folded)")
    p.add_argument("model", metavar="MODEL|RUN", help="a registered model name (see `backbonekit models`), a "
                   "classification run folder or its best.pt/last.pt")
    p.add_argument("--format", choices=FORMATS, default="onnx")
    p.add_argument("--input-size", type=int, help="input height and width (default 416; detectors: their own)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--dynamic-batch", action="store_true", help="ONNX: let the batch dimension vary")
    p.add_argument("--weights", help="weights to load: a file (backbonekit checkpoint, timm or torchvision), a URL, "
                                     "or a published tag (backbonekit weights)")
    p.add_argument("--num-classes", type=int, help="classifier outputs (default: the weights file's, else 1000)")
    p.add_argument("--features-only", action="store_true", help="export the multi-scale feature extractor")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset, 18 up to the newest the installed onnx knows (default {DEFAULT_OPSET})")
    p.add_argument("-o", "--output", required=True, help="file to write")
    p.add_argument("--force", action="store_true", help="replace an existing file that backbonekit did not export "
                                                         "(never the checkpoint or weights read)")
    p.add_argument("--nms", action="store_true",
                   help="detectors: append ONNX NonMaxSuppression after the decoding (class-aware)")
    add_int8_arguments(p)
    p.set_defaults(func=run)


def add_int8_arguments(p: argparse.ArgumentParser) -> None:
    """``--int8 --calibrate DATASET [--calib-images N]`` (``backbonekit export`` and ``detect export``)."""
    p.add_argument("--int8", action="store_true", help="ONNX: post-training static int8 (ONNX Runtime, QDQ)")
    p.add_argument("--calibrate", metavar="DATASET", help="with --int8: dataset whose train split calibrates "
                   "(prepared as evaluation prepares it)")
    p.add_argument("--calib-images", type=int, default=256, metavar="N", help="calibration images (default 256)")
    p.add_argument("--no-reduce-range", dest="reduce_range", action="store_false", default=None,
                   help="with --int8: 8-bit weights instead of 7-bit ones, for files that run only on CPUs with VNNI "
                        "or on ARM (7 bits, the default, do not saturate on x86 CPUs without VNNI)")


def check_int8_arguments(args: argparse.Namespace) -> bool:
    """Whether an int8 export was asked for; one line for --int8 without what it needs, or the reverse."""
    if not args.int8:
        if args.calibrate:
            raise ValueError(f"--calibrate {args.calibrate} is for int8 export: expected --int8 with it")
        if getattr(args, "reduce_range", None) is False:
            raise ValueError("--no-reduce-range is for int8 export: expected --int8 with it")
        return False
    if not args.calibrate:
        raise ValueError("--int8 needs calibration images: expected --calibrate DATASET (e.g. digits, photodigits)")
    if getattr(args, "format", "onnx") != "onnx":
        raise ValueError(f"--int8 writes ONNX: expected --format onnx, found --format {args.format}")
    from ..quantize import check_calib_images

    check_calib_images(args.calib_images)  # before any model is built or exported
    return True


def export_int8_file(model, args: argparse.Namespace, **options) -> int:
    """Quantize ``model`` (a module, a checkpoint or an fp32 ONNX file) to ``args.output``; print the report."""
    from ..quantize import export_int8

    report = export_int8(model, args.output, calibrate=args.calibrate, calib_images=args.calib_images,
                         force=getattr(args, "force", False),
                         reduce_range=getattr(args, "reduce_range", None) is not False, **options)
    print(report.summary())
    return 0


def run(args: argparse.Namespace) -> int:
    from ..export import export

    if args.model in _detectors():
        return _export_detector(args)
    int8 = check_int8_arguments(args)  # before anything is read or built
    run_file = _run_checkpoint(args.model)
    if int8:
        return _export_int8(args, run_file)
    if run_file is not None:
        return _export_run(run_file, args)

    result = export(args.model, args.output, format=args.format, weights=args.weights, num_classes=args.num_classes,
                    features_only=args.features_only, input_size=args.input_size or DEFAULT_INPUT_SIZE,
                    batch_size=args.batch_size, dynamic_batch=args.dynamic_batch, opset=args.opset, force=args.force)
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
                                     nms_thresh=0.45, max_detections=100, int8=args.int8, calibrate=args.calibrate,
                                     calib_images=args.calib_images, force=args.force, reduce_range=args.reduce_range)
    return run_export(detect_args)


def _run_checkpoint(spec: str):
    """The best.pt of a run folder, or the checkpoint file ``spec`` names; None for a registered model name."""
    from .. import list_models
    from ..engine.runs import best_checkpoint, refuse_missing_checkpoint

    source = best_checkpoint(spec)
    if source.is_file():
        return source
    refuse_missing_checkpoint(spec, list_models(task=None))
    return None


def _export_run(checkpoint, args: argparse.Namespace) -> int:
    """A classification run's checkpoint as fp32 ONNX with its own preprocessing in the file's metadata."""
    from ..onnx_meta import export_onnx

    if args.format != "onnx" or args.features_only or args.weights:
        raise ValueError(f"a run folder or checkpoint exports as an ONNX classifier with its own weights: expected "
                         f"--format onnx without --features-only or --weights, found {args.model} with those")
    path = export_onnx(checkpoint, args.output, batch_size=args.batch_size, dynamic_batch=args.dynamic_batch,
                       opset=args.opset, force=args.force)
    print(f"wrote {path} (onnx, fp32, {args.model}, preprocessing in its metadata, "
          f"{path.stat().st_size / 2**20:.1f} MiB)")
    return 0


def _export_int8(args: argparse.Namespace, run_file) -> int:
    """``--int8``: a run folder or checkpoint (``run_file``) keeps its own preprocessing; a registered name
    (with ``--weights``) is calibrated through the calibration dataset's mean/std at ``--input-size``."""
    from ..export import build_for_export, export_destination

    if args.features_only:
        raise ValueError("--int8 quantizes classifiers: expected no --features-only")
    if run_file is not None:
        return export_int8_file(run_file, args)
    export_destination(args.output, inputs=[args.weights], force=args.force)  # the model below is no file
    model = build_for_export(args.model, weights=args.weights, num_classes=args.num_classes)
    return export_int8_file(model.eval(), args, input_size=args.input_size or DEFAULT_INPUT_SIZE)

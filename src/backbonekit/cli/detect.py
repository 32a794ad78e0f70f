"""``backbonekit detect predict | export | convert``: thin commands over :mod:`backbonekit.detection`.

``predict MODEL_OR_RUN IMAGE... --out DIR``: MODEL_OR_RUN is a weights file (``yolov3.weights``, a
``detect train`` checkpoint of any detector, a torchvision Faster R-CNN / RetinaNet / FCOS state_dict), a run
folder (its ``best.pt``), a published tag (``yolov3.darknet_coco``), or a registered detector name: with
``--weights`` (a file, URL or tag), else its default published weights (fetched once into torch's hub cache).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import detect_compare, detect_train
from .export import add_int8_arguments, check_int8_arguments, export_int8_file

DEFAULT_DETECTOR = "yolov3"


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("detect", help="object detectors (YOLOv3, Faster R-CNN, RetinaNet, FCOS): train, evaluate, compare, predict, export, convert, make-data")
    commands = parser.add_subparsers(dest="detect_command", metavar="COMMAND")
    parser.set_defaults(func=run, detect_parser=parser)
    detect_train.register(commands)  # train, evaluate, make-data
    detect_compare.register(commands)  # compare

    p = commands.add_parser("predict", help="draw boxes on images and write COCO-format detections.json")
    p.add_argument("model", metavar="MODEL_OR_RUN", help="weights file, run folder, published tag, or detector name "
                                                          "(its default published weights unless --weights)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or folders of them")
    p.add_argument("--out", required=True, help="folder for the annotated images, detections.json and images.json")
    p.add_argument("--force", action="store_true",
                   help="replace files in --out that detect predict did not write there (never an input image)")
    p.add_argument("--weights", help="weights file, URL or published tag (backbonekit weights) when MODEL_OR_RUN "
                                     "is a detector name")
    p.add_argument("--names", help="class names file, one per line (default: the checkpoint's; COCO's for 80)")
    p.add_argument("--input-size", type=int, help="YOLOv3's letterbox size (a multiple of 32) or the FPN "
                                                  "detectors' min_size = max_size (default: the model's)")
    p.add_argument("--score-thresh", type=float, default=0.25)
    p.add_argument("--nms-thresh", type=float, default=0.45)
    p.add_argument("--max-detections", type=int, default=100)
    p.set_defaults(func=run_predict)

    e = commands.add_parser("export", help="ONNX: YOLOv3 with decoding in the graph (and NMS with --nms); "
                                           "Faster R-CNN / RetinaNet / FCOS whole, NMS included, batch 1")
    e.add_argument("model", metavar="MODEL_OR_RUN")
    e.add_argument("-o", "--output", required=True)
    e.add_argument("--weights", help="weights file, URL or published tag (backbonekit weights)")
    e.add_argument("--input-size", type=int)
    e.add_argument("--batch-size", type=int, default=1)
    e.add_argument("--dynamic-batch", action="store_true")
    e.add_argument("--nms", action="store_true", help="append ONNX NonMaxSuppression (class-aware)")
    e.add_argument("--score-thresh", type=float, default=0.25)
    e.add_argument("--nms-thresh", type=float, default=0.45)
    e.add_argument("--max-detections", type=int, default=100, help="per image (ONNX NMS)")
    e.add_argument("--force", action="store_true", help="replace an existing file that backbonekit did not export "
                                                         "(never the checkpoint or weights read)")
    add_int8_arguments(e)
    e.set_defaults(func=run_export)

    c = commands.add_parser("convert", help="detector weights between .weights, .pt and .safetensors")
    c.add_argument("src")
    c.add_argument("dst", help="output; the format follows the name (.weights, .pt/.pth, .safetensors)")
    c.add_argument("--force", action="store_true", help="replace DST even when it holds what the output lacks (a "
                                                         "training record) or is not a weights file (never SRC)")
    c.set_defaults(func=run_convert)


def run(args: argparse.Namespace) -> int:
    """``backbonekit detect`` with no command: list the commands."""
    args.detect_parser.print_help()
    return 2


def run_predict(args: argparse.Namespace) -> int:
    from ..detection.training.config import check_postprocess
    from ..detection.loading import load_detector
    from ..detection.predict import image_inputs, predict_files

    check_postprocess(args.score_thresh, args.nms_thresh, args.max_detections)  # before the model is read
    model, _ = load_detector(args.model, weights=args.weights, input_size=args.input_size, published=True)
    out = predict_files(model, args.images, args.out, names=args.names, score_thresh=args.score_thresh,
                        nms_thresh=args.nms_thresh, detections_per_img=args.max_detections, force=args.force)
    print(f"wrote {len(image_inputs(args.images, args.out))} annotated images, {out} and {out.parent / 'images.json'} "
          f"(each image id's file)")
    return 0


def run_export(args: argparse.Namespace) -> int:
    import tempfile

    from ..detection.export import export_yolov3_onnx
    from ..detection.fpn_export import export_fpn_onnx, fpn_kind
    from ..detection.loading import load_detector
    from ..export import export_destination
    from ..engine.runs import best_checkpoint

    int8 = check_int8_arguments(args)
    export_destination(args.output, inputs=[best_checkpoint(args.model, "backbonekit detect train"), args.weights],
                       force=args.force)  # before anything is read or built
    model, ckpt = load_detector(args.model, weights=args.weights, input_size=args.input_size)
    kind = fpn_kind(model)
    if kind is not None:
        if args.dynamic_batch:
            raise ValueError(f"{kind} exports with batch size 1 only, found --dynamic-batch")
        path = export_fpn_onnx(model, args.output, input_size=args.input_size, batch_size=args.batch_size,
                               int8=int8, score_thresh=args.score_thresh,
                               nms_thresh=args.nms_thresh, max_detections=args.max_detections)
        print(f"wrote {path} (onnx, {kind} with resize, post-processing and NMS, batch 1, "
              f"{path.stat().st_size / 2**20:.1f} MiB)")
        return 0
    classes, dataset = list(ckpt.get("classes") or []) or None, (ckpt.get("config") or {}).get("dataset")
    with tempfile.TemporaryDirectory(prefix="backbonekit-detect-export-") as tmp:
        path = export_yolov3_onnx(model, Path(tmp) / "fp32.onnx" if int8 else args.output,
                                  batch_size=args.batch_size, dynamic_batch=args.dynamic_batch, nms=args.nms,
                                  score_thresh=args.score_thresh, nms_thresh=args.nms_thresh,
                                  max_detections=args.max_detections, classes=classes, dataset=dataset)
        if int8:  # the decoding (and NMS) stay fp32; calibration images letterboxed as detect() does
            return export_int8_file(path, args)
    print(f"wrote {path} (onnx, decoding{' + NMS' if args.nms else ''}, {path.stat().st_size / 2**20:.1f} MiB)")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from ..detection.weights import convert_detector_weights

    print(f"wrote {convert_detector_weights(args.src, args.dst, force=args.force)}")
    return 0

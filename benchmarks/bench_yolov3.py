"""YOLOv3-416 end to end on the CPU (letterbox, network, decode, NMS) in images/s, side by side in one run:

* ``reference``: a cfg-driven YOLOv3 (tests/yolo_cfg_reference.py: Darknet's cfg text, layers run one
  by one, Darknet's decoding) in eager PyTorch;
* ``eager``: backbonekit's YOLOv3, eval mode;
* ``optimized``: :func:`backbonekit.optimize_for_inference` (BatchNorm folded, channels_last);
* ``onnxruntime``: the ONNX export (decoding in the graph) in ONNX Runtime.

All four load the same Darknet ``.weights`` file (``--weights``, else random weights with random
BatchNorm statistics written to a temporary file) and share the letterbox and postprocess code
(score > ``--score-thresh``, class-aware ``batched_nms`` 0.45, 100 per image), so their detections
are compared for equality. Candidates are timed in interleaved rounds. The share of time in
letterbox, network, decode and NMS is measured on the eager model.

Random weights: with unbiased random output convs every one of the 10,647 x 80 candidates scores
about 0.25 and NMS would be timed on tens of thousands of boxes. As a trained model scores most
cells near zero, each random output conv channel is standardised over the cells of the benchmark's
images (zero mean, unit spread), the objectness channels shifted by ``OBJ_BIAS`` and the class
channels by the shift at which the busiest image has about ``CANDIDATES`` scores above
``--score-thresh`` (0.05), so no image reaches the 100-detection cap (checked and printed).

    PYTHONPATH=src python benchmarks/bench_yolov3.py --write              # 416, 8 images, 5 rounds
    PYTHONPATH=src python benchmarks/bench_yolov3.py --size 64 --images 2 --rounds 1   # smoke test
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import os

import torch

import backbonekit as bk
from backbonekit.darknet_yolov3 import write_yolov3_weights
from backbonekit.detection.data.transforms import letterbox_images

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import CpuWatch, load_note, write_section  # noqa: E402

OBJ_BIAS = -4.0  # objectness logits: zero mean, unit spread over the cells, shifted by this (about 14% reach 0.05)
CANDIDATES = 30  # class logits are shifted so that the busiest image has about this many scores above the threshold
MAX_DETECTIONS = 100


def _reference_module():
    spec = importlib.util.spec_from_file_location("yolo_cfg_reference", ROOT / "tests" / "yolo_cfg_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _random_weights(path: Path, classes: int, size: int, images: list[torch.Tensor], thresh: float) -> None:
    """Random weights and BatchNorm statistics; output convs standardised on ``images`` and biased to
    low objectness and class scores (see the module docstring)."""
    torch.manual_seed(0)
    model = bk.create_model("yolov3", num_classes=classes, input_size=size)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.2, 0.2)
    model.eval()
    with torch.no_grad():
        levels = model.forward_levels(letterbox_images(images, size)[0])
        objectness, class_logits = [], []
        for conv, raw in zip(model.head.convs_pred, levels):
            # each output channel standardised over the cells of these images (zero mean, unit spread)
            mean, std = raw.mean((0, 2, 3)), raw.std((0, 2, 3)).clamp_min(1e-6)
            conv.weight.div_(std.view(-1, 1, 1, 1))
            conv.bias.sub_(mean).div_(std)
            z = ((raw - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)).view(len(raw), -1, 5 + classes,
                                                                             *raw.shape[-2:])
            objectness.append(z[:, :, 4].flatten(1) + OBJ_BIAS)
            class_logits.append(z[:, :, 5:].transpose(1, 2).flatten(2))
        shift = _class_shift(torch.cat(objectness, 1), torch.cat(class_logits, 2), thresh)
        for conv in model.head.convs_pred:
            bias = conv.bias.view(-1, 5 + classes)
            bias[:, 4] += OBJ_BIAS
            bias[:, 5:] += shift
    write_yolov3_weights(model.state_dict(), path)


def _class_shift(objectness: torch.Tensor, class_logits: torch.Tensor, thresh: float) -> float:
    """The class-logit shift (bisection) at which the image with the most candidates has about
    ``CANDIDATES`` scores above ``thresh``. ``objectness`` (N, R) and ``class_logits`` (N, C, R): logits."""
    p_obj = objectness.sigmoid()[:, None]
    low, high = -30.0, 10.0
    for _ in range(30):
        mid = (low + high) / 2
        count = int((p_obj * (class_logits + mid).sigmoid() > thresh).sum((1, 2)).max())
        low, high = (low, mid) if count > CANDIDATES else (mid, high)
    return low


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=416)
    parser.add_argument("--images", type=int, default=8, help="images per round (sizes vary, letterboxed)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--weights", help="a Darknet yolov3 .weights file (default: random weights)")
    parser.add_argument("--classes", type=int, default=80, help="classes of the random weights")
    parser.add_argument("--score-thresh", type=float, default=0.05)
    parser.add_argument("--threads", type=int, help="torch and onnxruntime threads (default: torch's)")
    parser.add_argument("--write", action="store_true", help="write the section of benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(1)
    sizes = [(int(h), int(w)) for h, w in torch.randint(args.size // 2, args.size * 2, (args.images, 2), generator=g)]
    images = [torch.rand(3, h, w, generator=g) for h, w in sizes]
    tmp = Path(tempfile.mkdtemp(prefix="bench_yolov3_"))
    weights = Path(args.weights) if args.weights else tmp / "random.weights"
    if not args.weights:
        _random_weights(weights, args.classes, args.size, images, args.score_thresh)

    model = bk.create_model("yolov3", pretrained=weights, input_size=args.size).eval()
    ref_mod = _reference_module()
    reference = ref_mod.CfgYOLOv3(ref_mod.yolov3_cfg(model.num_classes, args.size)).eval()
    reference.load_weights(str(weights))
    optimized = bk.optimize_for_inference(bk.create_model("yolov3", pretrained=weights, input_size=args.size),
                                          channels_last=True)
    from backbonekit.detection.export import export_yolov3_onnx
    import onnxruntime as ort

    onnx_path = export_yolov3_onnx(bk.create_model("yolov3", pretrained=weights, input_size=args.size),
                                   tmp / "yolov3.onnx", dynamic_batch=True)
    options = ort.SessionOptions()
    if args.threads:
        options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

    raw = {
        "reference": reference,
        "eager": model.forward_raw,
        "optimized": optimized.forward_raw,
        "onnxruntime": lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0]),
    }

    def end_to_end(fn):
        batch, boxes = letterbox_images(images, args.size)
        return model.postprocess(fn(batch), boxes, args.score_thresh, 0.45, MAX_DETECTIONS)

    with torch.no_grad(), CpuWatch() as watch:
        results = {name: end_to_end(fn) for name, fn in raw.items()}  # warm-up, and the detections
        times: dict[str, list[float]] = {name: [] for name in raw}
        for _ in range(args.rounds):
            for name, fn in raw.items():
                start = time.perf_counter()
                end_to_end(fn)
                times[name].append(time.perf_counter() - start)
        # where the eager model's time goes
        parts = {"letterbox": 0.0, "network": 0.0, "decode": 0.0, "nms": 0.0}
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            batch, boxes = letterbox_images(images, args.size)
            t1 = time.perf_counter()
            levels = model.forward_levels(batch)
            t2 = time.perf_counter()
            decoded = model.decode(levels)
            t3 = time.perf_counter()
            model.postprocess(decoded, boxes, args.score_thresh, 0.45, MAX_DETECTIONS)
            t4 = time.perf_counter()
            for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                parts[key] += dt

    text = _report(args, sizes, model.num_classes, times, results, parts, watch)
    print(text)
    if args.write:
        write_section(Path(__file__).with_name("RESULTS.md"), "yolov3",
                      f"## YOLOv3-{args.size} end to end, CPU\n\n" + text)
    return 0


def _report(args, sizes, classes: int, times: dict, results: dict, parts: dict, watch: CpuWatch) -> str:
    base = statistics.median(times["reference"])
    per_image = [len(r["boxes"]) for r in results["reference"]]
    lines = [f"{args.images} images of sizes {sizes[:3]}..., {classes} classes, "
             f"{'weights ' + Path(args.weights).name if args.weights else 'random weights (low-score output biases)'}, "
             f"score > {args.score_thresh}, torch threads {torch.get_num_threads()}, {args.rounds} rounds (median)",
             f"detections per image (reference): {per_image}"
             + (f" -- **an image reached the {MAX_DETECTIONS}-detection cap: the comparison is cut**"
                if max(per_image) >= MAX_DETECTIONS else f" (none reaches the {MAX_DETECTIONS} cap)"),
             "", "| candidate | images/s | vs reference | detections | equal to reference |", "|---|---:|---:|---:|---|"]
    for name in results:
        t = statistics.median(times[name])
        count = sum(len(r["boxes"]) for r in results[name])
        lines.append(f"| {name} | {args.images / t:.2f} | {base / t:.2f}x | {count} | "
                     f"{_same(results[name], results['reference'])} |")
    total = sum(parts.values())
    lines += ["", "eager time: " + ", ".join(f"{k} {100 * v / total:.1f}%" for k, v in parts.items()),
              "", load_note(watch.others_cores, os.cpu_count()),
              "targets: optimized >= 1.3x, onnxruntime >= 1.5x the reference, equal detections"]
    return "\n".join(lines)


def _same(found: list[dict], expected: list[dict]) -> bool:
    for a, b in zip(found, expected):
        if len(a["boxes"]) != len(b["boxes"]) or not torch.equal(a["labels"], b["labels"]):
            return False
        if not torch.allclose(a["boxes"], b["boxes"], rtol=1e-3, atol=1e-2):
            return False
    return True


if __name__ == "__main__":
    sys.exit(main())

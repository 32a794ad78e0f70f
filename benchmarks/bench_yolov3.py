"""YOLOv3-416 end to end on the CPU (letterbox, network, decode, NMS) in images/s, side by side in one run:

* ``reference``: a cfg-driven YOLOv3 (tests/yolo_cfg_reference.py: Darknet's cfg text, layers run one
  by one, Darknet's decoding) in eager PyTorch;
* ``eager``: backbonekit's YOLOv3, eval mode;
* ``optimized``: :func:`backbonekit.optimize_for_inference` (BatchNorm folded, channels_last);
* ``onnxruntime``: the ONNX export (decoding in the graph) in ONNX Runtime.

All four load the same Darknet ``.weights`` file (``--weights``, else random weights with random
BatchNorm statistics written to a temporary file) and share the letterbox and postprocess code
(score > ``--score-thresh``, class-aware ``batched_nms`` 0.45, 100 per image), so their detections
are compared for equality. Candidates are timed in interleaved rounds. The share of time in decode
and NMS is measured on the eager model.

    PYTHONPATH=src python benchmarks/bench_yolov3.py                      # 416, 8 images, 5 rounds
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

import torch

import backbonekit as bk
from backbonekit.detection.yolov3 import letterbox
from backbonekit.detection.yolov3_weights import write_yolov3_weights

ROOT = Path(__file__).resolve().parents[1]


def _reference_module():
    spec = importlib.util.spec_from_file_location("yolo_cfg_reference", ROOT / "tests" / "yolo_cfg_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _random_weights(path: Path, classes: int) -> None:
    torch.manual_seed(0)
    model = bk.create_model("yolov3", num_classes=classes)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.2, 0.2)
    write_yolov3_weights(model.state_dict(), path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=416)
    parser.add_argument("--images", type=int, default=8, help="images per round (sizes vary, letterboxed)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--weights", help="a Darknet yolov3 .weights file (default: random weights)")
    parser.add_argument("--classes", type=int, default=80, help="classes of the random weights")
    parser.add_argument("--score-thresh", type=float, default=0.25)
    parser.add_argument("--threads", type=int, help="torch and onnxruntime threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_yolov3_"))
    weights = Path(args.weights) if args.weights else tmp / "random.weights"
    if not args.weights:
        _random_weights(weights, args.classes)

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

    g = torch.Generator().manual_seed(1)
    sizes = [(int(h), int(w)) for h, w in torch.randint(args.size // 2, args.size * 2, (args.images, 2), generator=g)]
    images = [torch.rand(3, h, w, generator=g) for h, w in sizes]
    raw = {
        "reference": reference,
        "eager": model.forward_raw,
        "optimized": optimized.forward_raw,
        "onnxruntime": lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0]),
    }

    def end_to_end(fn):
        batch, boxes = letterbox(images, args.size)
        return model.postprocess(fn(batch), boxes, args.score_thresh, 0.45, 100)

    with torch.no_grad():
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
            batch, boxes = letterbox(images, args.size)
            t1 = time.perf_counter()
            levels = model.forward_levels(batch)
            t2 = time.perf_counter()
            decoded = model.decode(levels)
            t3 = time.perf_counter()
            model.postprocess(decoded, boxes, args.score_thresh, 0.45, 100)
            t4 = time.perf_counter()
            for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                parts[key] += dt

    base = statistics.median(times["reference"])
    print(f"YOLOv3-{args.size}, {args.images} images of sizes {sizes[:3]}..., {model.num_classes} classes, "
          f"torch threads {torch.get_num_threads()}, {args.rounds} rounds (median)")
    print(f"{'candidate':<12} {'images/s':>9} {'vs reference':>13} {'detections':>11}  equal to reference")
    for name in raw:
        t = statistics.median(times[name])
        same = _same(results[name], results["reference"])
        count = sum(len(r["boxes"]) for r in results[name])
        print(f"{name:<12} {args.images / t:9.2f} {base / t:12.2f}x {count:11d}  {same}")
    total = sum(parts.values())
    print("eager time: " + ", ".join(f"{k} {100 * v / total:.1f}%" for k, v in parts.items()))
    return 0


def _same(found: list[dict], expected: list[dict]) -> bool:
    for a, b in zip(found, expected):
        if len(a["boxes"]) != len(b["boxes"]) or not torch.equal(a["labels"], b["labels"]):
            return False
        if not torch.allclose(a["boxes"], b["boxes"], rtol=1e-3, atol=1e-2):
            return False
    return True


if __name__ == "__main__":
    sys.exit(main())

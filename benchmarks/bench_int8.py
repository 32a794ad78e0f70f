"""int8 against fp32 on the CPU, side by side, in one run: Darknet-53 and YOLOv3 through ONNX Runtime int8.

One process, every candidate warmed up, then timed in interleaved rounds (A, B, C, ..., A, B, C, ...),
with the machine's peaks measured in the same rounds: fp32 (numpy/torch sgemm and ONNX Runtime's
``MatMul``) and int8 (ONNX Runtime's ``MatMulInteger``, uint8 x int8 -> int32: the kernel family its
quantized convolutions use) on n x n matrices. Each model's achieved GOP/s (2 x MACs x images/s, the same
operation count in fp32 and int8) is shown against both peaks.

* Darknet-53 at 256x256, batch 8: ONNX Runtime int8 vs ONNX Runtime fp32 vs timm eager fp32 (issue 14's
  targets: 2.5x timm, 1.8x ORT fp32).
* YOLOv3 at 416x416, batch 1 (network + Darknet's decoding; NMS is outside all three): ONNX Runtime int8
  (decoding kept fp32) vs the fused fp32 PyTorch path (``optimize_for_inference``: BatchNorm folded,
  channels_last where faster) vs ONNX Runtime fp32 (target: 2x the fused path).

The int8 models are :func:`backbonekit.quantize.export_int8` (QDQ, per-channel int8 weights, uint8
activations) calibrated on random images: speed does not depend on the weights. ``--schemes`` gives one
Darknet-53 int8 row (and one accuracy cell) per choice of 8-bit types and weight range, ``NAME`` of
:data:`SCHEMES`: ``u8s8-7bit`` (the default: uint8 activations, int8 weights in [-64, 64], no saturation on
x86 CPUs without VNNI), ``u8s8`` (8-bit weights: the old default, may saturate there), ``s8s8``,
``s8s8-7bit`` and ``u8u8`` (ONNX Runtime's other formats). Only the CPU this runs on is measured: rows for
a CPU without VNNI need such a CPU. Accuracy columns come
from trained runs: ``--classifier-run RUN`` (a ``backbonekit train`` folder or its best.pt; top-1 of its
fp32 and int8 ONNX files on its test split) and ``--detector-run RUN`` (a ``backbonekit detect train``
folder or its best.pt; mAP@0.5 of its fp32 and int8 ONNX files on its val split, calibrated on its train
split), each delta beside the speed of the same kind of file. ``--write`` puts the section in RESULTS.md.

PT2E: torch 2.14 no longer ships ``torch.ao.quantization.quantize_pt2e`` (moved to torchao, not a
backbonekit dependency); ``--pt2e`` adds torchao's PT2E Darknet-53 (X86InductorQuantizer, Inductor-compiled)
to the same rounds. torchao 0.18.0 from PyPI ran it with torch 2.14.1 (see docs/deploy.md).

    PYTHONPATH=src python benchmarks/bench_int8.py --write          # the int8 section of RESULTS.md
    PYTHONPATH=src python benchmarks/bench_int8.py --classifier-run runs/darknet53-digits \
        --detector-run runs/yolov3-photodigits --write
    PYTHONPATH=src python benchmarks/bench_int8.py --classifier-run runs/resnet18-digits --yolo-size 0 \
        --schemes u8s8-7bit,u8s8,s8s8,s8s8-7bit,u8u8 --write         # one row per int8 scheme
    PYTHONPATH=src python benchmarks/bench_int8.py --classifier-run RUN --accuracy-only \
        --schemes u8s8-7bit,u8s8 --calib-images 128                 # accuracy only, no timing
    PYTHONPATH=src python benchmarks/bench_int8.py --input-size 32 --batch-size 1 --yolo-size 64 \
        --repeats 1 --warmup 1 --matmul-size 128                    # smoke test
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

if "--omp-passive" in sys.argv:  # must precede the OpenMP runtime's start (importing torch)
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from backbonekit.bench import (  # noqa: E402
    Candidate,
    build_reference,
    environment,
    flop_per_image,
    infer_candidate,
    matmul_candidates,
    run_benchmark,
)
from results_file import CpuWatch, load_note, write_section  # noqa: E402

REFERENCE = "timm:darknet53 eager"
# export_int8 settings by name: activations+weights, and "-7bit" for weights in [-64, 64] (reduce_range)
SCHEMES = {
    "u8s8-7bit": {"activation_type": "uint8", "weight_type": "int8", "reduce_range": True},
    "u8s8": {"activation_type": "uint8", "weight_type": "int8", "reduce_range": False},
    "s8s8": {"activation_type": "int8", "weight_type": "int8", "reduce_range": False},
    "s8s8-7bit": {"activation_type": "int8", "weight_type": "int8", "reduce_range": True},
    "u8u8": {"activation_type": "uint8", "weight_type": "uint8", "reduce_range": False},
}
DEFAULT_SCHEME = "u8s8-7bit"  # what export_int8 does without options
IMAGENET = {"classes": [str(i) for i in range(1000)], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def ort_session(path: Path, threads: int):
    """An ONNX Runtime CPU session with the threads torch uses (as ``backbonekit bench``'s onnx variant)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def file_candidate(path: Path, label: str, x: np.ndarray, flops: float, threads: int) -> Candidate:
    session = ort_session(path, threads)
    feed = {session.get_inputs()[0].name: x}
    return Candidate(label, lambda: session.run(None, feed), len(x), flops)


def matmul_model(path: Path, n: int, int8: bool) -> Path:
    """A one-node ONNX model: (n, n) x (n, n) constant, ``MatMulInteger`` (uint8 x int8) or fp32 ``MatMul``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if int8:
        weight = numpy_helper.from_array(rng.integers(-127, 128, (n, n), dtype=np.int8), "w")
        node = helper.make_node("MatMulInteger", ["a", "w"], ["y"])
        types = (TensorProto.UINT8, TensorProto.INT32)
    else:
        weight = numpy_helper.from_array(rng.standard_normal((n, n), dtype=np.float32), "w")
        node = helper.make_node("MatMul", ["a", "w"], ["y"])
        types = (TensorProto.FLOAT, TensorProto.FLOAT)
    graph = helper.make_graph([node], "matmul", [helper.make_tensor_value_info("a", types[0], [n, n])],
                              [helper.make_tensor_value_info("y", types[1], [n, n])], initializer=[weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def peak_candidates(folder: Path, n: int, threads: int, per_step: int = 4) -> list[Candidate]:
    """fp32 (numpy, torch, ONNX Runtime) and int8 (ONNX Runtime MatMulInteger) n^3 products; one "image" = one product."""
    candidates = matmul_candidates(n, per_step)
    rng = np.random.default_rng(1)
    for int8, label in ((False, f"onnxruntime fp32 matmul {n}"), (True, f"onnxruntime int8 matmul {n}")):
        session = ort_session(matmul_model(folder / f"matmul-{int8}.onnx", n, int8), threads)
        a = rng.integers(0, 256, (n, n), dtype=np.uint8) if int8 else rng.standard_normal((n, n), dtype=np.float32)

        def step(session=session, a=a) -> object:
            return [session.run(None, {"a": a}) for _ in range(per_step)]

        candidates.append(Candidate(label, step, per_step, 2 * n**3))
    return candidates


def int8_label(scheme: str) -> str:
    return f"darknet53 onnxruntime int8 {scheme}"


def model_candidates(folder: Path, input_size: int, batch_size: int, threads: int, pt2e: bool,
                     schemes: list[str]) -> tuple[list[Candidate], dict[str, str]]:
    from backbonekit.onnx_meta import export_onnx
    from backbonekit.quantize import export_int8, settings_line

    torch.manual_seed(0)
    x = torch.randn(batch_size, 3, input_size, input_size)
    timm_model = build_reference("timm:darknet53")
    flops = flop_per_image(timm_model, input_size)
    ours = build_reference("darknet53")
    prep = {**IMAGENET, "image_size": input_size}
    fp32 = export_onnx(ours, folder / "fp32.onnx", preprocessing=prep)
    calib = np.random.default_rng(0).standard_normal((16, 3, input_size, input_size)).astype(np.float32)
    candidates = [infer_candidate(timm_model, REFERENCE, "eager", x, flops),
                  file_candidate(fp32, "darknet53 onnxruntime fp32", x.numpy(), flops, threads)]
    notes = {REFERENCE: "timm darknet53, eval mode, fp32 (the reference)",
             "darknet53 onnxruntime fp32": "backbonekit.onnx_meta.export_onnx (BatchNorm folded), ONNX Runtime CPU"}
    for scheme in schemes:
        int8 = export_int8(fp32, folder / f"int8-{scheme}.onnx", calibrate=calib, calib_images=16, **SCHEMES[scheme])
        candidates.append(file_candidate(int8.path, int8_label(scheme), x.numpy(), flops, threads))
        notes[int8_label(scheme)] = (f"backbonekit.quantize.export_int8({scheme_call(scheme)}), ONNX Runtime CPU; "
                                     f"{settings_line(int8.settings)}; {int8.int8_nodes} nodes int8, {len(int8.fp32)} "
                                     f"fp32 ({', '.join(sorted({n.op_type for n in int8.fp32}))}); "
                                     f"{loaded_convolutions(int8.path, folder)}")
    if pt2e:
        candidates.append(pt2e_candidate(ours, x, flops))
        notes[candidates[-1].label] = "torchao PT2E (X86InductorQuantizer defaults) on the BatchNorm-folded model, torch.compile (Inductor)"
    return candidates, notes


def loaded_convolutions(path: Path, folder: Path) -> str:
    """How ONNX Runtime runs a QDQ file's convolutions once loaded here: integer kernels (``QLinearConv``) or
    fp32 ``Conv`` between DequantizeLinear/QuantizeLinear (where it cannot fuse the group on this CPU)."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(folder / f"{path.stem}-loaded.onnx")
    options.log_severity_level = 3  # the warning that the saved graph is specific to this CPU: known
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(options.optimized_model_filepath, load_external_data=False).graph.node]
    integer = sum(op.endswith("QLinearConv") for op in ops)
    fp32 = sum(op in ("Conv", "FusedConv") or op.endswith("NchwcConv") for op in ops)
    return f"loaded here: {integer} QLinearConv, {fp32} fp32 Conv"


def scheme_call(scheme: str) -> str:
    """The export_int8 keyword arguments of a scheme, as a user would write them (defaults left out)."""
    options = {k: v for k, v in SCHEMES[scheme].items() if v != SCHEMES[DEFAULT_SCHEME][k]}
    return ", ".join(f"{k}={v!r}" for k, v in options.items()) or "defaults"


def pt2e_candidate(model: torch.nn.Module, x: torch.Tensor, flops: float) -> Candidate:
    """PyTorch's PT2E int8 path (torchao, not a backbonekit dependency), compiled by Inductor."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(torch.export.export(model.eval(), (x,)).module(), quantizer)
    with torch.no_grad():
        prepared(x)  # calibration: speed does not depend on the ranges
        compiled = torch.compile(convert_pt2e(prepared))

    def step() -> object:
        with torch.no_grad():
            return compiled(x)

    return Candidate("darknet53 pt2e int8 compiled", step, len(x), flops)


YOLO_FUSED = "yolov3 pytorch fused fp32"
YOLO_ORT32 = "yolov3 onnxruntime fp32"
YOLO_INT8 = "yolov3 onnxruntime int8"


def yolo_candidates(folder: Path, input_size: int, batch_size: int, threads: int
                    ) -> tuple[list[Candidate], dict[str, str]]:
    """YOLOv3 (Darknet-53, 80 classes, random weights) up to its decoded predictions, three ways."""
    import copy

    from backbonekit import create_model
    from backbonekit.detection.export import DecodedYOLOv3, export_yolov3_onnx
    from backbonekit.quantize import export_int8

    torch.manual_seed(0)
    model = create_model("yolov3", input_size=input_size).eval()
    x = torch.rand(batch_size, 3, input_size, input_size)
    flops = flop_per_image(DecodedYOLOv3(model), input_size)
    fp32 = export_yolov3_onnx(copy.deepcopy(model), folder / "yolo-fp32.onnx", batch_size=batch_size)
    calib = np.random.default_rng(0).random((8 * batch_size, 3, input_size, input_size), dtype=np.float32)
    int8 = export_int8(fp32, folder / "yolo-int8.onnx", calibrate=calib, calib_images=8 * batch_size)
    candidates = [infer_candidate(DecodedYOLOv3(model), YOLO_FUSED, "fused", x, flops),
                  file_candidate(fp32, YOLO_ORT32, x.numpy(), flops, threads),
                  file_candidate(int8.path, YOLO_INT8, x.numpy(), flops, threads)]
    kept = ", ".join(sorted({n.op_type for n in int8.fp32}))
    notes = {YOLO_FUSED: "YOLOv3.forward_levels + decode after backbonekit.optimize_for_inference (BatchNorm folded, "
                         "channels_last where faster), fp32, eager",
             YOLO_ORT32: "backbonekit.detection.export.export_yolov3_onnx (decoding in the graph), ONNX Runtime CPU",
             YOLO_INT8: f"export_int8 of that file: {int8.int8_nodes} nodes int8, {len(int8.fp32)} fp32 (decoding "
                        f"kept fp32 on purpose; {kept})"}
    return candidates, notes


def run_file(run: Path) -> Path:
    """A run folder's best.pt, or the checkpoint itself."""
    path = run / "best.pt" if run.is_dir() else run
    if not path.is_file():
        raise SystemExit(f"bench_int8: expected a run folder with best.pt or a checkpoint, found {run}")
    return path


def classifier_accuracy(run: Path, folder: Path, calib_images: int, schemes: list[str]) -> dict[str, str]:
    """fp32 and int8 top-1 of a trained classifier on its test split, as table cells (one per int8 scheme),
    with how closely each int8 file follows the fp32 one on every image of the dataset (:func:`agreement`)."""
    from backbonekit.onnx_meta import export_onnx, read_metadata
    from backbonekit.quantize import export_int8
    from backbonekit.train.onnx_eval import evaluate_onnx

    quiet = dict(log=lambda _: None)
    checkpoint = run_file(run)
    fp32_path = export_onnx(checkpoint, folder / "acc-fp32.onnx")
    meta = read_metadata(fp32_path)
    fp32 = evaluate_onnx(fp32_path, out=folder / "e32", **quiet)
    cells = {"fp32": f"top-1 {100 * fp32.top1:.2f}%"}
    for scheme in schemes:
        int8_path = export_int8(checkpoint, folder / f"acc-int8-{scheme}.onnx", calibrate=meta["dataset"],
                                calib_images=calib_images, **SCHEMES[scheme]).path
        int8 = evaluate_onnx(int8_path, out=folder / f"e8-{scheme}", **quiet)
        same, error, count = agreement(fp32_path, int8_path, meta)
        cells[int8_label(scheme)] = (f"top-1 {100 * int8.top1:.2f}% ({100 * (int8.top1 - fp32.top1):+.2f}); "
                                     f"{100 * same:.2f}% same top-1 as fp32, logit error {100 * error:.1f}%")
    cells["where"] = (f"top-1: {checkpoint} ({meta['model']}) on {meta['dataset']} test ({fp32.count} images), int8 "
                      f"calibrated on {calib_images} training images. Same top-1 as fp32 and logit error (median "
                      f"over images of |int8 - fp32| / |fp32|, L2 over the classes) on all {count} images of "
                      f"{meta['dataset']}, train and test: more images than the test split alone")
    return cells


def agreement(fp32_path: Path, int8_path: Path, meta: dict) -> tuple[float, float, int]:
    """(share of images whose int8 top-1 is the fp32 file's, median relative L2 error of the logits, images)
    over both splits of the file's dataset, prepared as evaluation prepares them."""
    import onnxruntime as ort

    from backbonekit.quantize import dataset_calibration

    logits = {}
    for path in (fp32_path, int8_path):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name, outs = session.get_inputs()[0].name, []
        for split in ("train", "test"):
            count, fetch, _ = dataset_calibration(meta["dataset"], meta, 10**9, split=split)
            outs += [session.run(None, {name: fetch(np.arange(i, min(i + 256, count)))})[0]
                     for i in range(0, count, 256)]
        logits[path] = np.concatenate(outs).astype(np.float64)
    ref, q = logits[fp32_path], logits[int8_path]
    same = float((ref.argmax(1) == q.argmax(1)).mean())
    error = float(np.median(np.linalg.norm(q - ref, axis=1) / np.linalg.norm(ref, axis=1)))
    return same, error, len(ref)


def detector_accuracy(run: Path, folder: Path, calib_images: int) -> dict[str, str]:
    """fp32 and int8 mAP@0.5 of a trained YOLOv3 on its val split (ONNX files, ``detect evaluate``'s path)."""
    from backbonekit.detection.export import export_yolov3_onnx
    from backbonekit.detection.onnx_eval import evaluate_onnx_detector
    from backbonekit.detection.loading import load_run_checkpoint
    from backbonekit.quantize import export_int8

    checkpoint = run_file(run)
    model, ckpt = load_run_checkpoint(checkpoint)
    config = ckpt.get("config") or {}
    dataset, data_dir = config.get("dataset", "photodigits"), config.get("data_dir")
    fp32_path = export_yolov3_onnx(model, folder / "det-fp32.onnx", dynamic_batch=True, classes=ckpt["classes"],
                                   dataset=dataset)
    int8_path = export_int8(fp32_path, folder / "det-int8.onnx", calibrate=dataset, calib_images=calib_images,
                            data_dir=data_dir).path
    maps = [evaluate_onnx_detector(p, data_dir=data_dir, out=folder / f"d{i}", log=lambda _: None).summary["map_50"]
            for i, p in enumerate((fp32_path, int8_path))]
    return {"fp32": f"mAP@.5 {100 * maps[0]:.1f}", YOLO_INT8: f"mAP@.5 {100 * maps[1]:.1f} ({100 * (maps[1] - maps[0]):+.1f})",
            "where": f"mAP@0.5: {checkpoint} on {dataset} val, int8 calibrated on {calib_images} training images "
                     f"(letterboxed)"}


def schemes_argument(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SCHEMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected int8 schemes out of {', '.join(SCHEMES)}, found {text!r}")
    return list(dict.fromkeys(names))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input-size", type=int, default=256, help="Darknet-53 input (default 256)")
    parser.add_argument("--batch-size", type=int, default=8, help="Darknet-53 batch (default 8)")
    parser.add_argument("--yolo-size", type=int, default=416, help="YOLOv3 input (default 416; 0: skip YOLOv3)")
    parser.add_argument("--yolo-batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=8, help="timed batches per candidate")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches per candidate")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--matmul-size", type=int, default=2048, help="n of the n^3 peak products")
    parser.add_argument("--pt2e", action="store_true", help="also time PyTorch's PT2E int8 path (needs torchao)")
    parser.add_argument("--classifier-run", type=Path, help="a classification run: top-1 fp32 vs int8 (each scheme)")
    parser.add_argument("--detector-run", type=Path, help="a YOLOv3 detection run: mAP@0.5 fp32 vs int8")
    parser.add_argument("--calib-images", type=int, default=256, help="calibration images for the accuracy columns")
    parser.add_argument("--schemes", default=DEFAULT_SCHEME, type=schemes_argument,
                        help=f"comma-separated int8 schemes, one Darknet-53 row each: {', '.join(SCHEMES)} "
                             f"(default {DEFAULT_SCHEME}, export_int8's default)")
    parser.add_argument("--accuracy-only", action="store_true",
                        help="only the accuracy cells of --classifier-run, one line per scheme (no timing)")
    parser.add_argument("--omp-passive", action="store_true", help="OMP_WAIT_POLICY=PASSIVE (busy machines)")
    parser.add_argument("--results", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    parser.add_argument("--write", action="store_true", help="write the int8 section of --results (int8-schemes "
                        "with --schemes other than the default; default: print)")
    args = parser.parse_args()
    if args.pt2e:
        import importlib.util

        if importlib.util.find_spec("torchao") is None:
            parser.error("--pt2e needs torchao (PyTorch's PT2E quantization moved there): pip install torchao")
    torch.set_num_threads(args.threads)
    if args.accuracy_only:
        if not args.classifier_run:
            parser.error("--accuracy-only needs --classifier-run")
        with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
            cells = classifier_accuracy(args.classifier_run, Path(tmp), args.calib_images, args.schemes)
        print("\n".join(f"{label.removeprefix(int8_label(''))}: {cell}" for label, cell in cells.items()))
        return
    env_before = environment(torch.device("cpu"))
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        folder = Path(tmp)
        accuracy = {}
        if args.classifier_run:
            accuracy["classifier"] = classifier_accuracy(args.classifier_run, folder, args.calib_images, args.schemes)
        if args.detector_run:
            accuracy["detector"] = detector_accuracy(args.detector_run, folder, args.calib_images)
        candidates, notes = model_candidates(folder, args.input_size, args.batch_size, args.threads, args.pt2e,
                                             args.schemes)
        if args.yolo_size:
            more, yolo_notes = yolo_candidates(folder, args.yolo_size, args.yolo_batch, args.threads)
            candidates, notes = candidates + more, {**notes, **yolo_notes}
        candidates = peak_candidates(folder, args.matmul_size, args.threads) + candidates
        with CpuWatch() as watch:
            results = run_benchmark(candidates, args.batch_size, warmup=args.warmup, repeats=args.repeats)
    env = environment(torch.device("cpu"))
    env["load_average_before"] = env_before.get("load_average_1_5_15")
    env["others_cores"] = watch.others_cores
    env["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY", "(default)")
    text = report(results, notes, env, args, accuracy)
    print(text)
    if args.write:
        section = "int8" if args.schemes == [DEFAULT_SCHEME] else "int8-schemes"
        write_section(args.results, section, text)
        print(f"wrote the {section} section of {args.results}")


def report(results, notes: dict[str, str], env: dict, args: argparse.Namespace, accuracy: dict) -> str:
    peaks = [r for r in results if "matmul" in r.label]
    by_label = {r.label: r for r in results if "matmul" not in r.label}
    fp32_peak = max((r for r in peaks if "fp32" in r.label), key=lambda r: r.gflops)
    int8_peak = next(r for r in peaks if "int8" in r.label)
    n = args.matmul_size
    lines = [
        f"## int8 inference{'' if args.schemes == [DEFAULT_SCHEME] else ', one row per scheme'}: darknet53 "
        f"{args.input_size}x{args.input_size} batch {args.batch_size}"
        + (f", yolov3 {args.yolo_size}x{args.yolo_size} batch {args.yolo_batch}" if args.yolo_size else "") + ", CPU",
        "",
        f"`PYTHONPATH=src python benchmarks/bench_int8.py {' '.join(sys.argv[1:])}`".replace(" `", "`"),
        "",
        f"{env['device']}, {env['torch_threads']} threads, torch {env['torch']}, OMP_WAIT_POLICY "
        f"{env['OMP_WAIT_POLICY']}, load average (1/5/15 min) before {env['load_average_before']}, after "
        f"{env.get('load_average_1_5_15')}; {args.repeats} interleaved batches each after {args.warmup} warm-up.",
        f"Peaks, {n}^3 products interleaved with the models (median GOP/s): "
        + ", ".join(f"{r.label.rsplit(' ', 2)[0]} {r.gflops:.0f}" for r in peaks)
        + f"; fp32 peak = {fp32_peak.label.split()[0]} {fp32_peak.gflops:.0f}, int8 peak = {int8_peak.gflops:.0f} "
          f"(MatMulInteger, uint8 x int8 -> int32).",
        load_note(env["others_cores"], env["cpu_count"], matmul=True),
        "",
        "| candidate | images/s median (min-max) | speed-up | GOP/s | of fp32 peak | of int8 peak | accuracy (delta) |",
        "|---|---|---|---|---|---|---|",
    ]
    groups = [(REFERENCE, "darknet53 onnxruntime fp32", accuracy.get("classifier"), "timm eager", "ORT fp32")]
    if args.yolo_size:
        groups.append((YOLO_FUSED, YOLO_ORT32, accuracy.get("detector"), "fused", "ORT fp32"))
    for base, ort32, acc, base_name, ort_name in groups:
        family = base.split()[0] if base != REFERENCE else "darknet53"
        for label, r in by_label.items():
            if not (label == base or label.startswith(family)):
                continue
            cell = "-"
            if acc and "onnxruntime" in label:
                cell = acc.get(label if "int8" in label else "fp32", "-")
            speed = (f"{r.images_per_s_median / by_label[base].images_per_s_median:.2f}x {base_name}, "
                     f"{r.images_per_s_median / by_label[ort32].images_per_s_median:.2f}x {ort_name}")
            lines.append(
                f"| {label} | {r.images_per_s_median:.1f} ({r.images_per_s_min:.1f}-{r.images_per_s_max:.1f}) | {speed} "
                f"| {r.gflops:.0f} | {r.gflops / fp32_peak.gflops:.0%} | {r.gflops / int8_peak.gflops:.0%} | {cell} |")
    lines.append("")
    lines += [f"- `{label}`: {note}" for label, note in notes.items()]
    lines.append("- GOP/s: 2 x MACs per image (`torch.utils.flop_counter`) x images/s, the same count for fp32 and int8.")
    lines += [f"- {acc['where']}; fp32 and int8 ONNX files of the same checkpoint." for acc in accuracy.values()]
    if not args.pt2e:
        lines.append("- PT2E (PyTorch's own int8) not timed in this run: torch 2.14 ships no "
                     "`torch.ao.quantization.quantize_pt2e`; `--pt2e` needs torchao (see docs/deploy.md).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

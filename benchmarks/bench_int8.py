"""int8 against fp32 on the CPU, side by side: Darknet-53 through ONNX Runtime int8, ONNX Runtime fp32 and timm eager.

One process, every candidate warmed up, then timed in interleaved rounds (A, B, C, ..., A, B, C, ...),
with the machine's peaks measured in the same rounds: fp32 (numpy/torch sgemm and ONNX Runtime's
``MatMul``) and int8 (ONNX Runtime's ``MatMulInteger``, uint8 x int8 -> int32: the kernel family its
quantized convolutions use) on n x n matrices. Each model's achieved GOP/s (2 x MACs x images/s, the same
operation count in fp32 and int8) is shown against both peaks.

The int8 model is :func:`backbonekit.quantize.export_int8` (QDQ, per-channel int8 weights, uint8
activations) calibrated on random images: speed does not depend on the weights. ``--checkpoint best.pt``
adds the accuracy of that trained model in fp32 and int8 (``evaluate_onnx`` on its test split) beside the speed.

    PYTHONPATH=src python benchmarks/bench_int8.py                      # writes the int8 part of RESULTS.md
    PYTHONPATH=src python benchmarks/bench_int8.py --input-size 64 --batch-size 2 --repeats 1 --no-write  # smoke
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


def model_candidates(folder: Path, input_size: int, batch_size: int, threads: int, pt2e: bool
                     ) -> tuple[list[Candidate], dict[str, str]]:
    from backbonekit.onnx_meta import export_onnx
    from backbonekit.quantize import export_int8

    torch.manual_seed(0)
    x = torch.randn(batch_size, 3, input_size, input_size)
    timm_model = build_reference("timm:darknet53")
    flops = flop_per_image(timm_model, input_size)
    ours = build_reference("darknet53")
    prep = {**IMAGENET, "image_size": input_size}
    fp32 = export_onnx(ours, folder / "fp32.onnx", preprocessing=prep)
    calib = np.random.default_rng(0).standard_normal((16, 3, input_size, input_size)).astype(np.float32)
    int8 = export_int8(fp32, folder / "int8.onnx", calibrate=calib, calib_images=16)
    candidates = [infer_candidate(timm_model, REFERENCE, "eager", x, flops),
                  file_candidate(fp32, "darknet53 onnxruntime fp32", x.numpy(), flops, threads),
                  file_candidate(int8.path, "darknet53 onnxruntime int8", x.numpy(), flops, threads)]
    notes = {REFERENCE: "timm darknet53, eval mode, fp32 (the reference)",
             "darknet53 onnxruntime fp32": "backbonekit.onnx_meta.export_onnx (BatchNorm folded), ONNX Runtime CPU",
             "darknet53 onnxruntime int8": f"backbonekit.quantize.export_int8 (QDQ, per-channel int8 weights, uint8 "
                                           f"activations), ONNX Runtime CPU; {int8.int8_nodes} nodes int8, "
                                           f"{len(int8.fp32)} fp32 ({', '.join(sorted({n.op_type for n in int8.fp32}))})"}
    if pt2e:
        candidates.append(pt2e_candidate(ours, x, flops))
        notes[candidates[-1].label] = "torchao PT2E (X86InductorQuantizer defaults) on the BatchNorm-folded model, torch.compile (Inductor)"
    return candidates, notes


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


def accuracy_rows(checkpoint: Path, folder: Path, calib_images: int) -> dict[str, str]:
    """fp32 and int8 top-1 of a trained checkpoint on its test split, as table cells."""
    from backbonekit.onnx_meta import export_onnx, read_metadata
    from backbonekit.quantize import export_int8
    from backbonekit.train.onnx_eval import evaluate_onnx

    quiet = dict(log=lambda _: None)
    fp32_path = export_onnx(checkpoint, folder / "acc-fp32.onnx")
    meta = read_metadata(fp32_path)
    fp32 = evaluate_onnx(fp32_path, out=folder / "e32", **quiet)
    int8_path = export_int8(checkpoint, folder / "acc-int8.onnx", calibrate=meta["dataset"],
                            calib_images=calib_images).path
    int8 = evaluate_onnx(int8_path, out=folder / "e8", **quiet)
    delta = 100 * (int8.top1 - fp32.top1)
    return {"fp32": f"{100 * fp32.top1:.2f}%", "int8": f"{100 * int8.top1:.2f}% ({delta:+.2f})",
            "where": f"{checkpoint} ({meta['model']}) on {meta['dataset']} test ({fp32.count} images), int8 calibrated "
                     f"on {calib_images} training images"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=8, help="timed batches per candidate")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches per candidate")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--matmul-size", type=int, default=2048, help="n of the n^3 peak products")
    parser.add_argument("--pt2e", action="store_true", help="also time PyTorch's PT2E int8 path (needs torchao)")
    parser.add_argument("--checkpoint", type=Path, help="a darknet53 best.pt: its fp32/int8 accuracy goes in the table")
    parser.add_argument("--calib-images", type=int, default=256, help="with --checkpoint: calibration images")
    parser.add_argument("--omp-passive", action="store_true", help="OMP_WAIT_POLICY=PASSIVE (busy machines)")
    parser.add_argument("--results", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if args.pt2e:
        import importlib.util

        if importlib.util.find_spec("torchao") is None:
            parser.error("--pt2e needs torchao (PyTorch's PT2E quantization moved there): pip install torchao")
    torch.set_num_threads(args.threads)
    env_before = environment(torch.device("cpu"))
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        folder = Path(tmp)
        accuracy = accuracy_rows(args.checkpoint, folder, args.calib_images) if args.checkpoint else None
        candidates, notes = model_candidates(folder, args.input_size, args.batch_size, args.threads, args.pt2e)
        candidates = peak_candidates(folder, args.matmul_size, args.threads) + candidates
        with CpuWatch() as watch:
            results = run_benchmark(candidates, args.batch_size, warmup=args.warmup, repeats=args.repeats)
    env = environment(torch.device("cpu"))
    env["load_average_before"] = env_before.get("load_average_1_5_15")
    env["others_cores"] = watch.others_cores
    env["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY", "(default)")
    text = report(results, notes, env, args, accuracy)
    print(text)
    if not args.no_write:
        write_section(args.results, "int8", text)
        print(f"wrote the int8 section of {args.results}")


def report(results, notes: dict[str, str], env: dict, args: argparse.Namespace, accuracy: dict | None) -> str:
    peaks = [r for r in results if "matmul" in r.label]
    models = [r for r in results if "matmul" not in r.label]
    fp32_peak = max((r for r in peaks if "fp32" in r.label), key=lambda r: r.gflops)
    int8_peak = next(r for r in peaks if "int8" in r.label)
    by_label = {r.label: r for r in models}
    ref = by_label[REFERENCE].images_per_s_median
    ort32 = by_label["darknet53 onnxruntime fp32"].images_per_s_median
    n = args.matmul_size
    lines = [
        f"## int8 inference: darknet53, {args.input_size}x{args.input_size}, batch {args.batch_size}, CPU",
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
        "| candidate | images/s median (min-max) | vs timm eager | vs ORT fp32 | GOP/s | of fp32 peak | of int8 peak "
        "| top-1 (delta) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in models:
        acc = "-"
        if accuracy and "onnxruntime" in r.label:
            acc = accuracy["int8" if "int8" in r.label else "fp32"]
        lines.append(
            f"| {r.label} | {r.images_per_s_median:.1f} ({r.images_per_s_min:.1f}-{r.images_per_s_max:.1f}) | "
            f"{r.images_per_s_median / ref:.2f}x | {r.images_per_s_median / ort32:.2f}x | {r.gflops:.0f} | "
            f"{r.gflops / fp32_peak.gflops:.0%} | {r.gflops / int8_peak.gflops:.0%} | {acc} |")
    lines.append("")
    lines += [f"- `{label}`: {note}" for label, note in notes.items()]
    lines.append("- GOP/s: 2 x MACs per image (`torch.utils.flop_counter`) x images/s, the same count for fp32 and int8.")
    if accuracy:
        lines.append(f"- top-1: {accuracy['where']}, fp32 and int8 ONNX files of the same checkpoint.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

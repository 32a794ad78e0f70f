"""Inference throughput of darknet53 on the CPU, side by side: backbonekit's paths against timm and torchvision.

One process, every candidate warmed up, then timed in interleaved rounds (A, B, C, ..., A, B, C, ...).
Ratios are against timm's darknet53 in eager mode (same layers and cost as seed 002's network).
Achieved GFLOP/s = 2 x MACs (``torch.utils.flop_counter``) x images/s, next to the best fp32 matmul
GFLOP/s of numpy and torch on the same machine, measured in the same run (before and after).

    PYTHONPATH=src python benchmarks/bench_inference.py            # writes the inference part of RESULTS.md
    PYTHONPATH=src python benchmarks/bench_inference.py --omp-passive   # on a busy machine
"""

from __future__ import annotations

import argparse
import os
import sys

if "--omp-passive" in sys.argv:  # must precede the OpenMP runtime's start (importing torch)
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

from pathlib import Path  # noqa: E402

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
# (model spec, variant, what it is)
CANDIDATES = (
    ("timm:darknet53", "eager", "timm darknet53, eval mode (the reference)"),
    ("torchvision:resnet50", "eager", "torchvision resnet50, eval mode"),
    ("darknet53", "eager", "backbonekit darknet53, eval mode"),
    ("darknet53", "fused-nchw", "optimize_for_inference(channels_last=False): BatchNorm folded"),
    ("darknet53", "fused", "optimize_for_inference(): BatchNorm folded + channels_last"),
    ("darknet53", "compiled", "optimize_for_inference(compile=True): + torch.compile, Inductor freezing"),
    ("darknet53", "onnx", "backbonekit export --format onnx, run by ONNX Runtime (CPU, same threads)"),
)


def build(skip: set[str], input_size: int, batch_size: int) -> tuple[list[Candidate], dict[str, str]]:
    torch.manual_seed(0)
    x = torch.randn(batch_size, 3, input_size, input_size)
    candidates = matmul_candidates()
    notes = {c.label: "the machine's reference: 4 fp32 2048^3 products a step, GFLOP/s = 2 n^3 x products/s"
             for c in candidates}
    for spec, variant, note in CANDIDATES:
        if variant in skip:
            continue
        model = build_reference(spec)
        label = f"{spec} {variant}"
        candidates.append(infer_candidate(model, label, variant, x, flop_per_image(model, input_size)))
        notes[label] = note
    return candidates, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=8, help="timed batches per candidate")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches per candidate (compiled: +compile)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", nargs="*", default=[], choices=("fused-nchw", "fused", "compiled", "onnx"))
    parser.add_argument("--omp-passive", action="store_true", help="OMP_WAIT_POLICY=PASSIVE (busy machines)")
    parser.add_argument("--results", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    env_before = environment(device)
    candidates, notes = build(set(args.skip), args.input_size, args.batch_size)
    try:
        with CpuWatch() as watch:
            results = run_benchmark(candidates, args.batch_size, warmup=args.warmup, repeats=args.repeats)
    finally:
        for c in candidates:
            if c.cleanup:
                c.cleanup()
    env = environment(device)
    env["load_average_before"] = env_before.get("load_average_1_5_15")
    env["others_cores"] = watch.others_cores
    env["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY", "(default)")
    text = report(results, notes, env, args)
    print(text)
    if not args.no_write:
        write_section(args.results, "inference", text)
        print(f"wrote the inference section of {args.results}")


def report(results, notes: dict[str, str], env: dict, args: argparse.Namespace) -> str:
    matmuls = [r for r in results if "matmul" in r.label]
    models = [r for r in results if "matmul" not in r.label]
    ref = next(r for r in models if r.label == REFERENCE).images_per_s_median
    best = max(matmuls, key=lambda r: r.gflops)
    best_peak = best.gflops
    gmacs = {r.label: r.gflops / r.images_per_s_median / 2 for r in models}
    lines = [
        f"## Inference: darknet53, {args.input_size}x{args.input_size}, batch {args.batch_size}, CPU",
        "",
        f"`PYTHONPATH=src python benchmarks/bench_inference.py {' '.join(sys.argv[1:])}`".replace(" `", "`"),
        "",
        f"{env['device']}, {env['torch_threads']} threads, torch {env['torch']}, OMP_WAIT_POLICY "
        f"{env['OMP_WAIT_POLICY']}, load average (1/5/15 min) before {env['load_average_before']}, after "
        f"{env.get('load_average_1_5_15')}; {args.repeats} interleaved batches each after {args.warmup} warm-up.",
        "fp32 matmul, 2048^3, interleaved with the models (median GFLOP/s, min-max): "
        + ", ".join(f"{r.label.split()[0]} {r.gflops:.0f} ({r.gflops * r.images_per_s_min / r.images_per_s_median:.0f}-"
                    f"{r.gflops * r.images_per_s_max / r.images_per_s_median:.0f})" for r in matmuls)
        + f"; the last column divides by the higher median ({best.label.split()[0]}, {best_peak:.0f} GFLOP/s).",
        load_note(env["others_cores"], env["cpu_count"], matmul=True),
        "",
        "| candidate | images/s median (min-max) | vs timm eager | latency p50 / p90 ms | GMACs/img | GFLOP/s "
        "| of matmul peak |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in models:
        lines.append(
            f"| {r.label} | {r.images_per_s_median:.1f} ({r.images_per_s_min:.1f}-{r.images_per_s_max:.1f}) | "
            f"{r.images_per_s_median / ref:.2f}x | {r.latency_ms_p50:.0f} / {r.latency_ms_p90:.0f} | "
            f"{gmacs.get(r.label, float('nan')):.2f} | {r.gflops:.0f} | {r.gflops / best_peak:.0%} |")
    lines.append("")
    lines += [f"- `{label}`: {note}" for label, note in notes.items() if "matmul" not in label]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

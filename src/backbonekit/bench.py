"""Throughput measurement (``backbonekit bench``, :func:`benchmark`): side by side, interleaved, warm-up excluded.

Every candidate (a model in one variant: eager, folded, compiled, ONNX Runtime, or a training
step) is a callable that processes one batch. After warm-up, repetitions are interleaved:
candidate A, B, C, A, B, C, ... so that a burst of load on a shared machine hits all of them
alike. Ratios from one such run are the figures worth quoting; absolute images/s are not.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

INFER_VARIANTS = ("eager", "fused", "fused-nchw", "compiled", "onnx")
TRAIN_VARIANTS = ("eager", "fast", "fast-compiled", "fast-bf16")


@dataclass
class Candidate:
    """One thing to time: ``step()`` processes ``images`` images (one batch)."""

    label: str
    step: Callable[[], object]
    images: int
    flop_per_image: float | None = None  # FLOPs (2 x MACs) per image of one step, when known
    cleanup: Callable[[], None] | None = None


@dataclass
class Result:
    label: str
    batch_size: int
    images_per_s_median: float
    images_per_s_min: float
    images_per_s_max: float
    latency_ms_p50: float
    latency_ms_p90: float
    repeats: int
    gflops: float | None = None  # achieved GFLOP/s at the median
    times_s: list[float] = field(default_factory=list)


# -- timing ---------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(candidates: list[Candidate], *, warmup: int = 2, repeats: int = 10,
                     device: torch.device | str = "cpu") -> dict[str, list[float]]:
    """Seconds per step of each candidate: ``warmup`` untimed steps each, then ``repeats`` rounds A, B, C, ..."""
    device = torch.device(device)
    for c in candidates:
        for _ in range(warmup):
            c.step()
        _sync(device)
    times: dict[str, list[float]] = {c.label: [] for c in candidates}
    for _ in range(repeats):
        for c in candidates:
            start = time.perf_counter()
            c.step()
            _sync(device)
            times[c.label].append(time.perf_counter() - start)
    return times


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, ``q`` in [0, 100] (numpy's default method)."""
    import numpy as np

    return float(np.percentile(values, q))


def summarize(candidate: Candidate, times: list[float], batch_size: int) -> Result:
    """images/s (median, min, max over repetitions) and per-batch latency (p50, p90)."""
    rates = [candidate.images / t for t in times]
    median = statistics.median(rates)
    gflops = median * candidate.flop_per_image / 1e9 if candidate.flop_per_image else None
    return Result(candidate.label, batch_size, median, min(rates), max(rates), percentile(times, 50) * 1e3,
                  percentile(times, 90) * 1e3, len(times), gflops, [round(t, 6) for t in times])


def run_benchmark(candidates: list[Candidate], batch_size: int, *, warmup: int = 2, repeats: int = 10,
                  device: torch.device | str = "cpu") -> list[Result]:
    """Time ``candidates`` interleaved and summarise each (see :func:`time_interleaved`)."""
    times = time_interleaved(candidates, warmup=warmup, repeats=repeats, device=device)
    return [summarize(c, times[c.label], batch_size) for c in candidates]


# -- what to time -----------------------------------------------------------------------------------
def build_reference(spec: str, num_classes: int = 1000) -> nn.Module:
    """A model from a MODEL spec, resolved like ``backbonekit profile``'s: ``darknet53`` (backbonekit,
    also ``backbonekit:darknet53``), ``timm:NAME``, ``torchvision:NAME`` or ``module.path:callable`` (built as it comes); unknown names raise
    KeyError."""
    from .profiler import resolve_model

    spec = spec.removeprefix("backbonekit:")
    is_callable = ":" in spec and spec.partition(":")[0] not in ("timm", "torchvision")
    return resolve_model(spec, num_classes=None if is_callable else num_classes)[0]


def flop_per_image(model: nn.Module, input_size: int, *, train: bool = False,
                   in_chans: int = 3) -> float:
    """FLOPs (2 x MACs) of one image through ``model``, counted by ``torch.utils.flop_counter``
    (forward only, or forward + backward with ``train``)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    x = torch.randn(2, in_chans, input_size, input_size, device=device)  # batch 2: train-mode BN needs > 1
    was_training = model.training
    counter = FlopCounterMode(display=False)
    try:
        model.train(train)
        with counter:
            if train:
                model(x).float().sum().backward()
            else:
                with torch.no_grad():
                    model(x)
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


def infer_candidate(model: nn.Module, label: str, variant: str, x: torch.Tensor,
                    flops: float | None) -> Candidate:
    """An inference candidate: ``eager`` (eval mode), ``fused`` (folded + channels_last where faster),
    ``fused-nchw`` (folded, NCHW), ``compiled`` (folded + ``torch.compile`` with freezing), ``onnx``
    (ONNX Runtime on CPU with as many threads as torch)."""
    from .optimize import optimize_for_inference

    model = model.eval()
    if variant == "onnx":
        return _onnx_candidate(model, label, x, flops)
    if variant == "fused":
        model = optimize_for_inference(model)
    elif variant == "fused-nchw":
        model = optimize_for_inference(model, channels_last=False)
    elif variant == "compiled":
        model = optimize_for_inference(model, compile=True)
    elif variant != "eager":
        raise ValueError(f"inference variant must be one of {', '.join(INFER_VARIANTS)}, found {variant!r}")

    def step() -> object:
        with torch.no_grad():
            return model(x)

    return Candidate(label, step, x.shape[0], flops)


def _onnx_candidate(model: nn.Module, label: str, x: torch.Tensor, flops: float | None) -> Candidate:
    import onnxruntime as ort

    from .export import export_model

    folder = tempfile.mkdtemp(prefix="backbonekit-bench-")
    path = export_model(model, Path(folder) / "model.onnx", input_size=x.shape[-1], batch_size=x.shape[0])
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":  # the same no-spin waiting as torch's threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.cpu().numpy()}

    def cleanup() -> None:
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            os.rmdir(folder)

    return Candidate(label, lambda: session.run(None, feed), x.shape[0], flops, cleanup)


def train_candidate(model: nn.Module, label: str, variant: str, x: torch.Tensor, y: torch.Tensor,
                    flops: float | None, lr: float = 1e-3) -> Candidate:
    """A training step (forward, cross-entropy, backward, Adam step) on a fixed batch.

    ``eager``: ``torch.optim.Adam`` defaults, as the seed's loop does. ``fast``:
    :func:`backbonekit.optimize.prepare_for_training` + :func:`backbonekit.optimize.fast_adam`.
    ``fast-compiled``: the same with the forward and backward compiled by ``torch.compile``.
    ``fast-bf16``: ``fast`` with :func:`backbonekit.optimize.training_autocast` (mixed precision).
    """
    from .optimize import compile_for_training, fast_adam, prepare_for_training, training_autocast

    model = model.train()
    if variant == "eager":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        forward: Callable = model
    elif variant in ("fast", "fast-compiled", "fast-bf16"):
        prepare_for_training(model)
        optimizer = fast_adam(model.parameters(), lr=lr)
        forward = compile_for_training(model) if variant == "fast-compiled" else model
    else:
        raise ValueError(f"training variant must be one of {', '.join(TRAIN_VARIANTS)}, found {variant!r}")

    autocast = variant == "fast-bf16"

    def step() -> object:
        optimizer.zero_grad(set_to_none=True)
        with training_autocast(x.device, enabled=autocast):
            loss = F.cross_entropy(forward(x), y)
        loss.backward()
        optimizer.step()
        return loss

    return Candidate(label, step, x.shape[0], flops)


def make_candidates(specs: list[str], variants: list[str], *, mode: str, input_size: int, batch_size: int,
                    num_classes: int, device: torch.device, compare: list[str]) -> list[Candidate]:
    """Our models in each variant, then each ``compare`` spec in eager mode."""
    torch.manual_seed(0)
    x = torch.randn(batch_size, 3, input_size, input_size, device=device)
    y = torch.randint(0, max(num_classes, 1), (batch_size,), device=device)
    candidates = []
    entries = [(spec, v) for spec in specs for v in variants] + [(spec, "eager") for spec in compare]
    for spec, variant in entries:
        model = build_reference(spec, num_classes).to(device)
        flops = flop_per_image(model, input_size, train=mode == "train")
        label = f"{spec} {variant}"
        if mode == "train":
            candidates.append(train_candidate(model, label, variant, x, y, flops))
        else:
            candidates.append(infer_candidate(model, label, variant, x, flops))
    return candidates


# -- the machine's reference point ---------------------------------------------------------------------
def matmul_gflops(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Best fp32 matmul GFLOP/s of numpy and of torch on this CPU (an n x n x n product is 2 n^3 FLOPs)."""
    import numpy as np

    a_np = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    a_t = torch.from_numpy(a_np.copy())
    best = {}
    for name, op in (("numpy", lambda: a_np @ a_np), ("torch", lambda: torch.mm(a_t, a_t))):
        op()
        fastest = min(_timed(op) for _ in range(repeats))
        best[name] = 2 * n**3 / fastest / 1e9
    return best


def matmul_candidates(n: int = 2048, per_step: int = 4) -> list[Candidate]:
    """fp32 n x n x n matrix products (numpy and torch) as candidates, so that the machine's reference
    GFLOP/s is measured interleaved with the models, under the same load. One "image" = one product."""
    import numpy as np

    a_np = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    a_t = torch.from_numpy(a_np.copy())

    def numpy_step() -> object:
        return [a_np @ a_np for _ in range(per_step)]

    def torch_step() -> object:
        return [torch.mm(a_t, a_t) for _ in range(per_step)]

    return [Candidate(f"numpy fp32 matmul {n}", numpy_step, per_step, 2 * n**3),
            Candidate(f"torch fp32 matmul {n}", torch_step, per_step, 2 * n**3)]


def _timed(op: Callable[[], object]) -> float:
    start = time.perf_counter()
    op()
    return time.perf_counter() - start


def environment(device: torch.device) -> dict[str, object]:
    """What the figures depend on: device, threads, versions, load."""
    env: dict[str, object] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if hasattr(os, "getloadavg"):
        env["load_average_1_5_15"] = [round(v, 2) for v in os.getloadavg()]
    return env


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


# -- the whole benchmark ---------------------------------------------------------------------------------
DEFAULT_VARIANTS = {"infer": ("eager", "fused"), "train": ("eager", "fast")}


def check_options(models: Sequence[str], *, mode: str, variants: Sequence[str], compare: Sequence[str],
                  input_size: int, batch_sizes: Sequence[int], repeats: int, warmup: int, threads: int | None,
                  device: str) -> torch.device:
    """Raise one ValueError line for options no benchmark can run with; return the device."""
    if mode not in DEFAULT_VARIANTS:
        raise ValueError(f"mode must be infer or train, found {mode!r}")
    allowed = TRAIN_VARIANTS if mode == "train" else INFER_VARIANTS
    bad = [v for v in variants if v not in allowed]
    if bad:
        raise ValueError(f"--variant for --mode {mode} must be among {', '.join(allowed)}, found {', '.join(bad)}")
    if not models or not batch_sizes:
        raise ValueError("expected at least one model and one batch size, found none")
    if repeats < 1 or warmup < 0 or input_size < 1 or min(batch_sizes) < 1:
        raise ValueError("--repeats, --input-size and --batch-size must be positive and --warmup >= 0")
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, found {threads}")
    specs = list(models) + list(compare)
    repeated = sorted({m for m in specs if specs.count(m) > 1} | {v for v in variants if list(variants).count(v) > 1})
    if repeated:
        raise ValueError(f"each model and variant may be named once, found {', '.join(repeated)} more than once")
    if mode == "train" and min(batch_sizes) < 2:
        raise ValueError(f"--mode train needs --batch-size >= 2 (BatchNorm), found {min(batch_sizes)}")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device must be cpu or cuda[:N], found {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda[:N], found {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch finds no CUDA device")
    if "onnx" in variants and dev.type != "cpu":
        raise ValueError(f"the onnx variant runs on the CPU only, found --device {device}")
    return dev


def benchmark(models: Sequence[str], *, mode: str = "infer", variants: Sequence[str] | None = None,
              compare: Sequence[str] = (), input_size: int = 256, batch_sizes: Sequence[int] = (1, 8),
              num_classes: int = 1000, repeats: int = 10, warmup: int = 2, threads: int | None = None,
              device: str = "cpu", matmul_peak: bool = False) -> dict[str, object]:
    """``backbonekit bench``: every model in every variant, then each ``compare`` spec eager, timed
    interleaved at each batch size; returns the report (environment, baseline, one result per candidate).

    ``variants`` default to ``eager fused`` (infer) or ``eager fast`` (train). The baseline of the ratios is
    the first ``compare`` spec, else the first model in the first variant. ``threads`` sets torch's (and
    ONNX Runtime's) threads for the rest of the process.
    """
    from .models import model_entrypoint

    variants = list(variants) if variants is not None else list(DEFAULT_VARIANTS.get(mode, ()))
    dev = check_options(models, mode=mode, variants=variants, compare=compare, input_size=input_size,
                        batch_sizes=batch_sizes, repeats=repeats, warmup=warmup, threads=threads, device=device)
    for name in models:
        model_entrypoint(name)  # KeyError with close matches, before any work
    if threads:
        torch.set_num_threads(threads)
    baseline = f"{compare[0]} eager" if compare else f"{models[0]} {variants[0]}"
    results: list[dict] = []
    report: dict[str, object] = {"environment": environment(dev), "mode": mode, "input_size": input_size,
                                 "baseline": baseline, "results": results}
    if matmul_peak:
        report["matmul_gflops"] = matmul_gflops()
    for batch in batch_sizes:
        candidates = make_candidates(list(models), variants, mode=mode, input_size=input_size, batch_size=batch,
                                     num_classes=num_classes, device=dev, compare=list(compare))
        try:
            results.extend(asdict(r) for r in run_benchmark(candidates, batch, warmup=warmup, repeats=repeats,
                                                            device=dev))
        finally:
            for c in candidates:
                if c.cleanup:
                    c.cleanup()
    return report


def format_table(report: dict) -> str:
    """The report of :func:`benchmark` as a table, with each median relative to the baseline's."""
    env = report["environment"]
    lines = [f"{report['mode']} at {report['input_size']}x{report['input_size']} on {env['device']}, "
             f"{env['torch_threads']} threads, torch {env['torch']}"
             + (f", load {env['load_average_1_5_15']}" if "load_average_1_5_15" in env else "")]
    if "matmul_gflops" in report:
        lines.append("fp32 matmul GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in report["matmul_gflops"].items()))
    baseline = report.get("baseline")
    lines.append(f"{'model':<34} {'batch':>5} {'img/s med':>10} {'min':>8} {'max':>8} {'p50 ms':>9} "
                 f"{'p90 ms':>9} {'GFLOP/s':>8} {'ratio':>6}")
    reference = {r["batch_size"]: r["images_per_s_median"] for r in report["results"] if r["label"] == baseline}
    for r in report["results"]:
        gflops = f"{r['gflops']:8.1f}" if r["gflops"] else f"{'-':>8}"
        ratio = r["images_per_s_median"] / reference[r["batch_size"]] if r["batch_size"] in reference else 1.0
        lines.append(f"{r['label']:<34} {r['batch_size']:>5} {r['images_per_s_median']:>10.1f} "
                     f"{r['images_per_s_min']:>8.1f} {r['images_per_s_max']:>8.1f} {r['latency_ms_p50']:>9.1f} "
                     f"{r['latency_ms_p90']:>9.1f} {gflops} {ratio:>5.2f}x")
    if baseline:
        lines.append(f"ratio: median images/s relative to {baseline} at the same batch size")
    return "\n".join(lines)

"""``backbonekit bench``: interleaved timing, honest summaries, FLOP counts against published figures."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from backbonekit import cli
from backbonekit.bench import (Candidate, benchmark, build_reference, flop_per_image, summarize, time_interleaved,
                               train_candidate)


def test_repetitions_are_interleaved_after_warmup():
    calls: list[str] = []
    candidates = [Candidate(name, lambda name=name: calls.append(name), images=4) for name in "abc"]
    times = time_interleaved(candidates, warmup=2, repeats=3)
    assert calls[:6] == list("aabbcc")  # warm-up, each candidate on its own
    assert calls[6:] == list("abc") * 3  # timed rounds
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}


def test_summary_against_numpy():
    times = [0.5, 0.25, 1.0, 0.4]
    result = summarize(Candidate("x", lambda: None, images=8, flop_per_image=1e9), times, batch_size=8)
    rates = 8 / np.array(times)
    assert result.images_per_s_median == pytest.approx(np.median(rates))
    assert (result.images_per_s_min, result.images_per_s_max) == pytest.approx((rates.min(), rates.max()))
    assert result.latency_ms_p90 == pytest.approx(np.percentile(times, 90) * 1e3)
    assert result.gflops == pytest.approx(np.median(rates))  # 1 GFLOP per image


def test_flop_count_matches_torchvision_published_macs():
    model = build_reference("torchvision:resnet50")
    assert flop_per_image(model, 224) / 2 / 1e9 == pytest.approx(4.089, rel=0.01)  # ResNet50_Weights meta _ops


def test_cli_bench_json(capsys):
    argv = ["bench", "resnet18", "--input-size", "32", "--batch-size", "2", "--repeats", "2", "--warmup", "1",
            "--variant", "eager", "fused", "--compare", "torchvision:resnet18", "--format", "json"]
    assert cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["label"] for r in report["results"]] == ["resnet18 eager", "resnet18 fused", "torchvision:resnet18 eager"]
    assert report["baseline"] == "torchvision:resnet18 eager"  # the first --compare spec
    for r in report["results"]:
        assert r["repeats"] == 2 and r["batch_size"] == 2 and len(r["times_s"]) == 2
        rates = 2 / np.array(r["times_s"])  # the summary is computed from the times the report lists
        assert r["images_per_s_median"] == pytest.approx(np.median(rates), rel=1e-2)
        assert (r["images_per_s_min"], r["images_per_s_max"]) == pytest.approx((rates.min(), rates.max()), rel=1e-2)
    assert report["environment"]["torch_threads"] == torch.get_num_threads()


def test_train_candidate_steps_train_the_model():
    """Each step of a training candidate is a real optimizer step: the loss on its fixed batch falls."""
    torch.manual_seed(0)
    model = build_reference("resnet18", num_classes=4)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    for variant in ("eager", "fast"):
        candidate = train_candidate(copy.deepcopy(model), f"r18 {variant}", variant, x, y, None, lr=1e-3)
        losses = [float(candidate.step().detach()) for _ in range(8)]
        assert losses[-1] < 0.5 * losses[0], (variant, losses)


def test_benchmark_api_validates_its_own_arguments():
    """The checks live in the library function, not in the command line."""
    with pytest.raises(ValueError, match="--variant for --mode train must be among"):
        benchmark(["resnet18"], mode="train", variants=["fused"])
    with pytest.raises(ValueError, match="needs --batch-size >= 2"):
        benchmark(["resnet18"], mode="train", batch_sizes=[1])
    with pytest.raises(KeyError, match="resnet99"):
        benchmark(["resnet99"])


def test_cli_bench_train_mode_runs(capsys):
    argv = ["bench", "resnet18", "--mode", "train", "--input-size", "32", "--batch-size", "2", "--repeats", "1",
            "--warmup", "0", "--num-classes", "10"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "resnet18 eager" in out and "resnet18 fast" in out


@pytest.mark.parametrize("argv,message", [
    (["bench", "resnet18", "--variant", "fast"], "--variant for --mode infer must be among"),
    (["bench", "resnet18", "--compare", "keras:resnet50", "--input-size", "32", "--batch-size", "2"],
     "cannot import module 'keras'"),
    (["bench", "resnet99"], "resnet99"),
    (["bench", "resnet18", "--mode", "train", "--batch-size", "1"], "needs --batch-size >= 2"),
    (["bench", "resnet18", "--device", "gpu"], "--device must be cpu or cuda"),
])
def test_cli_bench_bad_input_is_one_line(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize("argv,message", [
    (["bench", "resnet18", "--compare", "resnet18"], "named once, found resnet18 more than once"),
    (["bench", "resnet18", "--threads", "-1"], "--threads must be >= 1, found -1"),
    (["bench", "resnet18", "--compare", "timm:nonexist", "--input-size", "32", "--batch-size", "2", "--repeats", "1"],
     "unknown timm model 'nonexist'"),
])
def test_cli_bench_more_bad_input(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1

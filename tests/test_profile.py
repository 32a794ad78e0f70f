"""``backbonekit profile``: parameters and MACs against seed 002's figures, fvcore and thop.

References: fvcore's per-operator counts (one flop per multiply-add, so its conv + linear + matmul
counts are MACs), thop's totals (MACs plus BatchNorm and pooling), seed 002's thop/torchsummaryX
figures for the Darknet-53 backbone at 416x416, and hand-computed tensor sizes for activation memory.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import backbonekit
from backbonekit import cli
from backbonekit import profiler
from backbonekit.profiler import estimate_forward_bytes, parse_input_size, profile, profile_model

SEED_002_BACKBONE_MACS_416 = 24_515_805_184  # seed 002 (thop of its day, torchsummaryX: conv only)
SEED_002_BACKBONE_PARAMS = 40_584_928
THOP_TODAY_BACKBONE_416 = 24_646_635_520  # today's thop adds 2 ops per BatchNorm output element
MAC_OPERATORS = ("conv", "linear", "addmm", "matmul", "bmm", "einsum")
SRC = Path(__file__).resolve().parents[1] / "src"


def fvcore_macs(model: nn.Module, x: torch.Tensor) -> int:
    """fvcore's conv + linear + matmul count (it counts one multiply-add as one flop)."""
    fvcore_nn = pytest.importorskip("fvcore.nn")  # skips only the tests that compare against fvcore
    analysis = fvcore_nn.FlopCountAnalysis(copy.deepcopy(model).eval(), x)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    by_operator = analysis.by_operator()
    return sum(count for op, count in by_operator.items() if op in MAC_OPERATORS)


def thop_macs_params(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    thop = pytest.importorskip("thop")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        macs, params = thop.profile(copy.deepcopy(model).eval(), inputs=(x,), verbose=False)
    return int(macs), int(params)


def hooks_left(model: nn.Module) -> list[str]:
    hook_dicts = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return [f"{name}.{attr}" for name, m in model.named_modules() for attr in hook_dicts if getattr(m, attr)]


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = cli.main(["profile", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- seed 002's Darknet-53 figures, exactly ---------------------------------------------------
@pytest.mark.slow
def test_darknet53_backbone_416_matches_seed_002_and_todays_thop(capsys):
    model = backbonekit.create_model("darknet53", num_classes=0)
    result = profile_model(model, 416)
    assert result.macs == SEED_002_BACKBONE_MACS_416
    assert result.flops == 2 * SEED_002_BACKBONE_MACS_416
    assert result.params == result.trainable_params == SEED_002_BACKBONE_PARAMS

    # the same backbone as a feature extractor (a list output, no pooling head), through the CLI
    code, out, err = run_cli(capsys, "darknet53", "--features-only", "--input-size", "416", "--format", "json")
    assert code == 0 and err == ""
    report = json.loads(out)
    assert (report["macs"], report["params"]) == (SEED_002_BACKBONE_MACS_416, SEED_002_BACKBONE_PARAMS)
    assert report["output_shape"] == [[1, 256, 52, 52], [1, 512, 26, 26], [1, 1024, 13, 13]]

    # what today's thop prints for that extractor: our MACs plus BatchNorm (documented in docs/profiling.md)
    features = backbonekit.create_model("darknet53", features_only=True)
    thop_figures = thop_macs_params(features, torch.randn(1, 3, 416, 416))
    assert thop_figures == (THOP_TODAY_BACKBONE_416, SEED_002_BACKBONE_PARAMS)


# -- every registered model against fvcore and thop --------------------------------------------
@pytest.mark.parametrize("name", backbonekit.list_models())
def test_registered_models_agree_with_fvcore_and_thop(name):
    model = backbonekit.create_model(name)
    size = 64  # small input: the counts are formulas of the shapes, so any size checks the same code
    result = profile_model(model, size)
    x = torch.randn(1, 3, size, size)
    reference = fvcore_macs(model, x)
    assert abs(result.macs - reference) <= 0.001 * reference
    thop_macs, thop_params = thop_macs_params(model, x)
    assert result.params == thop_params
    assert result.macs <= thop_macs <= 1.02 * result.macs  # thop adds BatchNorm and pooling on top


def test_native_size_matches_published_gmacs():
    """At its published input size, resnet18's count is torchvision's 1.814 G ``_ops``."""
    result = profile("resnet18")
    assert result.input_size == (224, 224)
    assert round(result.macs / 1e9, 3) == 1.814


def test_depthwise_and_grouped_convs_agree_with_fvcore_mobilenet_v3_small():
    model = torchvision.models.mobilenet_v3_small()
    result = profile_model(model, 224)
    x = torch.randn(1, 3, 224, 224)
    reference = fvcore_macs(model, x)
    assert abs(result.macs - reference) <= 0.001 * reference
    thop_macs, thop_params = thop_macs_params(model, x)
    assert result.params == thop_params
    assert thop_macs > 1.05 * result.macs  # BatchNorm, hardswish, SE pooling: thop is ~10% higher here


def test_grouped_conv_resnext_and_timm_model_agree_with_fvcore():
    for model in (torchvision.models.resnext50_32x4d(), pytest.importorskip("timm").create_model("darknet53")):
        x = torch.randn(1, 3, 64, 64)
        assert profile_model(model, 64).macs == pytest.approx(fvcore_macs(model, x), rel=1e-3)


class FunctionalMatmul(nn.Module):
    """Linear layers called functionally and a matmul: hook-based counters miss these."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 32)
        self.shared = nn.Linear(32, 32)
        self.conv = nn.Conv2d(3, 16, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.conv(x).flatten(2).transpose(1, 2)  # (N, HW, 16)
        q = self.proj(tokens)
        k = torch.nn.functional.linear(tokens, self.proj.weight)
        attn = torch.matmul(q, k.transpose(1, 2))  # (N, HW, HW)
        return self.shared(self.shared(attn @ q))  # one module called twice


def test_matmul_functional_and_reused_modules_agree_with_fvcore():
    model = FunctionalMatmul()
    result = profile_model(model, 8, batch_size=2)
    assert result.macs == fvcore_macs(model, torch.randn(2, 3, 8, 8))
    layers = {layer.name: layer for layer in result.layers}
    assert layers["shared"].calls == 2
    assert layers["shared"].macs == 2 * 2 * 64 * 32 * 32  # two calls, batch 2, 64 tokens, 32x32 weights
    assert result.params == 16 * 3 * 9 + 16 + 32 * 16 + 32 + 32 * 32 + 32


def test_counts_under_inference_mode():
    """Some torch releases' FlopCounterMode counts 0 under inference_mode (pytorch#126268); we must not."""
    model = torchvision.models.resnet18()
    with torch.inference_mode():
        result = profile_model(model, 64)
    assert result.macs == fvcore_macs(model, torch.randn(1, 3, 64, 64))


def test_shared_parameters_count_once():
    model = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 1))
    model[2].weight = model[0].weight  # tied weights
    result = profile_model(model, 1, in_chans=8)
    assert result.params == 8 * 8 + 8 + 8 == pytest.importorskip("fvcore.nn").parameter_count(model)[""]


def test_trainable_params_exclude_frozen_stages():
    model = backbonekit.create_model("resnet18", frozen_stages=1)
    result = profile_model(model, 64)
    frozen = sum(p.numel() for m in (model.conv1, model.bn1, model.layer1) for p in m.parameters())
    assert result.trainable_params == result.params - frozen
    assert result.weight_bytes == 4 * result.params  # float32


# -- the model is left as it was --------------------------------------------------------------
def test_profiling_leaves_model_unchanged():
    model = backbonekit.create_model("resnet18", frozen_stages=1)
    model.train()  # frozen stem and layer1 stay in eval mode: a mixed state to restore exactly
    modes = {name: m.training for name, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    profile_model(model, 64)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # BN running stats too
    assert hooks_left(model) == []
    assert not torch.nn.modules.module._global_forward_hooks
    assert not torch.nn.modules.module._global_forward_pre_hooks


def test_failing_forward_leaves_no_hooks_and_gives_one_line_error():
    model = torchvision.models.resnet18()
    model.train()
    with pytest.raises(ValueError, match="forward failed") as info:
        profile_model(model, 64, in_chans=4)  # wrong channels: a RuntimeError deep in conv2d
    assert "\n" not in str(info.value)
    assert hooks_left(model) == [] and model.training and model.bn1.training


def test_features_only_list_output_per_level():
    model = backbonekit.create_model("resnet50", features_only=True, out_indices=(1, 2, 3, 4))
    result = profile_model(model, 64)
    with torch.no_grad():
        expected = [list(t.shape) for t in model.eval()(torch.randn(1, 3, 64, 64))]
    assert result.output_shape == expected
    assert result.macs == pytest.approx(fvcore_macs(model, torch.randn(1, 3, 64, 64)), rel=1e-3)


# -- activation memory ------------------------------------------------------------------------
def test_peak_activation_memory_of_a_conv_chain():
    """Two convs: the peak is both outputs alive at once (float32), and it scales with the batch."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1), nn.Conv2d(16, 4, 1))
    one = profile_model(model, 32, batch_size=1)
    assert one.peak_activation_bytes == (8 + 16) * 32 * 32 * 4
    assert profile_model(model, 32, batch_size=3).peak_activation_bytes == 3 * one.peak_activation_bytes


def test_activation_estimate_of_a_conv_chain_is_computed_without_allocating():
    """The meta-device estimate: the input plus the same peak as the real forward, by hand."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1), nn.Conv2d(16, 4, 1))
    assert estimate_forward_bytes(model, (1, 3, 32, 32), torch.float32) == (3 + 8 + 16) * 32 * 32 * 4
    huge = estimate_forward_bytes(model, (1, 3, 100_000, 100_000), torch.float32)  # 1 TB: only shapes exist
    assert huge == (3 + 8 + 16) * 100_000 * 100_000 * 4


@pytest.mark.parametrize("name", ["resnet18", "darknet53"])
def test_activation_estimate_matches_the_measured_peak(name):
    model = backbonekit.create_model(name)
    measured = profile_model(model, 64, batch_size=2).peak_activation_bytes + 2 * 3 * 64 * 64 * 4
    assert estimate_forward_bytes(model, (2, 3, 64, 64), torch.float32) == pytest.approx(measured, rel=0.01)


def test_input_that_cannot_fit_is_refused_before_allocating(capsys):
    code, out, err = run_cli(capsys, "resnet18", "--input-size", "100000")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "expected at most" in err and "found an estimated" in err and "GiB" in err
    # the estimate, not the input alone, decides: 1 MiB of memory cannot hold resnet18's 224x224 activations
    model = backbonekit.create_model("resnet18")
    needed = estimate_forward_bytes(model, (1, 3, 224, 224), torch.float32)
    assert needed > 3 * 224 * 224 * 4
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(profiler, "available_memory", lambda device: needed - 1)
        with pytest.raises(ValueError, match=r"expected at most .* GiB .*found an estimated"):
            profile_model(model, 224)
        patch.setattr(profiler, "available_memory", lambda device: needed)
        assert profile_model(model, 224).peak_activation_bytes > 0


def test_registered_models_check_their_own_input_before_profiling():
    """One input check (``Backbone.check_input``): wrong channels get its line, not a failed forward."""
    with pytest.raises(ValueError, match="expected 3 input channels, found 4"):
        profile_model(backbonekit.create_model("resnet18"), 64, in_chans=4)


# -- input sizes ------------------------------------------------------------------------------
@pytest.mark.parametrize("values, expected", [
    (None, (256, 256)), ("416", (416, 416)), (["416", "320"], (416, 320)), ("416x320", (416, 320)), (64, (64, 64)),
])
def test_parse_input_size(values, expected):
    assert parse_input_size(values, 256) == expected


@pytest.mark.parametrize("values", ["abc", ["1", "2", "3"], "0", "-5", "4.5", ""])
def test_parse_input_size_rejects(values):
    with pytest.raises(ValueError, match="--input-size"):
        parse_input_size(values, None)


# -- command line -----------------------------------------------------------------------------
def test_cli_json_rectangular_input_and_batch(capsys):
    code, out, err = run_cli(capsys, "resnet18", "--input-size", "64", "96", "--batch-size", "2",
                             "--format", "json", "--depth", "1")
    assert code == 0 and err == ""
    report = json.loads(out)
    for key in ("model", "input_size", "params", "trainable_params", "macs", "flops", "layers"):
        assert key in report
    assert report["input_size"] == [64, 96]
    assert report["macs"] == fvcore_macs(torchvision.models.resnet18(), torch.randn(2, 3, 64, 96))
    assert report["flops"] == 2 * report["macs"]
    assert all(isinstance(report[k], int) for k in ("params", "trainable_params", "macs", "flops"))
    names = [layer["name"] for layer in report["layers"]]
    assert names == [name for name, _ in torchvision.models.resnet18().named_children()]  # depth 1
    conv1 = report["layers"][0]
    assert set(conv1) >= {"name", "type", "output_shape", "params", "macs"}
    assert conv1["output_shape"] == [2, 64, 32, 48] and conv1["type"] == "Conv2d"


def test_cli_table_csv_markdown(capsys):
    code, out, _ = run_cli(capsys, "torchvision:mobilenet_v3_small", "--input-size", "64", "--depth", "1")
    assert code == 0
    assert "features" in out and "MACs" in out and "FLOPs (2 x MACs)" in out and "peak activations" in out

    code, out, _ = run_cli(capsys, "torchvision.models:mobilenet_v3_small", "--input-size", "64",
                           "--format", "csv", "--depth", "2")
    rows = list(csv.DictReader(io.StringIO(out)))
    expected = [n for n, _ in torchvision.models.mobilenet_v3_small().named_modules() if n and n.count(".") < 2]
    assert code == 0 and [row["name"] for row in rows] == expected

    code, out, _ = run_cli(capsys, "darknet53", "--input-size", "64", "--format", "markdown", "--depth", "0")
    assert code == 0 and out.startswith("| darknet53 |") and "| MACs |" in out


@pytest.mark.parametrize("args, message", [
    (["nosuchnet"], "unknown model 'nosuchnet'"),
    (["darknet53", "--input-size", "abc"], "expected --input-size"),
    (["darknet53", "--input-size", "416", "320", "1"], "expected --input-size"),
    (["darknet53", "--input-size", "16"], "smaller than the network's total stride 32"),
    (["detnet59", "--input-size", "8", "64"], "smaller than the network's total stride 16"),
    (["resnet18", "--input-size", "100000"], "expected at most"),
    (["os:getcwd"], "must return a torch.nn.Module, found str"),
    (["no_such_module_xyz:build"], "cannot import module"),
    (["torchvision:nosuchnet"], "unknown torchvision model"),
    (["timm:nosuchnet"], "unknown timm model"),
    (["resnet18", "--batch-size", "0"], "expected --batch-size"),
    (["resnet18", "--depth", "two"], "expected --depth"),
])
def test_cli_bad_input_one_line_exit_2(capsys, args, message):
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and out == ""
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_subprocess_exit_code_and_one_line_stderr():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "backbonekit", "profile", "darknet53", "--input-size", "20"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "smaller than the network's total stride 32" in lines[0]

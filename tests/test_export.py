"""Exported files compute what the PyTorch model computes: ONNX Runtime and TorchScript against eager PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import backbonekit as bk
from backbonekit import cli
from backbonekit.checkpoint import atomic_save
from backbonekit.export import export_model
from helpers import with_random_bn_statistics

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

SMALL = 64
HEAVY = {"darknet53", "resnet101", "resnet152"}  # > 10 s to export on 2 busy cores
MODELS = [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in bk.list_models()]


def run_onnx(path, x: torch.Tensor) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})


def assert_same(actual, expected: torch.Tensor) -> None:
    actual = torch.as_tensor(np.asarray(actual))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


@pytest.mark.parametrize("name", MODELS)
def test_onnx_runtime_matches_pytorch(name, tmp_path):
    model = with_random_bn_statistics(bk.create_model(name, num_classes=10))
    x = torch.randn(3, 3, SMALL, SMALL)  # batch 3: not the traced batch, so the dynamic axis is exercised
    with torch.no_grad():
        expected = model(x)
    path = export_model(model, tmp_path / f"{name}.onnx", input_size=SMALL, dynamic_batch=True)
    (actual,) = run_onnx(path, x)
    assert_same(actual, expected)


def test_onnx_features_only_has_one_output_per_level(tmp_path):
    model = with_random_bn_statistics(bk.create_model("darknet53", features_only=True, out_indices=(2, 3, 4)))
    x = torch.randn(1, 3, SMALL, SMALL)
    with torch.no_grad():
        expected = model(x)
    path = export_model(model, tmp_path / "f.onnx", input_size=SMALL)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["features_2", "features_3", "features_4"]
    for actual, e in zip(run_onnx(path, x), expected):
        assert_same(actual, e)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
@pytest.mark.parametrize("name", [pytest.param("darknet53", marks=pytest.mark.slow), "resnet18"])
def test_torchscript_loads_and_matches(name, tmp_path):
    model = with_random_bn_statistics(bk.create_model(name, num_classes=10))
    x = torch.randn(2, 3, SMALL, SMALL)
    with torch.no_grad():
        expected = model(x)
    path = export_model(model, tmp_path / f"{name}.pt", format="torchscript", input_size=SMALL)
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        assert_same(loaded(x), expected)
        assert loaded(torch.randn(5, 3, SMALL, SMALL)).shape == (5, 10)


def test_cli_export_with_weights_uses_their_classes(tmp_path, capsys):
    model = with_random_bn_statistics(bk.create_model("resnet18", num_classes=7))
    weights = tmp_path / "w.pt"
    atomic_save({"format": "backbonekit", "model": "resnet18", "model_kwargs": {}, "state_dict": model.state_dict()},
                weights)
    out = tmp_path / "r18.onnx"
    assert cli.main(["export", "resnet18", "--weights", str(weights), "--input-size", str(SMALL), "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    x = torch.randn(1, 3, SMALL, SMALL)
    with torch.no_grad():
        expected = model(x)
    (actual,) = run_onnx(out, x)
    assert actual.shape == (1, 7)
    assert_same(actual, expected)
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


@pytest.mark.parametrize("argv,message", [
    (["export", "darknet53", "--input-size", "16"], "smaller than the network's total stride 32"),
    (["export", "darknet99"], "darknet99"),
    (["export", "resnet18", "--input-size", "64", "-o", "/nonexistent/dir/x.onnx"], "does not exist"),
])
def test_cli_export_bad_input_is_one_line(argv, message, tmp_path, capsys):
    if "-o" not in argv:
        argv = argv + ["-o", str(tmp_path / "x.onnx")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_export_writes_atomically_with_the_usual_mode(tmp_path):
    path = export_model(bk.create_model("resnet18", num_classes=3), tmp_path / "r18.pt", format="torchscript",
                        input_size=32)
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)  # mkstemp's private mode is not left on the file
    assert [p.name for p in tmp_path.iterdir()] == ["r18.pt"]  # no temporary file left behind
    with pytest.raises(ValueError, match="expected a file path to write, found a folder"):
        export_model(bk.create_model("resnet18", num_classes=3), tmp_path, format="torchscript", input_size=32)

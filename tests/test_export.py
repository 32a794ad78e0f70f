"""Exported files compute what the PyTorch model computes: ONNX Runtime and TorchScript against eager PyTorch."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

import backbonekit as bk
from backbonekit import cli
from backbonekit.checkpoint import atomic_save
from backbonekit.export import build_for_export, export_model, exported_here
from helpers import with_random_bn_statistics

# only the ONNX tests need the export extra; TorchScript and argument checks run without it
needs_onnx = pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript")),
                                reason="needs onnx, onnxruntime and onnxscript (pip install 'backbonekit[export]')")

SMALL = 64
HEAVY = {"darknet53", "resnet101", "resnet152"}  # > 10 s to export on 2 busy cores
MODELS = [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in bk.list_models()]


def run_onnx(path, x: torch.Tensor) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})


def assert_same(actual, expected: torch.Tensor) -> None:
    actual = torch.as_tensor(np.asarray(actual))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


@needs_onnx
@pytest.mark.parametrize("name", MODELS)
def test_onnx_runtime_matches_pytorch(name, tmp_path):
    model = with_random_bn_statistics(bk.create_model(name, num_classes=10))
    x = torch.randn(3, 3, SMALL, SMALL)  # batch 3: not the traced batch, so the dynamic axis is exercised
    with torch.no_grad():
        expected = model(x)
    path = export_model(model, tmp_path / f"{name}.onnx", input_size=SMALL, dynamic_batch=True)
    (actual,) = run_onnx(path, x)
    assert_same(actual, expected)


@needs_onnx
def test_onnx_features_only_has_one_output_per_level(tmp_path):
    import onnxruntime as ort

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


@needs_onnx
def test_cli_export_with_weights_uses_their_classes(tmp_path, capsys, monkeypatch):
    model = with_random_bn_statistics(bk.create_model("resnet18", num_classes=7))
    weights = tmp_path / "w.pt"
    atomic_save({"format": "backbonekit", "model": "resnet18", "model_kwargs": {}, "state_dict": model.state_dict()},
                weights)
    out = tmp_path / "r18.onnx"
    reads = count_torch_loads(monkeypatch)
    assert cli.main(["export", "resnet18", "--weights", str(weights), "--input-size", str(SMALL), "-o", str(out)]) == 0
    assert reads == [weights]  # read once, for its classes and its tensors both
    assert "wrote" in capsys.readouterr().out
    x = torch.randn(1, 3, SMALL, SMALL)
    with torch.no_grad():
        expected = model(x)
    (actual,) = run_onnx(out, x)
    assert actual.shape == (1, 7)
    assert_same(actual, expected)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind
    assert exported_here(out)  # marked as this package's: a re-export may replace it without --force


def count_torch_loads(monkeypatch: pytest.MonkeyPatch) -> list:
    """The files ``torch.load`` reads from now on (the list fills as they are read)."""
    reads, load = [], torch.load

    def counting_load(f, *args, **kwargs):
        reads.append(f)
        return load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    return reads


@needs_onnx
@pytest.mark.parametrize("opset", [18, 21])
def test_onnx_file_has_the_requested_opset(opset, tmp_path):
    import onnx

    out = tmp_path / "r18.onnx"
    assert cli.main(["export", "resnet18", "--num-classes", "3", "--input-size", "32", "--opset", str(opset),
                     "-o", str(out)]) == 0
    opsets = {entry.domain: entry.version for entry in onnx.load(str(out)).opset_import}
    assert opsets.get("", opsets.get("ai.onnx")) == opset


@needs_onnx
@pytest.mark.parametrize("opset", ["1", "17", "999"])
def test_unsupported_opset_is_refused_with_the_range(opset, tmp_path, capsys):
    import onnx

    out = tmp_path / "r18.onnx"
    assert cli.main(["export", "resnet18", "--input-size", "32", "--opset", opset, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"expected an ONNX opset from 18 to {onnx.defs.onnx_opset_version()}" in err and f"found {opset}" in err
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("argv,message", [
    (["export", "darknet53", "--input-size", "16"], "smaller than the network's total stride 32"),
    (["export", "darknet99"], "darknet99"),
    (["export", "resnet18", "--input-size", "64", "-o", "/nonexistent/dir/x.onnx"], "does not exist"),
])
def test_cli_export_bad_input_is_one_line(argv, message, tmp_path, capsys):
    argv = argv + ["--format", "torchscript"]  # the checks come before any exporter: no ONNX package needed
    if "-o" not in argv:
        argv = argv + ["-o", str(tmp_path / "x.pt")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_weights_file_is_read_once_for_classes_and_tensors(tmp_path, monkeypatch):
    model = with_random_bn_statistics(bk.create_model("resnet18", num_classes=5))
    weights = tmp_path / "w.pth"
    torch.save(model.state_dict(), weights)  # a torchvision-style state_dict
    reads = count_torch_loads(monkeypatch)
    built = build_for_export("resnet18", weights=weights)
    assert reads == [weights] and built.fc.out_features == 5
    torch.testing.assert_close(built.state_dict(), model.state_dict())


def test_export_writes_atomically_with_the_usual_mode(tmp_path):
    path = export_model(bk.create_model("resnet18", num_classes=3), tmp_path / "r18.pt", format="torchscript",
                        input_size=32)
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)  # mkstemp's private mode is not left on the file
    assert [p.name for p in tmp_path.iterdir()] == ["r18.pt"]  # no temporary file left behind
    assert exported_here(path) and not exported_here(tmp_path / "absent.pt")  # TorchScript marked as ours too
    with pytest.raises(ValueError, match="expected a file path to write, found a folder"):
        export_model(bk.create_model("resnet18", num_classes=3), tmp_path, format="torchscript", input_size=32)

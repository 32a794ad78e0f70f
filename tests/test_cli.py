"""The command line's layout (one ``cli/`` package over library functions), the helpers that replaced
copies, and the input checks of ``convert`` (never its own source, never a richer file without --force)."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

import backbonekit as bk
from backbonekit import cli, optimize, weights
from backbonekit._text import first_line
from backbonekit.checkpoint import atomic_save
from backbonekit.train import engine, trainer
from backbonekit.train.config import TrainConfig
from helpers import with_random_bn_statistics

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(bk.__file__).resolve().parent  # the package under test, wherever it was imported from


def package_sources(exclude_cli: bool = True) -> list[Path]:
    files = sorted(PACKAGE.rglob("*.py"))
    if exclude_cli:  # the command-line modules: cli/
        files = [f for f in files if "cli" not in f.relative_to(PACKAGE).parts]
    return files


def count_torch_loads(monkeypatch: pytest.MonkeyPatch) -> list:
    reads, load = [], torch.load

    def counting_load(f, *args, **kwargs):
        reads.append(Path(f))
        return load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    return reads


# -- layout -------------------------------------------------------------------------------------
def test_no_library_module_imports_argparse():
    offenders = []
    for path in package_sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name.split(".")[0] == "argparse" for name in names):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == []


def test_every_command_module_registers_parsers_that_run_a_function():
    assert cli.__file__.endswith(os.path.join("cli", "__init__.py"))  # a package, not cli.py
    for name in cli.COMMAND_MODULES:
        assert name.startswith("backbonekit.cli."), name  # every command lives in cli/
        assert callable(importlib.import_module(name).register_cli), name
    commands = cli.build_parser()._subparsers._group_actions[0].choices
    assert set(commands) == {"models", "train", "evaluate", "predict", "profile", "convert", "export", "bench",
                             "detect", "anchors", "weights"}
    detect = commands["detect"]._subparsers._group_actions[0].choices
    assert set(detect) == {"train", "evaluate", "predict", "export", "convert", "make-data", "compare"}
    for parser in [*commands.values(), *detect.values()]:
        assert callable(parser._defaults.get("func")), parser.prog


def test_console_script_and_module_entry_points():
    script = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["backbonekit"]
    module, _, attr = script.partition(":")
    assert getattr(importlib.import_module(module), attr) is cli.main
    path = os.pathsep.join(filter(None, [str(PACKAGE.parent), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    for argv in (["-m", "backbonekit", "--help"], ["-m", "backbonekit.cli", "--help"]):
        proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0 and "convert" in proc.stdout and "bench" in proc.stdout, proc.stderr


# -- one helper instead of copies ---------------------------------------------------------------
def _is_whitespace_flattening(node: ast.AST) -> bool:
    """``" ".join(x.split())``: the idiom ``first_line`` replaces."""
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "join"
            and isinstance(node.func.value, ast.Constant) and node.func.value.value == " " and len(node.args) == 1
            and isinstance(node.args[0], ast.Call) and isinstance(node.args[0].func, ast.Attribute)
            and node.args[0].func.attr == "split" and not node.args[0].args)


def test_error_text_is_flattened_by_one_helper():
    copies = [f"{path.relative_to(PACKAGE)}:{node.lineno}" for path in package_sources(exclude_cli=False)
              if path.name != "_text.py"
              for node in ast.walk(ast.parse(path.read_text())) if _is_whitespace_flattening(node)]
    assert copies == []


def test_first_line():
    message = "Error(s) in loading state_dict:\n\n\tMissing key(s):  'fc.weight'\n"
    assert first_line(RuntimeError(message)) == "Error(s) in loading state_dict:"
    assert first_line(RuntimeError(message), lines=None) == \
        "Error(s) in loading state_dict: Missing key(s): 'fc.weight'"
    assert first_line(RuntimeError(message), 10) == "Error(s..."  # not even a word fits: cut, and says so
    assert first_line(RuntimeError(message), 22) == "Error(s) in..."  # whole words
    torch_like = "Reading failed: no central directory. This is an internal error. If you see it, the file is cut"
    assert first_line(torch_like, 80) == "Reading failed: no central directory. This is an internal error."
    assert first_line(KeyError("unknown model 'x'")) == "unknown model 'x'"  # without str(KeyError)'s quotes
    assert first_line(ValueError()) == "ValueError"
    assert first_line("  a\n b ") == "a"


def test_cli_error_line_keeps_every_line_of_the_message():
    assert cli.error_line(KeyError("unknown model 'x':\n  close matches: resnet18")) == \
        "unknown model 'x': close matches: resnet18"


def test_one_autocast_helper_with_a_dtype():
    assert engine.training_autocast is optimize.training_autocast and not hasattr(engine, "autocast")
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 8, 8)
    with optimize.training_autocast("cpu", enabled=True, dtype=torch.float16):
        assert conv(x).dtype == torch.float16
    with optimize.training_autocast("cpu", enabled=False, dtype=torch.float16):
        assert conv(x).dtype == torch.float32


def test_architecture_kwargs_recorded_then_implied_by_the_layout():
    timm_darknet = {"stem.conv1.conv.weight": torch.zeros(1)}
    assert weights.architecture_kwargs(timm_darknet, {"model_kwargs": {"act_slope": 0.1, "frozen_stages": 1}}) == \
        {"act_slope": 0.01, "frozen_stages": 1}  # timm's darknet53 computes with LeakyReLU(0.01)
    assert weights.architecture_kwargs({"conv1.weight": torch.zeros(1)}, {"model_kwargs": None}) == {}


# -- each weights file read once ----------------------------------------------------------------
def _training_checkpoint(path: Path, num_classes: int = 3) -> torch.nn.Module:
    model = with_random_bn_statistics(bk.create_model("resnet18", num_classes=num_classes, zero_init_residual=False))
    atomic_save({"format": "backbonekit", "model": "resnet18", "model_kwargs": {"zero_init_residual": False},
                 "num_classes": num_classes, "state_dict": model.state_dict(),
                 "preprocessing": {"dataset": "fake", "classes": ["a", "b", "c"], "image_size": 32,
                                   "mean": [0.5] * 3, "std": [0.25] * 3},
                 "config": {"model": "resnet18"}, "history": [], "epoch": 1}, path)
    return model


def test_trained_model_is_loaded_from_one_read(tmp_path, monkeypatch):
    model = _training_checkpoint(tmp_path / "best.pt")
    reads = count_torch_loads(monkeypatch)
    loaded, ckpt = trainer.load_trained_model(tmp_path / "best.pt", torch.device("cpu"))
    assert reads == [tmp_path / "best.pt"] and ckpt["num_classes"] == 3
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))


class _Stop(Exception):
    pass


def test_training_from_pretrained_weights_reads_them_once(tmp_path, monkeypatch):
    pretrained = tmp_path / "w.pth"
    torch.save(bk.create_model("resnet18", num_classes=10).state_dict(), pretrained)  # fake has 10 classes
    reads = count_torch_loads(monkeypatch)
    built = []

    def stop(model, cfg, device):  # the model is built: stop before any training
        built.append(model)
        raise _Stop

    monkeypatch.setattr(trainer, "_prepare_model", stop)
    with pytest.raises(_Stop):
        trainer.train(TrainConfig(model="resnet18", dataset="fake:16", epochs=1, batch_size=4, workers=0,
                                  out=str(tmp_path / "run"), pretrained=str(pretrained)))
    assert reads == [pretrained] and len(built) == 1


# -- convert: the source and richer files are never replaced -------------------------------------
def test_convert_refuses_to_write_over_its_source(tmp_path, capsys):
    best = tmp_path / "best.pt"
    _training_checkpoint(best)
    before = best.read_bytes()
    link = tmp_path / "link.pt"
    link.symlink_to(best)
    for dst in (best, link, tmp_path / "." / "best.pt"):
        assert cli.main(["convert", str(best), str(dst), "--force"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is the source file" in err
    assert best.read_bytes() == before


def test_convert_keeps_a_richer_destination_unless_forced(tmp_path, capsys):
    best = tmp_path / "best.pt"
    _training_checkpoint(best)
    before = best.read_bytes()
    bare = tmp_path / "bare.safetensors"
    assert cli.main(["convert", str(best), str(bare)]) == 0

    assert cli.main(["convert", str(bare), str(best)]) == 2  # bare weights over a training checkpoint
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a training record (config, preprocessing, history)" in err and "--force" in err
    assert best.read_bytes() == before

    headless = tmp_path / "headless.safetensors"
    assert cli.main(["convert", str(bare), str(headless), "--backbone-only"]) == 0
    assert cli.main(["convert", str(bare), str(bare.with_name("again.safetensors"))]) == 0
    assert cli.main(["convert", str(headless), str(tmp_path / "again.safetensors")]) == 2  # would lose the classifier
    assert "a classifier" in capsys.readouterr().err
    assert cli.main(["convert", str(bare), str(tmp_path / "again.safetensors")]) == 0  # nothing to lose: replaced

    assert cli.main(["convert", str(bare), str(best), "--force"]) == 0
    assert "config" not in torch.load(best, weights_only=True)


@pytest.mark.parametrize("argv, trainer", [
    (["export", "{run}", "-o", "{run}/x.onnx"], "backbonekit train"),
    (["detect", "evaluate", "{run}"], "backbonekit detect train"),
])
def test_a_run_folder_without_best_pt_is_one_line(tmp_path, capsys, argv, trainer) -> None:
    assert cli.main([a.format(run=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"run folder {tmp_path} has no best.pt" in err and f"`{trainer}`" in err


def test_a_published_tag_given_as_the_model_is_not_called_a_missing_checkpoint(capsys, tmp_path):
    from backbonekit.cli import main

    assert main(["export", "resnet18.tv_in1k", "-o", str(tmp_path / "r.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoint not found" not in err and "did you mean resnet18" in err

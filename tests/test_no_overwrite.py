"""No command writes over its input or over a file it did not write (without --force), and an evaluation never
replaces a run's own report; a killed writer's temporary is removed by the next write.

The detectors are tiny (ResNet-18 YOLOv3, narrow neck, 64x64) and the datasets four generated images.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import backbonekit as bk
from backbonekit.checkpoint import atomic_save
from backbonekit.cli import main
from backbonekit.detection.training.config import DetectConfig
from backbonekit.detection.weights import save_detector
from backbonekit.train import TrainConfig, train
from helpers import tiny_set, write_tiny_yolo

NOT_OURS = b"a user's own file\n"


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def detector_run(tmp_path_factory):
    """A run folder as ``detect train`` leaves it (best.pt, last.pt, its own evaluation), and a second dataset."""
    root = tmp_path_factory.mktemp("det")
    data, other = write_tiny_yolo(root / "data", 4, 4, seed=0), write_tiny_yolo(root / "other", 4, 4, seed=1)
    classes = list(tiny_set("val", 1).classes)
    torch.manual_seed(0)
    model = bk.create_model("yolov3", num_classes=len(classes), backbone="resnet18", neck_channels=(32, 16, 8),
                            input_size=64).eval()
    cfg = DetectConfig(backbone="resnet18", input_size=64, neck_width=0.0625, dataset=f"yolo:{data}")
    ckpt = {"format": "backbonekit", "task": "detection", "model": "yolov3", "model_kwargs": model.model_kwargs,
            "num_classes": len(classes), "classes": classes, "input_size": 64, "state_dict": model.state_dict(),
            "config": cfg.to_dict(), "epoch": 1, "history": [], "best_map": 0.0}
    run = root / "run"
    run.mkdir()
    atomic_save(ckpt, run / "best.pt")
    atomic_save(ckpt, run / "last.pt")
    (run / "eval.json").write_text(json.dumps({"title": f"best.pt (epoch 1) on yolo:{data} val split",
                                               "summary": {"map": 0.5}}))
    return run, other


@pytest.fixture(scope="module")
def detector_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = bk.create_model("yolov3", num_classes=3, backbone="resnet18", neck_channels=(32, 16, 8), input_size=64)
    return save_detector(model.eval(), tmp_path_factory.mktemp("file") / "det.pt")


# -- never the input --------------------------------------------------------------------------------
def test_detect_export_never_writes_over_its_checkpoint(detector_file, detector_run, tmp_path, capsys):
    run, _ = detector_run
    link = tmp_path / "link.pt"
    link.symlink_to(detector_file)
    for model, output in ((str(detector_file), detector_file), (str(detector_file), link), (str(run), run / "best.pt"),
                          (str(run / "best.pt"), run / "." / "best.pt")):
        before = Path(output).read_bytes()
        assert main(["detect", "export", model, "-o", str(output)]) == 2
        assert "is the source file" in one_error_line(capsys)
        assert Path(output).read_bytes() == before
    assert main(["detect", "export", str(detector_file), "-o", str(detector_file), "--force"]) == 2  # never
    assert "is the source file" in one_error_line(capsys)


def test_detect_export_never_writes_over_a_weights_file_it_reads(tmp_path, capsys):
    weights = tmp_path / "yolov3.weights"
    weights.write_bytes(b"\x00" * 64)  # refused before it is read: the check needs no real weights
    assert main(["detect", "export", "yolov3", "--weights", str(weights), "-o", str(weights)]) == 2
    assert "is the source file" in one_error_line(capsys)
    assert main(["detect", "export", str(weights), "-o", str(weights)]) == 2
    assert "is the source file" in one_error_line(capsys)
    assert weights.read_bytes() == b"\x00" * 64


def test_export_never_writes_over_its_weights(tmp_path, capsys):
    weights = tmp_path / "w.pt"
    atomic_save({"format": "backbonekit", "model": "resnet18", "model_kwargs": {},
                 "state_dict": bk.create_model("resnet18", num_classes=3).state_dict()}, weights)
    before = weights.read_bytes()
    for extra in ([], ["--int8", "--calibrate", "fake:16", "--calib-images", "8"]):
        assert main(["export", "resnet18", "--weights", str(weights), "--input-size", "32", "-o", str(weights),
                     *extra]) == 2
        assert "is the source file" in one_error_line(capsys)
    assert weights.read_bytes() == before


# -- never a file we did not write, without --force ---------------------------------------------------
def test_detect_export_replaces_only_a_file_it_exported(detector_file, tmp_path, capsys):
    pytest.importorskip("onnxscript")
    notes = tmp_path / "notes.onnx"
    notes.write_bytes(NOT_OURS)
    assert main(["detect", "export", str(detector_file), "-o", str(notes)]) == 2
    err = one_error_line(capsys)
    assert "already exists" in err and "--force" in err
    assert notes.read_bytes() == NOT_OURS
    assert main(["detect", "export", str(detector_file), "-o", str(notes), "--force"]) == 0
    assert notes.read_bytes()[:1] == b"\x08"  # ONNX now


def test_an_onnx_file_this_package_exported_may_be_replaced(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from backbonekit.export import export_destination

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    ours, theirs = helper.make_model(graph), helper.make_model(graph)
    ours.metadata_props.add(key="backbonekit", value="{}")  # what every ONNX file we write carries
    onnx.save(ours, str(tmp_path / "ours.onnx"))
    onnx.save(theirs, str(tmp_path / "theirs.onnx"))
    assert export_destination(tmp_path / "ours.onnx") == tmp_path / "ours.onnx"
    with pytest.raises(ValueError, match="is not a model file backbonekit exported"):
        export_destination(tmp_path / "theirs.onnx")


def test_detect_convert_keeps_a_file_that_is_not_weights(detector_file, tmp_path, capsys):
    mine = tmp_path / "mine.safetensors"
    mine.write_bytes(NOT_OURS)
    assert main(["detect", "convert", str(detector_file), str(mine)]) == 2
    assert "is not a weights file" in one_error_line(capsys)
    assert mine.read_bytes() == NOT_OURS
    assert main(["detect", "convert", str(detector_file), str(mine), "--force"]) == 0
    assert mine.read_bytes() != NOT_OURS


# -- evaluations: never over a run's own report, nor over a user's files --------------------------------
def test_detect_evaluate_never_replaces_a_runs_own_evaluation(detector_run, capsys):
    run, other = detector_run
    before = (run / "eval.json").read_bytes()
    for extra in ([], ["--force"]):
        assert main(["detect", "evaluate", str(run / "last.pt"), "--dataset", f"yolo:{other}", "--out", str(run),
                     "--device", "cpu", *extra]) == 2
        assert "is a training run folder" in one_error_line(capsys)
    assert (run / "eval.json").read_bytes() == before
    assert not (run / "per_class_ap.txt").exists()


def test_detect_evaluate_keeps_a_users_files_unless_forced(detector_run, tmp_path, capsys):
    run, other = detector_run
    user = tmp_path / "results"
    user.mkdir()
    (user / "eval.json").write_bytes(NOT_OURS)
    (user / "per_class_ap.txt").write_bytes(NOT_OURS)
    args = ["detect", "evaluate", str(run / "best.pt"), "--device", "cpu", "--format", "json"]
    assert main([*args, "--out", str(user)]) == 2
    err = one_error_line(capsys)
    assert "not an earlier evaluation report" in err and "--force" in err
    assert (user / "eval.json").read_bytes() == NOT_OURS and (user / "per_class_ap.txt").read_bytes() == NOT_OURS

    assert main([*args, "--out", str(user), "--force"]) == 0
    assert "summary" in json.loads((user / "eval.json").read_text())
    assert main([*args, "--dataset", f"yolo:{other}", "--out", str(user)]) == 0  # an earlier report: replaced
    assert f"yolo:{other}" in json.loads((user / "eval.json").read_text())["title"]
    capsys.readouterr()


def test_classification_evaluate_never_replaces_a_runs_own_evaluation(tmp_path, capsys):
    run = tmp_path / "run"
    train(TrainConfig(model="resnet18", dataset="fake:32", epochs=1, batch_size=8, workers=0, out=str(run)),
          log=lambda _: None)
    before = (run / "eval.json").read_bytes()
    assert main(["evaluate", str(run / "last.pt"), "--out", str(run), "--device", "cpu"]) == 2
    assert "is a training run folder" in one_error_line(capsys)
    assert (run / "eval.json").read_bytes() == before


# -- a killed writer leaves nothing the next write does not remove -------------------------------------
WRITER = textwrap.dedent("""
    import sys
    from backbonekit.checkpoint import atomic_open
    with atomic_open(sys.argv[1]) as f:
        f.write(b"x" * 1000)
        f.flush()
        print("writing", flush=True)
        sys.stdin.readline()  # until told to finish (or killed)
""")


def start_writer(path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env=env, text=True)
    assert proc.stdout.readline().strip() == "writing"
    return proc


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    killed = start_writer(tmp_path / "big.pt")
    killed.send_signal(signal.SIGKILL)  # no handler, no finally: what the OOM killer or kill -9 does
    killed.wait()
    assert [p.name for p in tmp_path.iterdir()] != []  # it left its temporary behind
    alive = start_writer(tmp_path / "other.pt")  # a write in progress at the same time is not touched
    try:
        atomic_save({"x": 1}, tmp_path / "next.pt")
        names = sorted(p.name for p in tmp_path.iterdir())
        assert len(names) == 2 and "next.pt" in names and names[0].startswith(".other.pt.")
    finally:
        alive.communicate("done\n")
    assert alive.returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["next.pt", "other.pt"]
    assert (tmp_path / "other.pt").read_bytes() == b"x" * 1000

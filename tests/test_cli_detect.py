"""The detector commands end to end through ``backbonekit.cli.main``: detect predict / export / convert,
the generic ``export`` and ``convert`` handing detectors over, and their one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import backbonekit as bk
from backbonekit.cli import main
from backbonekit.detection.yolov3_weights import save_detector
from helpers import with_random_bn_statistics


@pytest.fixture(scope="module")
def detector_file(tmp_path_factory):
    """A small YOLOv3 (ResNet-18, narrow neck, 64x64) saved as a backbonekit checkpoint."""
    torch.manual_seed(0)
    model = bk.create_model("yolov3", num_classes=3, backbone="resnet18", neck_channels=(32, 16, 8), input_size=64)
    model = with_random_bn_statistics(model).eval()
    path = tmp_path_factory.mktemp("det") / "det.pt"
    save_detector(model, path)
    return model, path


def image_file(tmp_path, name: str = "a.png", size=(48, 80)):
    path = tmp_path / name
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def test_detect_predict_writes_what_the_model_detects(detector_file, tmp_path, capsys):
    model, path = detector_file
    picture = image_file(tmp_path)
    assert main(["detect", "predict", str(path), str(picture), "--out", str(tmp_path / "out"),
                 "--score-thresh", "0.1"]) == 0
    rows = json.loads((tmp_path / "out" / "detections.json").read_text())
    pixels = torch.from_numpy(np.array(Image.open(picture))).permute(2, 0, 1).float() / 255
    expected = model.detect([pixels], score_thresh=0.1)[0]
    assert len(rows) == len(expected["boxes"]) > 0
    assert sorted(r["score"] for r in rows) == pytest.approx(sorted(expected["scores"].tolist()), abs=1e-5)
    assert (tmp_path / "out" / "a.png").is_file()


def test_generic_convert_round_trips_a_detector(detector_file, tmp_path):
    model, path = detector_file
    safetensors = tmp_path / "det.safetensors"
    assert main(["convert", str(path), str(safetensors)]) == 0
    back = bk.create_model("yolov3", pretrained=safetensors).eval()
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(back(x), model(x))
    assert main(["convert", str(safetensors), str(safetensors)]) == 2  # never over its own source


def test_generic_export_hands_detectors_to_the_detector_export(detector_file, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import onnxruntime as ort

    model, path = detector_file
    out = tmp_path / "det.onnx"
    assert main(["export", "yolov3", "--weights", str(path), "--input-size", "64", "-o", str(out)]) == 0
    x = torch.rand(1, 3, 64, 64)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (decoded,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(decoded, expected, rtol=1e-4, atol=1e-4)
    assert main(["export", "yolov3", "--format", "torchscript", "-o", str(tmp_path / "x.pt")]) == 2


@pytest.mark.parametrize("argv, message", [
    (["detect", "predict", "nosuchmodel", "x.png", "--out", "o"], "expected a weights file, a run folder or a detector"),
    (["detect", "predict", "{det}", "{txt}", "--out", "o"], "cannot read image"),
])
def test_detect_bad_input_is_one_line(detector_file, tmp_path, capsys, argv, message):
    _, path = detector_file
    text = tmp_path / "not-an-image.png"
    text.write_text("hello")
    argv = [a.format(det=path, txt=text) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def _one_line(capsys, *fragments):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(f in err for f in fragments), err
    return err


@pytest.mark.parametrize("flag, value, field", [
    ("--score-thresh", "2", "score_thresh"), ("--nms-thresh", "-1", "nms_thresh"), ("--score-thresh", "nan", "score_thresh"),
    ("--input-size", "0", "input_size"), ("--input-size", "100", "input_size"),
])
def test_detect_predict_refuses_what_detect_train_refuses(detector_file, tmp_path, capsys, flag, value, field):
    from backbonekit.detection.config import DetectConfig

    _, path = detector_file
    with pytest.raises(ValueError) as trained:  # the message detect train gives for the same value
        DetectConfig(**{field: type(getattr(DetectConfig, field))(float(value))})
    assert main(["detect", "predict", str(path), str(image_file(tmp_path)), "--out", str(tmp_path / "o"),
                 flag, value]) == 2
    _one_line(capsys, str(trained.value))
    assert not (tmp_path / "o").exists()


def test_detect_predict_refuses_a_non_positive_detection_cap(detector_file, tmp_path, capsys):
    _, path = detector_file
    for value in ("0", "-3"):  # -3 kept all but the last three boxes
        assert main(["detect", "predict", str(path), str(image_file(tmp_path)), "--out", str(tmp_path / "o"),
                     "--max-detections", value]) == 2
        _one_line(capsys, f"max_detections (detections per image) must be >= 1, found {value}")


@pytest.mark.parametrize("num", ["0", "-2"])
def test_anchors_refuses_fewer_than_one_anchor(capsys, num):
    assert main(["anchors", "--num", num, "--split", "val"]) == 2
    _one_line(capsys, f"num (anchors) must be >= 1, found {num}")

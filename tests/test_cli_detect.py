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
from backbonekit.detection.weights import save_detector
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


ONNX_GIVEN = "is an ONNX file, not a checkpoint"
NOT_FOUND = "checkpoint not found: expected a file or run folder at"


@pytest.mark.parametrize("argv, message", [
    (["detect", "predict", "nosuchmodel", "x.png", "--out", "o"], "expected a weights file, a run folder or a detector"),
    (["detect", "predict", "{det}", "{txt}", "--out", "o"], "cannot read image"),
    (["detect", "predict", "{onnx}", "x.png", "--out", "o"], ONNX_GIVEN),
    (["detect", "export", "{onnx}", "-o", "{tmp}/y.onnx"], ONNX_GIVEN),
    (["predict", "{onnx}", "x.png"], ONNX_GIVEN),
    (["detect", "predict", "{tmp}/missing.pt", "x.png", "--out", "o"], NOT_FOUND),
    (["detect", "evaluate", "{tmp}/missing.pt"], NOT_FOUND),
    (["detect", "export", "{tmp}/missing.pt", "-o", "{tmp}/y.onnx"], NOT_FOUND),
    (["export", "missing.pt", "-o", "{tmp}/y.onnx"], NOT_FOUND),
])
def test_detect_bad_input_is_one_line(detector_file, tmp_path, capsys, argv, message):
    _, path = detector_file
    text = tmp_path / "not-an-image.png"
    text.write_text("hello")
    argv = [a.format(det=path, txt=text, onnx=onnx_file(tmp_path), tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    if message == ONNX_GIVEN:
        assert "detect evaluate" in err and "backbonekit.deploy" in err


def onnx_file(folder):
    """A one-node ONNX model written by onnx itself (what any exporter's file starts like)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = folder / "model.onnx"
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_backbone_error_lists_backbones_only(capsys):
    assert main(["detect", "train", "--backbone", "nope", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "backbone must be one of" in err and "resnet18" in err and "darknet53" in err
    assert not any(detector in err for detector in bk.list_models(task="detection"))


def test_truncated_checkpoint_message_keeps_torchs_sentences_whole(detector_file, tmp_path, capsys):
    _, path = detector_file
    data = path.read_bytes()
    cut = tmp_path / "last.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(Exception) as torch_error:
        torch.load(cut, weights_only=True)
    said = " ".join(str(torch_error.value).split())
    assert main(["detect", "evaluate", str(cut)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(")")
    quoted = err.split("found an unreadable file (", 1)[1][:-1]
    assert said.startswith(quoted) and quoted.endswith(".")  # whole sentences of torch's own message
    assert len(quoted) == len(said) or said[len(quoted)] == " "


def _one_line(capsys, *fragments):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(f in err for f in fragments), err
    return err


@pytest.mark.parametrize("flag, value, field", [
    ("--score-thresh", "2", "score_thresh"), ("--nms-thresh", "-1", "nms_thresh"),
    ("--score-thresh", "nan", "score_thresh"),
    ("--input-size", "0", "input_size"), ("--input-size", "100", "input_size"),
])
def test_detect_predict_refuses_what_detect_train_refuses(detector_file, tmp_path, capsys, flag, value, field):
    from backbonekit.detection.training.config import DetectConfig

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


def _predict(path, *args) -> int:
    return main(["detect", "predict", str(path), *map(str, args)])


def _pixels(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array)).permute(2, 0, 1).float() / 255


def test_detect_predict_sees_a_phone_photo_upright(detector_file, tmp_path):
    model, path = detector_file
    stored = np.random.default_rng(1).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored on its side, shown turned 90 degrees clockwise
    Image.fromarray(stored).save(tmp_path / "phone.png", exif=exif)
    assert _predict(path, tmp_path / "phone.png", "--out", tmp_path / "out", "--score-thresh", "0.1") == 0
    rows = json.loads((tmp_path / "out" / "detections.json").read_text())
    expected = model.detect([_pixels(np.rot90(stored, -1))], score_thresh=0.1)[0]  # the photo as it is shown
    assert len(rows) == len(expected["boxes"]) > 0
    got = sorted((r["score"], r["bbox"]) for r in rows)
    want = sorted((round(s, 5), [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)])
                  for s, (x1, y1, x2, y2) in zip(expected["scores"].tolist(), expected["boxes"].tolist()))
    assert [s for s, _ in got] == pytest.approx([s for s, _ in want], abs=1e-5)
    np.testing.assert_allclose([b for _, b in got], [b for _, b in want], atol=0.02)
    assert np.asarray(Image.open(tmp_path / "out" / "phone.png")).shape == (80, 48, 3)


def test_detect_predict_never_writes_over_its_input(detector_file, tmp_path, capsys):
    _, path = detector_file
    picture = image_file(tmp_path, "x.png")
    before = picture.read_bytes()
    for force in ([], ["--force"]):
        assert _predict(path, picture, "--out", tmp_path, *force) == 2
        _one_line(capsys, "x.png there is an input image", "choose another --out")
        assert picture.read_bytes() == before
    assert not (tmp_path / "detections.json").exists()


def test_detect_predict_replaces_only_files_it_wrote(detector_file, tmp_path, capsys):
    _, path = detector_file
    picture, out = image_file(tmp_path, "a.png"), tmp_path / "out"
    out.mkdir()
    (out / "detections.json").write_text("my own results")
    assert _predict(path, picture, "--out", out) == 2
    _one_line(capsys, "1 file(s) that detect predict did not write there ([detections.json])", "--force")
    assert (out / "detections.json").read_text() == "my own results" and not (out / "a.png").exists()
    assert _predict(path, picture, "--out", out, "--force") == 0
    assert isinstance(json.loads((out / "detections.json").read_text()), list)
    assert _predict(path, picture, "--out", out) == 0  # its own files, unchanged since: replaced freely
    (out / "a.png").write_bytes(b"edited by hand")
    assert _predict(path, picture, "--out", out) == 2
    _one_line(capsys, "did not write there ([a.png])")
    assert (out / "a.png").read_bytes() == b"edited by hand"


def test_detect_predict_keeps_one_output_and_one_id_per_input(detector_file, tmp_path):
    model, path = detector_file
    shapes = {"a/x.png": (48, 80), "b/x.jpg": (60, 40), "d/y.png": (40, 64), "d/y.jpg": (64, 40)}
    for name, size in shapes.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        image_file(tmp_path, name, size)
    inputs = [tmp_path / name for name in shapes]
    assert _predict(path, *inputs, "--out", tmp_path / "out", "--score-thresh", "0.1") == 0
    listing = json.loads((tmp_path / "out" / "images.json").read_text())
    assert [e["file_name"] for e in listing] == [str(p) for p in inputs]
    assert sorted(e["id"] for e in listing) == [0, 1, 2, 3]
    assert [e["annotated"] for e in listing] == ["a/x.png", "b/x.png", "d/y.png.png", "d/y.jpg.png"]
    rows = json.loads((tmp_path / "out" / "detections.json").read_text())
    for entry, (name, size) in zip(listing, shapes.items()):
        assert np.asarray(Image.open(tmp_path / "out" / entry["annotated"])).shape == (*size, 3)
        expected = model.detect([_pixels(np.asarray(Image.open(tmp_path / name).convert("RGB")))],
                                score_thresh=0.1)[0]
        assert sum(r["image_id"] == entry["id"] for r in rows) == len(expected["boxes"])


def test_detect_predict_takes_folders_with_names_repeated_in_subfolders(detector_file, tmp_path):
    _, path = detector_file
    for name in ("1/000001.png", "2/000001.PNG", "2/000002.JPG"):
        (tmp_path / "photos" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((32, 48, 3), 100, np.uint8)).save(tmp_path / "photos" / name,
                                                                  format="JPEG" if name.endswith("JPG") else "PNG")
    assert _predict(path, tmp_path / "photos", "--out", tmp_path / "out") == 0
    listing = json.loads((tmp_path / "out" / "images.json").read_text())
    assert [(e["id"], e["annotated"]) for e in listing] == [(0, "1/000001.png"), (1, "2/000001.png"),
                                                            (2, "2/000002.png")]  # numbers repeat: positions
    assert all((tmp_path / "out" / e["annotated"]).is_file() for e in listing)


def test_detect_predict_ids_take_only_names_that_are_numbers(detector_file, tmp_path):
    _, path = detector_file
    inputs = [image_file(tmp_path, "7.png"), image_file(tmp_path, "\u00b2.png")]  # '²' is a digit, not a number
    assert _predict(path, *inputs, "--out", tmp_path / "out") == 0
    listing = json.loads((tmp_path / "out" / "images.json").read_text())
    assert [e["id"] for e in listing] == [0, 1]  # positions: not every name is a number


def test_detect_predict_into_a_folder_inside_its_input_folder_twice(detector_file, tmp_path, capsys):
    """--out inside a folder given: its annotated copies are not taken for inputs the next time (they were,
    and the rerun was refused as writing over an input image)."""
    _, path = detector_file
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("x.jpg", "y.jpg"):
        image_file(photos, name)
    for _ in range(2):
        assert _predict(path, photos, "--out", photos / "out") == 0, capsys.readouterr().err
        listing = json.loads((photos / "out" / "images.json").read_text())
        assert [(e["file_name"], e["annotated"]) for e in listing] == [(str(photos / "x.jpg"), "x.png"),
                                                                       (str(photos / "y.jpg"), "y.png")]
    assert "wrote 2 annotated images" in capsys.readouterr().out
    assert sorted(p.name for p in (photos / "out").iterdir()) == [".backbonekit-predict.json", "detections.json",
                                                                  "images.json", "x.png", "y.png"]


def test_detect_predict_returns_no_box_without_area(detector_file, tmp_path):
    model, path = detector_file
    wide = image_file(tmp_path, "wide.png", (6, 80))  # most of the letterboxed input is padding
    assert _predict(path, wide, "--out", tmp_path / "out", "--score-thresh", "0.01", "--max-detections", "10000") == 0
    rows = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert len(rows) > 0 and all(w > 0 and h > 0 for _, _, w, h in (r["bbox"] for r in rows))


def test_detect_predict_refuses_a_decompression_bomb_in_one_line(detector_file, tmp_path, capsys):
    from test_images import png_header

    _, path = detector_file
    bomb = png_header(tmp_path / "huge.png", 30000, 30000)
    assert _predict(path, bomb, "--out", tmp_path / "out") == 2
    _one_line(capsys, "cannot read image", "huge.png", "decompression bombs")

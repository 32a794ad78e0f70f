"""The torch-free runtime: predictions with torch hidden, preprocessing against torchvision, detector boxes by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import backbonekit as bk
from helpers import with_random_bn_statistics

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
from PIL import Image  # noqa: E402

from backbonekit.deploy import Classifier, Detector, LetterboxBox, load  # noqa: E402
from backbonekit.deploy.metadata import detector_metadata  # noqa: E402
from backbonekit.deploy.runtime import resize_bilinear  # noqa: E402
from backbonekit.onnx_meta import export_onnx, read_metadata, write_metadata  # noqa: E402

PREP = {"dataset": "handmade", "classes": ["cat", "dog", "fox", "owl"], "image_size": 32,
        "mean": [0.2, 0.5, 0.7], "std": [0.3, 0.25, 0.2]}
SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> tuple[Path, torch.nn.Module, Path]:
    """A random-weight resnet18 exported with metadata, and a 45x37 RGB PNG."""
    tmp = tmp_path_factory.mktemp("deploy")
    torch.manual_seed(0)
    model = with_random_bn_statistics(bk.create_model("resnet18", num_classes=4))
    path = export_onnx(model, tmp / "r18.onnx", preprocessing=PREP)
    pixels = np.random.default_rng(0).integers(0, 256, (37, 45, 3), dtype=np.uint8)
    image = tmp / "x.png"
    Image.fromarray(pixels, "RGB").save(image)
    return path, model, image


def reference_probabilities(model: torch.nn.Module, image: Path) -> np.ndarray:
    """torchvision's Resize on the PIL image (what an image folder's evaluation does), then the training Normalizer."""
    from torchvision import transforms

    from backbonekit.train.data import Normalizer

    tf = transforms.Compose([transforms.Resize((32, 32), antialias=True), transforms.PILToTensor()])
    x = tf(Image.open(image).convert("RGB"))[None]
    with torch.no_grad():
        return model(Normalizer(PREP["mean"], PREP["std"], torch.device("cpu"))(x)).softmax(1)[0].numpy()


def test_prediction_without_torch_matches_pytorch(classifier):
    path, model, image = classifier
    code = textwrap.dedent(f"""
        import json, sys
        sys.modules["torch"] = None  # any import of torch now fails
        sys.modules["torchvision"] = None
        from backbonekit.deploy import load
        model = load({str(path)!r})
        top = model.predict([{str(image)!r}], topk=4)[0]
        assert sys.modules["torch"] is None
        print(json.dumps(top))
    """)
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    top = json.loads(done.stdout.strip().splitlines()[-1])
    expected = reference_probabilities(model, image)
    order = np.argsort(-expected)
    assert [name for name, _ in top] == [PREP["classes"][i] for i in order]
    np.testing.assert_allclose([p for _, p in top], expected[order], rtol=1e-4, atol=1e-5)


def test_importing_backbonekit_does_not_import_torch():
    code = "import sys, backbonekit, backbonekit.deploy; print('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.stdout.strip() == "False", done.stderr[-2000:]


def test_metadata_travels_in_the_file(classifier):
    path, _, _ = classifier
    meta = read_metadata(path)
    assert (meta["classes"], meta["image_size"], meta["mean"], meta["std"]) == (
        PREP["classes"], PREP["image_size"], PREP["mean"], PREP["std"])
    model = load(path)
    assert isinstance(model, Classifier) and model.classes == PREP["classes"]


def test_fixed_batch_file_takes_any_number_of_images(classifier, tmp_path):
    path, model, image = classifier
    fixed = export_onnx(model, tmp_path / "b2.onnx", preprocessing=PREP, batch_size=2, dynamic_batch=False)
    images = [str(image)] * 3  # one full batch of 2 and one padded batch
    np.testing.assert_allclose(load(fixed).probabilities(images), load(path).probabilities(images),
                               rtol=1e-4, atol=1e-6)


def test_bilinear_resize_matches_interpolate():
    x = np.random.default_rng(1).random((3, 23, 41), dtype=np.float32)
    for h, w in ((11, 17), (46, 80), (23, 41), (7, 90)):
        expected = F.interpolate(torch.from_numpy(x)[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        np.testing.assert_allclose(resize_bilinear(x, h, w), expected.numpy(), rtol=0, atol=1e-5)


def test_letterbox_geometry_by_hand():
    box = LetterboxBox.fit(480, 640, 416)  # landscape: width fills, 312 rows centred
    assert (box.new_h, box.new_w, box.top, box.left) == (312, 416, 52, 0)
    tall = LetterboxBox.fit(640, 320, 416)
    assert (tall.new_h, tall.new_w, tall.top, tall.left) == (416, 208, 0, 104)
    np.testing.assert_allclose(box.to_original(np.array([[0, 52, 416, 364], [208, 0, 520, 130]], np.float32)),
                               [[0, 0, 640, 480], [320, 0, 640, 120]], atol=1e-4)


def fake_detector(path: Path, size: int = 64) -> Path:
    """An ONNX graph with a detector's NMS outputs as constants (image, class, box) and the input consumed."""
    from onnx import TensorProto, helper, numpy_helper

    selected = np.array([[0, 1, 0], [1, 0, 1], [0, 2, 1]], np.int64)
    boxes = np.array([[0, 8, 64, 56], [16, 0, 48, 64], [0, 8, 32, 32]], np.float32)  # input pixels
    scores = np.array([0.4, 0.9, 0.8], np.float32)
    labels = np.array([1, 0, 2], np.int64)
    consts = {"selected": selected, "boxes": boxes, "scores": scores, "labels": labels}
    nodes = [helper.make_node("Constant", [], [f"c_{k}"], value=numpy_helper.from_array(v, f"v_{k}"))
             for k, v in consts.items()]
    nodes.append(helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0))  # the input is consumed
    nodes += [helper.make_node("Identity", [f"c_{k}"], [k]) for k in consts]
    types = {"selected": TensorProto.INT64, "labels": TensorProto.INT64}
    graph = helper.make_graph(
        nodes, "fake", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info(k, types.get(k, TensorProto.FLOAT), list(v.shape)) for k, v in consts.items()]
        + [helper.make_tensor_value_info("mean", TensorProto.FLOAT, None)])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(proto, str(path))
    return write_metadata(path, detector_metadata(classes=["a", "b", "c"], input_size=size))


def test_detector_maps_boxes_back_to_each_image(tmp_path):
    path = fake_detector(tmp_path / "det.onnx")
    wide = np.zeros((48, 64, 3), np.uint8)  # letterboxed to 64x48 at top 8: input y 8..56 is the image
    tall = np.zeros((64, 32, 3), np.uint8)  # 32x64 at left 16
    model = load(path)
    assert isinstance(model, Detector)
    first, second = model.detect([wide, tall])
    # image 0: class 2 (0.8) before class 1 (0.4); boxes shifted up by 8
    np.testing.assert_allclose(first["boxes"], [[0, 0, 32, 24], [0, 0, 64, 48]], atol=1e-5)
    assert first["names"] == ["c", "b"] and first["scores"].tolist() == pytest.approx([0.8, 0.4])
    np.testing.assert_allclose(second["boxes"], [[0, 0, 32, 64]], atol=1e-5)
    assert second["labels"].tolist() == [0]
    assert len(model.detect([wide, tall], max_detections=1)[0]["boxes"]) == 1


def test_bad_inputs_one_line(classifier, tmp_path):
    path, _, _ = classifier
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="cannot load .*junk.onnx: expected an ONNX model"):
        load(junk)
    with pytest.raises(FileNotFoundError, match="expected an ONNX file"):
        load(tmp_path / "missing.onnx")
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(path.read_bytes())
    proto = onnx.load(str(bare))
    del proto.metadata_props[:]
    onnx.save(proto, str(bare))
    with pytest.raises(ValueError, match="has no backbonekit preprocessing metadata"):
        load(bare)
    model = load(path)
    with pytest.raises(FileNotFoundError, match="image not found"):
        model.predict([tmp_path / "nope.png"])
    with pytest.raises(ValueError, match=r"image 1: expected an \(H, W, 3\) uint8 RGB array, found float32"):
        model.predict([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.float32)])
    with pytest.raises(ValueError, match="holds a classification model, found it opened as Detector"):
        Detector(path)
    write_metadata(bare, detector_metadata(classes=["a"], input_size=32))  # a detector file without NMS outputs
    with pytest.raises(ValueError, match="expected a detector exported with NMS .*found outputs logits"):
        load(bare)

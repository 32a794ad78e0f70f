"""YOLOv3 deployment: int8 export (CLI and library), ONNX evaluation against PyTorch's, the torch-free
runtime against ``model.detect`` and ``letterbox``. A tiny random YOLOv3 (resnet18, 64 px) throughout."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import backbonekit as bk
from helpers import tiny_set, with_random_bn_statistics, write_tiny_yolo

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
from PIL import Image  # noqa: E402

from backbonekit.cli import main  # noqa: E402
from backbonekit.deploy import Detector, load  # noqa: E402
from backbonekit.deploy.runtime import letterbox_input  # noqa: E402
from backbonekit.detection.training.engine import predict_dataset  # noqa: E402
from backbonekit.detection.export import export_yolov3_onnx  # noqa: E402
from backbonekit.detection.onnx_eval import evaluate_onnx_detector, load_onnx_detector  # noqa: E402
from backbonekit.detection.data.transforms import letterbox_geometry, letterbox_images  # noqa: E402
from backbonekit.detection.weights import save_detector  # noqa: E402
from backbonekit.onnx_meta import read_metadata  # noqa: E402
from backbonekit.quantize import export_int8  # noqa: E402

SRC = str(Path(__file__).resolve().parents[1] / "src")
SCORE = 0.3  # random weights: objectness x class probability spreads around 0.25


@pytest.fixture(scope="module")
def det(tmp_path_factory) -> dict:
    """A random tiny YOLOv3, its data (yolo folder: 8 train, 4 val), fp32 and int8 files with NMS; the
    int8 export runs from an empty working directory, whose contents afterwards are recorded."""
    tmp = tmp_path_factory.mktemp("det")
    data = write_tiny_yolo(tmp / "data", train=8, val=4)
    torch.manual_seed(0)
    model = bk.create_model("yolov3", num_classes=10, backbone="resnet18", input_size=64, neck_channels=(64, 32, 16),
                            score_thresh=SCORE)
    model = with_random_bn_statistics(model).eval()
    classes = list(tiny_set("val", 4).classes)
    fp32 = export_yolov3_onnx(copy.deepcopy(model), tmp / "fp32.onnx", nms=True, dynamic_batch=True,
                              classes=classes, dataset=f"yolo:{data}")
    cwd = tmp / "cwd"
    cwd.mkdir()
    before = os.getcwd()
    os.chdir(cwd)
    try:
        report = export_int8(fp32, tmp / "int8.onnx", calibrate=f"yolo:{data}", calib_images=8)
    finally:
        os.chdir(before)
    return {"model": model, "data": data, "fp32": fp32, "int8": report.path, "report": report, "tmp": tmp,
            "cwd_after": sorted(p.name for p in cwd.iterdir())}


def test_int8_export_leaves_nothing_in_the_working_directory(det):
    # YOLOv3's graph defeats ONNX Runtime's symbolic shape inference, which then dumps
    # sym_shape_infer_temp.onnx and a uuid-named .data weights copy into the current directory
    assert det["cwd_after"] == []
    assert det["report"].int8_nodes > 20 and det["report"].calib_images == 8
    assert "letterboxed" in det["report"].calib_source
    meta = read_metadata(det["int8"])
    assert meta["task"] == "detection" and meta["input_size"] == 64 and meta["quantization"]["images"] == 8


def test_letterbox_metadata_travels_in_the_file(det):
    meta = read_metadata(det["fp32"])
    assert meta["input_size"] == 64 and meta["letterbox_fill"] == 0.5
    assert meta["classes"] == list(tiny_set("val", 4).classes) and meta["score_thresh"] == pytest.approx(SCORE)


def test_runtime_letterbox_puts_the_image_on_the_same_pixels():
    pixels = np.random.default_rng(1).integers(0, 256, (37, 90, 3), dtype=np.uint8)  # wide, odd height
    for size, shape in ((64, (37, 90)), (96, (90, 37))):
        image = pixels if shape == (37, 90) else np.ascontiguousarray(pixels.transpose(1, 0, 2))
        ours, box = letterbox_input(image, {"input_size": size, "letterbox_fill": 0.5})
        reference, boxes = letterbox_images([torch.from_numpy(image).permute(2, 0, 1).float() / 255], size)
        ref_box = letterbox_geometry(*shape, size)
        assert (box.new_h, box.new_w, box.top, box.left) == (ref_box.new_h, ref_box.new_w, ref_box.top, ref_box.left)
        np.testing.assert_allclose(ours, reference[0].numpy(), atol=1e-5)


def test_runtime_boxes_equal_model_detect(det, tmp_path):
    image = np.random.default_rng(2).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    with torch.no_grad():
        ref = det["model"].detect([torch.from_numpy(image).permute(2, 0, 1).float() / 255], score_thresh=SCORE)[0]
    got = load(det["fp32"]).detect([image])[0]
    assert len(ref["boxes"]) > 0
    top = min(10, len(ref["boxes"]))
    np.testing.assert_allclose(got["scores"][:top], ref["scores"][:top].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["boxes"][:top], ref["boxes"][:top].numpy(), atol=1e-2)
    np.testing.assert_array_equal(got["labels"][:top], ref["labels"][:top].numpy())
    int8 = load(det["int8"])
    assert isinstance(int8, Detector) and int8.detect([image])[0]["boxes"].shape[1] == 4


def test_runtime_returns_no_box_without_area_and_keeps_the_files_cap(det, tmp_path):
    from backbonekit.onnx_meta import write_metadata

    wide = np.random.default_rng(5).integers(0, 256, (6, 80, 3), dtype=np.uint8)  # mostly letterbox padding
    with torch.no_grad():
        ref = det["model"].detect([torch.from_numpy(wide).permute(2, 0, 1).float() / 255], score_thresh=SCORE)[0]
    got = load(det["fp32"]).detect([wide])[0]
    assert len(got["boxes"]) == len(ref["boxes"]) > 3  # all of them, not only the best
    np.testing.assert_allclose(got["scores"], ref["scores"].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["boxes"], ref["boxes"].numpy(), atol=1e-2)
    # a file exported before the graph took each image's region: the runtime drops the padding's boxes itself,
    # and caps each image at the file's detections_per_img (ONNX's NonMaxSuppression caps each class)
    proto = onnx.load(str(det["fp32"]))
    proto.graph.input.remove([i for i in proto.graph.input if i.name == "image_regions"][0])
    onnx.save(proto, str(tmp_path / "older.onnx"))
    older = load(tmp_path / "older.onnx")
    assert not older.takes_regions
    canvas, place = letterbox_input(wide, older.meta)
    scores, boxes = older.session.run(["scores", "boxes"], {"images": canvas[None]})
    order = np.argsort(-scores, kind="stable")
    mapped = place.to_original(boxes[order])
    empty = (mapped[:, 2:] <= mapped[:, :2]).any(1)
    assert empty.any()  # the check can fail: the graph alone keeps boxes in the padding
    cap = int(np.flatnonzero(empty)[0]) + 1  # the cap reaches the first empty box
    write_metadata(tmp_path / "older.onnx", {**read_metadata(det["fp32"]), "detections_per_img": cap})
    found = load(tmp_path / "older.onnx").detect([wide])[0]
    assert len(found["boxes"]) == cap and (found["boxes"][:, 2:] > found["boxes"][:, :2]).all()
    np.testing.assert_allclose(found["scores"], scores[order][~empty][:cap])
    for result in (got, load(det["int8"]).detect([wide])[0]):
        assert (result["boxes"][:, 2:] > result["boxes"][:, :2]).all()


def test_detector_prediction_without_torch(det, tmp_path):
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (50, 70, 3), dtype=np.uint8), "RGB").save(image)
    script = textwrap.dedent(f"""
        import json, sys
        sys.modules["torch"] = None  # any import of torch now fails
        from backbonekit.deploy import load
        out = []
        for path in ({str(det['fp32'])!r}, {str(det['int8'])!r}):
            found = load(path).detect([{str(image)!r}])[0]
            out.append({{"n": len(found["boxes"]), "max": float(found["boxes"].max(initial=0)),
                        "names": found["names"][:3]}})
        print(json.dumps(out))
    """)
    env = {**os.environ, "PYTHONPATH": SRC}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    fp32, int8 = json.loads(done.stdout.strip().splitlines()[-1])
    assert fp32["n"] > 0 and fp32["max"] <= 70  # boxes in the 70 x 50 image's own pixels
    assert all(name in tiny_set("val", 4).classes for name in fp32["names"] + int8["names"])


def test_onnx_evaluation_equals_pytorch(det, tmp_path):
    from backbonekit.detection.data import load_detection_dataset
    from backbonekit.detection.training.engine import evaluate

    data = load_detection_dataset(f"yolo:{det['data']}", None, "val")
    cpu = torch.device("cpu")
    ref, _ = evaluate(det["model"], data, data.classes, device=cpu, batch_size=4, score_thresh=0.01,
                      nms_thresh=0.45, distributed=False)
    got = evaluate_onnx_detector(det["fp32"], out=tmp_path / "eval", log=lambda _: None)
    assert got.summary["map_50"] == pytest.approx(ref.summary["map_50"], abs=1e-6)
    assert got.summary["map"] == pytest.approx(ref.summary["map"], abs=1e-6)
    ours = predict_dataset(load_onnx_detector(det["fp32"]), data, device=cpu, score_thresh=0.01)
    theirs = predict_dataset(det["model"], data, device=cpu, score_thresh=0.01)
    for (_, a, _), (_, b, _) in zip(ours, theirs):
        assert len(a["boxes"]) == len(b["boxes"]) > 0
        torch.testing.assert_close(a["scores"], b["scores"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=1e-4, atol=1e-2)
    assert (tmp_path / "eval" / "per_class_ap.json").is_file()


def test_detect_evaluate_cli_takes_the_int8_file(det, capsys, tmp_path):
    assert main(["detect", "evaluate", str(det["int8"]), "--format", "json", "--out", str(tmp_path / "e")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0 <= result["summary"]["map_50"] <= 1 and result["split"] == "val"


def test_detect_export_int8_cli_from_a_pt(det, tmp_path, capsys):
    pt = save_detector(det["model"], tmp_path / "tiny.pt")
    out = tmp_path / "q.onnx"
    assert main(["detect", "export", str(pt), "-o", str(out), "--nms", "--int8", "--calibrate",
                 f"yolo:{det['data']}", "--calib-images", "8"]) == 0
    printed = capsys.readouterr().out
    assert "nodes in int8 (QDQ)" in printed and "kept in fp32 on purpose" in printed
    assert read_metadata(out)["quantization"]["images"] == 8
    assert load(out).detect([np.zeros((40, 64, 3), np.uint8)])[0]["boxes"].shape[1] == 4


def _one_line_error(argv: list[str], match: str, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1, err


def test_detect_export_int8_bad_input_one_line(det, tmp_path, capsys):
    pt = save_detector(det["model"], tmp_path / "tiny.pt")
    small = write_tiny_yolo(tmp_path / "small", train=4, val=4)
    base = ["detect", "export", str(pt), "-o", str(tmp_path / "q.onnx")]
    _one_line_error(base + ["--int8"], "--int8 needs calibration images: expected --calibrate DATASET", capsys)
    _one_line_error(base + ["--calibrate", "photodigits"], "expected --int8 with it", capsys)
    _one_line_error(base + ["--int8", "--calibrate", f"yolo:{small}"],
                    f"calibration set too small: yolo:{small} train split has 4 images, expected at least 8", capsys)
    _one_line_error(base + ["--int8", "--calibrate", f"yolo:{det['data']}", "--calib-images", "3"],
                    "calibration set too small: expected --calib-images >= 8, found 3", capsys)
    assert not (tmp_path / "q.onnx").exists()
    with pytest.raises(ValueError, match=r"have 1 channels .*the model takes 3"):
        export_int8(det["fp32"], tmp_path / "q.onnx", calibrate=np.zeros((8, 1, 64, 64), np.float32))
    with pytest.raises(ValueError, match="are 32x32, the model takes 64x64"):
        export_int8(det["fp32"], tmp_path / "q.onnx", calibrate=np.zeros((8, 3, 32, 32), np.float32))


def readme_deployment_example() -> tuple[list[str], str]:
    """The README's deployment example: its shell command (as argv) and its Python lines."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    start = text.index("**Deployment**")
    shell = text.index("```bash\n", start) + len("```bash\n")
    command = text[shell:text.index("```", shell)].strip()
    code = text.index("```python\n", shell) + len("```python\n")
    return command.split(), text[code:text.index("```", code)]


def test_readme_deployment_example_runs(det, tmp_path, capsys, monkeypatch):
    import shlex

    argv, code = readme_deployment_example()
    assert argv[:3] == ["backbonekit", "detect", "export"] and len(code.strip().splitlines()) == 4
    pt = save_detector(det["model"], tmp_path / "tiny.pt")
    swap = {"runs/yolov3-photodigits": str(pt), "photodigits": f"yolo:{det['data']}"}
    monkeypatch.chdir(tmp_path)  # the example's relative file names land here
    assert main([swap.get(a, a) for a in argv[1:]] + ["--calib-images", "8"]) == 0, shlex.join(argv)
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (60, 90, 3), dtype=np.uint8)).save("street.jpg")
    capsys.readouterr()
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert printed.strip() and "quantization" in read_metadata(tmp_path / "yolov3-int8.onnx")

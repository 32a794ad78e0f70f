"""Faster R-CNN, RetinaNet and FCOS through the CLI: detect train | evaluate | predict | export, the one
detector loader, the pretrained run's normalisation, the profiler's meta-device anchors, bad input.

References are independent of the code under test: torchvision's loss names and its own detectors'
outputs (thresholds set on torchvision's attributes directly), ONNX Runtime against PyTorch, and
hand-written expectations. Tiny everything: ResNet-18, 64-128 px, 4 images.
"""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
import torch
from torchvision.models import detection as tvd
from torchvision.ops import box_area

import backbonekit as bk
from backbonekit.cli import main
from backbonekit.detection.training.config import DetectConfig
from backbonekit.detection.fpn_export import export_fpn_onnx, read_fpn_metadata
from backbonekit.detection.loading import load_detector
from helpers import fit_one_batch, randomized, tiny_set, with_random_bn_statistics, write_tiny_yolo

KINDS = ("fasterrcnn", "retinanet", "fcos")
TORCHVISION_PARTS = {  # the keys of torchvision's loss dicts, written out by hand
    "fasterrcnn": ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"),
    "retinanet": ("classification", "bbox_regression"),
    "fcos": ("classification", "bbox_regression", "bbox_ctrness"),
}
TRAIN = ["--backbone", "resnet18", "--epochs", "1", "--batch-size", "4", "--input-size", "64", "--device", "cpu",
         "--lr", "1e-3"]


@pytest.fixture(scope="module")
def yolo_dir(tmp_path_factory):  # four training images, not conftest.py's eight
    return write_tiny_yolo(tmp_path_factory.mktemp("data") / "tiny", train=4, val=4)


@pytest.fixture(scope="module", params=KINDS)
def run(request, yolo_dir, tmp_path_factory):
    kind = request.param
    out = tmp_path_factory.mktemp(kind) / "run"
    assert main(["detect", "train", "--model", kind, "--dataset", f"yolo:{yolo_dir}", "--out", str(out), *TRAIN]) == 0
    return kind, out


def _metrics(out) -> list[dict[str, str]]:
    with open(out / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_train_logs_torchvision_loss_parts_and_writes_the_run_folder(run):
    kind, out = run
    (row,) = _metrics(out)
    parts = [float(row[f"train_{p}"]) for p in TORCHVISION_PARTS[kind]]
    assert float(row["train_loss"]) == pytest.approx(sum(parts), rel=1e-5) and all(p > 0 for p in parts)
    for name in ("config.yaml", "best.pt", "last.pt", "curves.png", "per_class_ap.json", "report.html"):
        assert (out / name).is_file(), name
    ckpt = torch.load(out / "best.pt", weights_only=True)
    assert ckpt["model"] == kind and ckpt["model_kwargs"]["backbone"] == "resnet18"
    assert ckpt["model_kwargs"]["image_mean"] == pytest.approx([0.485, 0.456, 0.406])  # no pretrained run: ImageNet


def test_evaluate_and_predict_the_run(run, yolo_dir, tmp_path, capsys):
    kind, out = run
    capsys.readouterr()
    assert main(["detect", "evaluate", str(out / "best.pt"), "--device", "cpu", "--format", "json",
                 "--out", str(tmp_path / "eval")]) == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert summary["map"] == pytest.approx(float(_metrics(out)[0]["map"]), abs=1e-6)  # best.pt is epoch 1's model
    image = sorted((yolo_dir / "images" / "val").iterdir())[0]
    assert main(["detect", "predict", str(out), str(image), "--out", str(tmp_path / "pred"),
                 "--score-thresh", "0.001"]) == 0
    rows = json.loads((tmp_path / "pred" / "detections.json").read_text())
    model, ckpt = load_detector(out)
    owner = model.roi_heads if kind == "fasterrcnn" else model
    owner.score_thresh, owner.nms_thresh = 0.001, 0.45  # torchvision's own attributes, not detect()'s arguments
    owner.detections_per_img = 100_000
    from backbonekit.detection.predict import read_image

    with torch.no_grad():
        expected = model([read_image(image)])[0]
    with_area = (box_area(expected["boxes"]) > 0).nonzero().flatten()[:100]  # then --max-detections' 100
    assert len(rows) == len(with_area)
    assert sorted(r["score"] for r in rows) == pytest.approx(sorted(expected["scores"][with_area].tolist()), abs=1e-4)
    assert ckpt["classes"] == [str(c) for c in ckpt["classes"]] and model.class_names == ckpt["classes"]


def _sorted_rows(boxes, scores, labels) -> np.ndarray:
    """Detections as rows (label, score, box) in a fixed order: ties in score do not decide the order."""
    rows = np.concatenate([np.asarray(labels, np.float64)[:, None], np.asarray(scores, np.float64)[:, None],
                           np.asarray(boxes, np.float64)], 1)
    return rows[np.lexsort(np.round(rows, 3).T[::-1])]


@pytest.mark.parametrize("kind", KINDS)
def test_onnx_runtime_gives_the_detections_of_pytorch(kind, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    threshold = dict(box_score_thresh=0.0) if kind == "fasterrcnn" else dict(score_thresh=0.0)
    model = randomized(bk.create_model(kind, backbone="resnet18", num_classes=3, min_size=128, max_size=128,
                                       **threshold), seed=1)
    path = export_fpn_onnx(model, tmp_path / f"{kind}.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in ((128, 128), (96, 128)):
        image = torch.rand(3, *shape)
        with torch.no_grad():
            expected = model([image])[0]
        boxes, scores, labels = session.run(None, {"images": image[None].numpy()})
        assert len(scores) == len(expected["scores"]) > 0
        np.testing.assert_allclose(_sorted_rows(boxes, scores, labels),
                                   _sorted_rows(expected["boxes"], expected["scores"], expected["labels"]),
                                   atol=2e-3, rtol=1e-4)
    meta = read_fpn_metadata(path)
    assert meta["kind"] == kind and meta["min_size"] == 128 and len(meta["classes"]) == 3


def test_export_refuses_batches_and_int8_in_one_line(tmp_path, capsys):
    model = bk.create_model("fcos", backbone="resnet18", num_classes=2, min_size=64, max_size=64)
    with pytest.raises(ValueError, match="--int8 is not available for fcos") as e:
        export_fpn_onnx(model, tmp_path / "a.onnx", int8=True)
    assert "\n" not in str(e.value)
    assert main(["detect", "export", "retinanet", "-o", str(tmp_path / "b.onnx"), "--batch-size", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "batch size 1 only" in err and len(err.splitlines()) == 1


def test_retinanet_loss_falls_on_four_images():
    torch.manual_seed(0)
    data = tiny_set("train", 4)
    images = torch.stack([data[i][0] for i in range(4)]).float() / 255
    targets = [{"boxes": data[i][1]["boxes"].float(), "labels": data[i][1]["labels"].long()} for i in range(4)]
    model = bk.create_model("retinanet", backbone="resnet18", num_classes=10, min_size=64, max_size=64)
    losses = fit_one_batch(model, images, targets, steps=40, lr=1e-3)  # an early box-loss spike delays the fall on 4 images
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:2]), losses


def test_torchvision_fcos_file_through_the_loader_gives_torchvision_detections(tmp_path):
    torch.manual_seed(0)
    reference = with_random_bn_statistics(tvd.fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=5,
                                                                min_size=128, max_size=128, score_thresh=0.0)).eval()
    path = tmp_path / "fcos_resnet50_fpn.pth"
    torch.save(reference.state_dict(), path)
    model, ckpt = load_detector(path, input_size=128)
    assert ckpt == {} and model.num_classes == 5
    images = [torch.rand(3, 128, 112), torch.rand(3, 96, 128)]
    with torch.no_grad():
        found = model.detect(images, score_thresh=0.0)
        reference.detections_per_img = 100_000
        expected = reference(images)
    for f, e in zip(found, expected):
        e = {k: v[(box_area(e["boxes"]) > 0).nonzero().flatten()[:100]] for k, v in e.items()}  # detect's rule
        assert e["boxes"].shape[0] > 0 and f["boxes"].shape == e["boxes"].shape
        torch.testing.assert_close(f["boxes"], e["boxes"], atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(f["scores"], e["scores"], atol=1e-5, rtol=1e-4)
        assert torch.equal(f["labels"], e["labels"])


def test_pretrained_classification_run_sets_the_normalisation(tmp_path):
    from backbonekit.detection.training.build import build_torchvision_detector

    body = bk.create_model("resnet18", num_classes=4)
    path = tmp_path / "best.pt"
    mean, std = [0.2, 0.3, 0.4], [0.5, 0.6, 0.7]
    torch.save({"format": "backbonekit", "model": "resnet18", "model_kwargs": {}, "num_classes": 4,
                "state_dict": body.state_dict(), "preprocessing": {"mean": mean, "std": std, "image_size": 64,
                                                                   "classes": list("abcd"), "dataset": "x"}}, path)
    cfg = DetectConfig(model="fasterrcnn", backbone="resnet18", pretrained=str(path), input_size=64, device="cpu")
    with pytest.warns(UserWarning, match="backbone only"):
        model, kwargs = build_torchvision_detector(cfg, 3)
    assert model.transform.image_mean == pytest.approx(mean) and model.transform.image_std == pytest.approx(std)
    assert kwargs["frozen_bn"] is True
    torch.testing.assert_close(model.backbone.body.state_dict()["layer1.0.conv1.weight"],
                               body.state_dict()["layer1.0.conv1.weight"])


@pytest.mark.parametrize("argv, message", [
    (["--model", "fasterrcnn", "--anchors", "coco"], "anchors is a YOLOv3 option"),
    (["--model", "fcos", "--neck-width", "0.25"], "neck_width is a YOLOv3 option"),
    (["--model", "ssd"], "model"),
    (["--model", "yolov3", "--fpn-min-level", "3"], "fpn_min_level is an option of the FPN detectors"),
    (["--model", "retinanet", "--fpn-min-level", "4"], "fpn_min_level must be 2"),
])
def test_yolo_only_options_and_unknown_models_are_one_line(argv, message, capsys):
    assert main(["detect", "train", *argv, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_profile_leaves_the_anchor_cache_usable():
    from backbonekit.profiler import profile_model

    torch.manual_seed(0)
    model = bk.create_model("retinanet", backbone="resnet18", num_classes=3, min_size=64, max_size=64,
                            score_thresh=0.0).eval()
    image = [torch.rand(3, 64, 64)]
    with torch.no_grad():
        before = model(image)[0]
    result = profile_model(model, 64)
    assert result.macs > 0
    cached = model.anchor_generator.cell_anchors
    assert all(a.device.type == "cpu" for a in cached)  # the meta-device estimate left them as they were
    with torch.no_grad():
        after = model(image)[0]
    torch.testing.assert_close(after["boxes"], before["boxes"])


def test_a_checkpoint_rebuilds_the_pyramid_it_trained_with(tmp_path):
    """A RetinaNet on DetNet-59 trained from P3 loads from its file with P3-P6 (its config and model_kwargs
    record it), with the same detections as the model that was saved."""
    from backbonekit.detection.training import trainer as detect_trainer

    cfg = DetectConfig(model="retinanet", backbone="detnet59", input_size=64, fpn_min_level=3)
    model, kwargs = detect_trainer.build_from_config(cfg, 3, None)
    assert kwargs["fpn_min_level"] == 3
    randomized(model)
    path = tmp_path / "best.pt"
    torch.save(detect_trainer.checkpoint_dict(model, cfg, ["a", "b", "c"], kwargs, epoch=1, history=[],
                                              best_map=0.0), path)
    loaded, _ = load_detector(path)
    assert loaded.backbone.strides == (8, 16, 16, 16)
    image = torch.rand(3, 64, 64)
    model.eval()
    with torch.no_grad():
        ours, theirs = model([image])[0], loaded([image])[0]
    assert len(ours["scores"]) > 0
    torch.testing.assert_close(ours["scores"], theirs["scores"])
    # fine-tuning from the file, and resuming a run, keep its level when the config sets none, and record it
    plain = DetectConfig(model="retinanet", backbone="detnet59", input_size=64)
    tuned, tuned_kwargs = detect_trainer.build_from_config(dataclasses.replace(plain, pretrained=str(path)), 3, None)
    resumed, _ = detect_trainer.build_from_config(plain, 3, None, load_pretrained=False, resumed_kwargs=kwargs)
    assert tuned.backbone.strides == resumed.backbone.strides == (8, 16, 16, 16)
    assert tuned_kwargs["fpn_min_level"] == 3


def test_loader_refuses_a_file_that_is_no_detector_in_one_line(tmp_path, capsys):
    path = tmp_path / "resnet18.pth"
    torch.save(bk.create_model("resnet18", num_classes=4).state_dict(), path)  # a classifier, not a detector
    image = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    assert main(["detect", "predict", str(path), str(image), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot load a detector from" in err and "torchvision fasterrcnn/retinanet/fcos" in err
    assert len(err.splitlines()) == 1


def test_fine_tuning_from_a_detect_train_checkpoint_keeps_its_weights_and_normalisation(run):
    """A detect-train file records the builder's arguments (backbone, frozen_bn, image_mean...): starting a
    new detector from it must not pass them twice, and must keep the run's mean/std, not ImageNet's."""
    from backbonekit.detection.weights import normalisation_of

    kind, out = run
    ckpt = torch.load(out / "best.pt", weights_only=True)
    ckpt["model_kwargs"]["image_mean"], ckpt["model_kwargs"]["image_std"] = [0.1, 0.2, 0.3], [0.4, 0.5, 0.6]
    path = out.parent / "recorded-norm.pt"
    torch.save(ckpt, path)
    assert normalisation_of(path) == ([0.1, 0.2, 0.3], [0.4, 0.5, 0.6])
    model = bk.create_model(kind, backbone="resnet18", pretrained=str(path))
    assert model.transform.image_mean == pytest.approx([0.1, 0.2, 0.3])
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in ckpt["state_dict"].items() if k in own)


def test_pretrained_normalisation_follows_what_the_weights_were_trained_on(tmp_path):
    from backbonekit.detection.weights import normalisation_of
    from backbonekit.pretrained import IMAGENET_MEAN

    torchvision_file = tmp_path / "resnet18.pth"
    torch.save(bk.create_model("resnet18").state_dict(), torchvision_file)
    assert normalisation_of(torchvision_file)[0] == pytest.approx(list(IMAGENET_MEAN))
    darknet_file = tmp_path / "yolov3.weights"
    from backbonekit.darknet_yolov3 import write_yolov3_weights

    tiny = bk.create_model("yolov3", num_classes=2, neck_channels=(64, 32, 16))
    write_yolov3_weights(tiny.state_dict(), darknet_file, neck_channels=(64, 32, 16))
    assert normalisation_of(darknet_file) is None  # Darknet feeds raw [0, 1]


def test_an_fpn_onnx_file_is_refused_by_the_yolo_and_classifier_readers_in_one_line(tmp_path):
    from backbonekit.onnx_meta import read_metadata

    model = bk.create_model("fcos", backbone="resnet18", num_classes=2, min_size=64, max_size=64)
    path = export_fpn_onnx(model, tmp_path / "fcos.onnx")
    with pytest.raises(ValueError, match="Faster R-CNN / RetinaNet / FCOS export") as info:
        read_metadata(path)
    assert "\n" not in str(info.value)

"""YOLOv3 to ONNX: decoding in the graph, NMS appended; onnxruntime against PyTorch at fixed and dynamic batch."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torchvision.ops import batched_nms, box_convert

import backbonekit as bk
from backbonekit.detection.export import export_yolov3_onnx
from helpers import with_random_bn_statistics

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _torch_nms(pred: torch.Tensor, score_thresh: float, iou: float) -> set[tuple]:
    """torchvision's class-aware NMS on every image: {(image, label, rounded box)}."""
    found = set()
    for n, p in enumerate(pred):
        scores = p[:, 4:5] * p[:, 5:]
        idx, labels = (scores > score_thresh).nonzero(as_tuple=True)
        boxes = box_convert(p[idx, :4], "cxcywh", "xyxy")
        for k in batched_nms(boxes, scores[idx, labels], labels, iou).tolist():
            found.add((n, int(labels[k]), *np.round(boxes[k].numpy(), 2).tolist()))
    return found


@pytest.mark.parametrize("dynamic_batch", [False, True])
def test_onnx_with_nms_equals_pytorch(tmp_path, dynamic_batch: bool) -> None:
    model = with_random_bn_statistics(bk.create_model("yolov3", backbone="resnet18", num_classes=3,
                                                      neck_channels=(32, 16, 8), input_size=64)).eval()
    reference = copy.deepcopy(model)
    path = export_yolov3_onnx(model, tmp_path / "yolov3.onnx", nms=True, dynamic_batch=dynamic_batch,
                              score_thresh=0.2, nms_thresh=0.45, max_detections=1000)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["predictions", "selected", "boxes", "scores", "labels"]
    batch = 3 if dynamic_batch else 1
    x = torch.rand(batch, 3, 64, 64)
    pred, selected, boxes, scores, labels = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        expected = reference.forward_raw(x)
    np.testing.assert_allclose(pred, expected.numpy(), rtol=1e-4, atol=1e-3)
    # NMS in the graph against torchvision's batched_nms on the same decoded predictions
    found = {(int(i), int(c), *np.round(b, 2).tolist()) for (i, c, _), b in zip(selected, boxes)}
    assert found == _torch_nms(torch.from_numpy(pred), 0.2, 0.45) and len(found) > 0
    assert (labels == selected[:, 1]).all()
    chosen = pred[selected[:, 0], selected[:, 2]]
    np.testing.assert_allclose(scores, chosen[:, 4] * chosen[np.arange(len(chosen)), 5 + selected[:, 1]], rtol=1e-6)
    if dynamic_batch:
        assert session.run(["predictions"], {"images": x[:1].numpy()})[0].shape == (1, 252, 8)


def test_onnx_without_nms_has_one_output(tmp_path) -> None:
    model = bk.create_model("yolov3", backbone="resnet18", num_classes=1, neck_channels=(16, 8, 4), input_size=64)
    path = export_yolov3_onnx(model, tmp_path / "plain.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["predictions"]
    with pytest.raises(ValueError, match="multiple of 32"):
        export_yolov3_onnx(model, tmp_path / "bad.onnx", input_size=70)


def test_a_normalising_detector_keeps_its_normalisation_in_onnx(tmp_path) -> None:
    # image_mean/std is applied inside the network, so the file takes the same [0, 1] pixels as PyTorch
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    model = with_random_bn_statistics(bk.create_model("yolov3", backbone="resnet18", num_classes=2, input_size=64,
                                                      neck_channels=(16, 8, 4), image_mean=mean, image_std=std)).eval()
    plain = copy.deepcopy(model)
    plain.image_mean = plain.image_std = None
    path = export_yolov3_onnx(model, tmp_path / "normalised.onnx")
    x = torch.rand(1, 3, 64, 64)
    (pred,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(pred, model.forward_raw(x).numpy(), rtol=1e-4, atol=1e-3)
        assert not np.allclose(pred, plain.forward_raw(x).numpy(), rtol=1e-4, atol=1e-3)  # the check can fail


def test_onnx_nms_drops_boxes_without_area_and_caps_each_image(tmp_path) -> None:
    from torchvision.ops import box_area, clip_boxes_to_image

    from backbonekit.detection.data.transforms import letterbox_images

    torch.manual_seed(1)
    model = with_random_bn_statistics(bk.create_model("yolov3", backbone="resnet18", num_classes=3,
                                                      neck_channels=(32, 16, 8), input_size=64)).eval()
    path = export_yolov3_onnx(model, tmp_path / "capped.onnx", nms=True, dynamic_batch=True, score_thresh=0.05,
                              nms_thresh=0.45, max_detections=4)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]  # image_regions is optional
    batch, places = letterbox_images([torch.rand(3, 8, 64), torch.rand(3, 64, 12), torch.rand(3, 40, 40)], 64)
    regions = np.array([[b.left, b.top, b.left + b.new_w, b.top + b.new_h] for b in places], np.float32)
    pred, selected, boxes = session.run(["predictions", "selected", "boxes"],
                                        {"images": batch.numpy(), "image_regions": regions})
    plain_selected, plain_boxes = session.run(["selected", "boxes"], {"images": batch.numpy()})
    dropped_any = False
    for n, (p, place) in enumerate(zip(torch.from_numpy(pred), places)):
        scores = p[:, 4:5] * p[:, 5:]
        idx, labels = (scores > 0.05).nonzero(as_tuple=True)
        xyxy, scores = box_convert(p[idx, :4], "cxcywh", "xyxy"), scores[idx, labels]
        offset = torch.tensor([place.left, place.top] * 2)
        scale = torch.tensor([place.width / place.new_w, place.height / place.new_h] * 2)
        with_area = box_area(clip_boxes_to_image((xyxy - offset) * scale, (place.height, place.width))) > 0
        dropped_any |= not bool(with_area.all())
        everything = torch.ones_like(with_area)  # without image_regions: the whole input is the image
        for chosen, found, kept in ((selected, boxes, with_area), (plain_selected, plain_boxes, everything)):
            keep = batched_nms(xyxy[kept], scores[kept], labels[kept], 0.45)[:4]  # best 4 of the image, any class
            expected = {(int(c), *np.round(b.numpy(), 2).tolist())
                        for c, b in zip(labels[kept][keep], xyxy[kept][keep])}
            mine = chosen[:, 0] == n
            assert {(int(c), *np.round(b, 2).tolist()) for c, b in zip(chosen[mine, 1], found[mine])} == expected
            assert len(expected) == 4
    assert dropped_any  # the check can fail: some candidate lay in the padding

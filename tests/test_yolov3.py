"""YOLOv3: published figures, Darknet's decoding, Darknet .weights files, eval postprocessing.

Independent references: Darknet's published parameter, float and BFLOP counts; files packed by a
cfg-driven YOLOv3 (tests/yolo_cfg_reference.py) in its own layer order; hand-computed decodings.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from torchvision.ops import box_area, clip_boxes_to_image, nms

import backbonekit as bk
from backbonekit.checkpoint import CheckpointError
from backbonekit.detection.models.yolov3 import check_images, letterbox_geometry
from backbonekit.darknet_yolov3 import inspect_yolov3_file, write_yolov3_weights
from helpers import with_random_bn_statistics
from yolo_cfg_reference import CfgYOLOv3, yolov3_cfg

# Darknet's figures: AlexeyAB/darknet#1910 and pjreddie.com/darknet/yolo
YOLOV3_PARAMS = 61_949_149
YOLOV3_FLOATS = 62_001_757
YOLOV3_FILE_BYTES = 248_007_048
YOLOV3_MACS_416 = 32_932_037_632
DARKNET_BFLOPS = {320: 38.97, 416: 65.86, 608: 140.69}


def small_model(num_classes: int = 3, **kwargs) -> torch.nn.Module:
    """A fast YOLOv3 for behaviour tests: ResNet-18 backbone, narrow neck, 64x64 input."""
    kwargs = {"backbone": "resnet18", "neck_channels": (32, 16, 8), "input_size": 64, **kwargs}
    return with_random_bn_statistics(bk.create_model("yolov3", num_classes=num_classes, **kwargs))


@pytest.fixture(scope="module")
def meta_yolov3() -> torch.nn.Module:
    with torch.device("meta"):
        return bk.create_model("yolov3")


# -- the model and its figures ------------------------------------------------------------------
def test_registry_keeps_detectors_apart() -> None:
    assert bk.list_models(task="detection") == ["fasterrcnn", "fcos", "retinanet", "yolov3"]
    assert "yolov3" not in bk.list_models() and "darknet53" in bk.list_models()
    assert set(bk.list_models(task=None)) == set(bk.list_models()) | set(bk.list_models(task="detection"))
    assert bk.model_info("yolov3").task == "detection"
    with pytest.raises(ValueError, match="task must be one of"):
        bk.list_models(task="segmentation")


def test_parameter_count_is_darknets(meta_yolov3) -> None:
    assert sum(p.numel() for p in meta_yolov3.parameters()) == YOLOV3_PARAMS == bk.model_info("yolov3").params
    floats = sum(t.numel() for k, t in meta_yolov3.state_dict().items() if not k.endswith("num_batches_tracked"))
    assert floats == YOLOV3_FLOATS and 20 + 4 * floats == YOLOV3_FILE_BYTES
    assert (meta_yolov3.num_classes, meta_yolov3.strides, meta_yolov3.masks) == (80, (32, 16, 8),
                                                                               ((6, 7, 8), (3, 4, 5), (0, 1, 2)))
    assert meta_yolov3.anchors.tolist()[-1] == [373.0, 326.0] and meta_yolov3.anchors.shape == (9, 2)


@pytest.mark.parametrize("size", [320, 416, 608])
def test_macs_are_darknets(meta_yolov3, size: int) -> None:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta_yolov3.forward_levels(torch.zeros(1, 3, size, size, device="meta"))
    flops = counter.get_total_flops()  # Darknet's "BFLOPs" are 2 x conv multiply-adds
    assert round(flops / 1e9, 2) == DARKNET_BFLOPS[size]
    if size == 416:
        assert flops // 2 == YOLOV3_MACS_416


def test_other_backbones_feed_the_neck_by_feature_info() -> None:
    with torch.device("meta"):
        model = bk.create_model("yolov3", backbone="resnet50", num_classes=20)
    assert model.neck.detect1.conv1.conv.in_channels == 2048
    assert model.neck.detect2.conv1.conv.in_channels == 256 + 1024
    assert model.head.convs_pred[2].out_channels == 3 * 25
    with pytest.raises(ValueError, match="features_only"):
        bk.create_model("yolov3", features_only=True)
    with pytest.raises(ValueError, match="num_classes must be"):
        bk.create_model("yolov3", num_classes=0, backbone="resnet18")


# -- Darknet's decoding ---------------------------------------------------------------------------
def test_forward_raw_decodes_like_darknet_by_hand() -> None:
    model = small_model(num_classes=1).eval()
    a = torch.log(torch.tensor(2.0))  # exp(tw) = 2
    c = torch.log(torch.tensor(3.0))  # sigmoid(logit 3-to-1) = 0.75
    for pred in model.head.convs_pred:  # constant raw outputs: tx=ty=0, tw=th=ln 2, to=0, class logit ln 3
        torch.nn.init.zeros_(pred.weight)
        pred.bias.data.copy_(torch.tensor([0.0, 0.0, a, a, 0.0, c] * 3))
    out = model.forward_raw(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 3 * (2 * 2 + 4 * 4 + 8 * 8), 6)
    # row 7: stride 32 (2x2 cells), anchor 1 of mask 6,7,8 = (156, 198), row 1, column 1
    assert out[1, 7].tolist() == pytest.approx([48.0, 48.0, 312.0, 396.0, 0.5, 0.75])
    # row 12 + 2*16 + 6: stride 16 (4x4), anchor 2 of mask 3,4,5 = (59, 119), row 1, column 2
    assert out[0, 12 + 2 * 16 + 6].tolist() == pytest.approx([40.0, 24.0, 118.0, 238.0, 0.5, 0.75])
    # last row: stride 8 (8x8), anchor 2 of mask 0,1,2 = (33, 23), row 7, column 7
    assert out[0, -1].tolist() == pytest.approx([60.0, 60.0, 66.0, 46.0, 0.5, 0.75])


def test_forward_contracts_and_training_hook() -> None:
    model = small_model(num_classes=2)
    x = torch.rand(2, 3, 64, 96)
    levels = model.forward_levels(x)
    assert [tuple(t.shape) for t in levels] == [(2, 21, 2, 3), (2, 21, 4, 6), (2, 21, 8, 12)]
    model.train()
    with pytest.raises(NotImplementedError, match="loss"):
        model(x, [])
    model.loss_fn = lambda lv, targets: {"loss_sum": sum(t.sum() for t in lv), "n": len(targets)}
    losses = model(x, [{}, {}])
    assert set(losses) == {"loss_sum", "n"} and losses["loss_sum"].requires_grad
    model.eval()
    assert model(x).shape == (2, 3 * (6 + 24 + 96), 7)
    with pytest.raises(ValueError, match="multiples of 32"):
        model.forward_raw(torch.rand(1, 3, 65, 64))


# -- Darknet .weights files --------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference_file(tmp_path_factory):
    """A cfg-driven YOLOv3 (2 classes) with random weights and BN statistics, and the file it packs."""
    torch.manual_seed(1)
    ref = with_random_bn_statistics(CfgYOLOv3(yolov3_cfg(classes=2, width=64)))
    for seq in ref.conv_layers():
        if seq[0].bias is not None:
            torch.nn.init.uniform_(seq[0].bias, -1, 1)
    path = tmp_path_factory.mktemp("weights") / "yolov3-2.weights"
    ref.save_weights(str(path))
    return ref, path


def test_weights_file_gives_the_cfg_reference_outputs(reference_file, tmp_path) -> None:
    ref, path = reference_file
    model = bk.create_model("yolov3", pretrained=path, input_size=64).eval()  # class count from the size
    assert model.num_classes == 2
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected, found = ref(x), model.forward_raw(x)
    assert expected.shape == found.shape == (2, 3 * (4 + 16 + 64), 7)
    assert expected.abs().max() > 1  # not all zero / saturated
    torch.testing.assert_close(found, expected, rtol=1e-4, atol=1e-4)
    # written back: the same bytes after the header
    out = tmp_path / "back.weights"
    write_yolov3_weights(model.state_dict(), out)
    assert out.read_bytes()[20:] == path.read_bytes()[20:]


def test_weights_header_v01_and_backbone_only_file(reference_file, tmp_path) -> None:
    ref, path = reference_file
    old = tmp_path / "v01.weights"  # 16-byte header: seen as int32
    old.write_bytes(struct.pack("<3ii", 0, 1, 0, 12345) + path.read_bytes()[20:])
    info = inspect_yolov3_file(old)
    assert (info.header.version, info.header.seen, info.num_classes) == ("0.1.0", 12345, 2)
    # darknet53.conv.74: header and the first 52 conv layers' floats, packed by hand
    backbone_floats = sum(t.numel() for seq in ref.conv_layers()[:52] for t in seq.state_dict().values()
                          if t.dtype == torch.float32)
    conv74 = tmp_path / "darknet53.conv.74"
    conv74.write_bytes(path.read_bytes()[:20 + 4 * backbone_floats])
    with pytest.warns(UserWarning, match="neck and head start from scratch"):
        model = bk.create_model("yolov3", pretrained=conv74, num_classes=5)
    torch.testing.assert_close(model.backbone.stages[4].blocks[3].conv2.bn.running_var,
                               ref.conv_layers()[51][1].running_var)
    torch.testing.assert_close(model.backbone.stem.conv.weight, ref.conv_layers()[0][0].weight)


def test_ultralytics_file_with_a_0_0_0_header_is_read(reference_file, tmp_path) -> None:
    ref, path = reference_file
    port = tmp_path / "last.weights"  # ultralytics/yolov3's save_weights: version 0.0.0 (from scratch), int64 seen
    port.write_bytes(struct.pack("<3iq", 0, 0, 0, 6400) + path.read_bytes()[20:])
    info = inspect_yolov3_file(port)
    assert (info.header.nbytes, info.header.seen, info.num_classes) == (20, 6400, 2)
    with pytest.warns(UserWarning, match="version 0.0.0 .* assumed a 20-byte header"):
        model = bk.create_model("yolov3", pretrained=port, input_size=64).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_raw(x), ref(x), rtol=1e-4, atol=1e-4)


def test_stray_bytes_after_a_whole_file_name_its_class_count(tmp_path) -> None:
    path = tmp_path / "yolov3.weights"
    _sparse_file(path, YOLOV3_FLOATS)
    with open(path, "r+b") as f:
        f.truncate(YOLOV3_FILE_BYTES + 3)
    with pytest.raises(CheckpointError) as err:
        inspect_yolov3_file(path)
    message = str(err.value)
    assert "found 62,001,757 (exactly 80 classes) followed by 3 stray bytes" in message
    assert "240x256" not in message  # not the layers of 75 classes (5 taken off twice)


def _sparse_file(path, num_floats: int, minor: int = 2) -> None:
    with open(path, "wb") as f:
        f.write(struct.pack("<3iq", 0, minor, 0, 0))
        f.truncate(20 + 4 * num_floats)


def _reference_floats(classes: int) -> int:
    with torch.device("meta"):
        ref = CfgYOLOv3(yolov3_cfg(classes=classes))
    return sum(t.numel() for k, t in ref.state_dict().items() if not k.endswith("num_batches_tracked"))


@pytest.mark.parametrize("classes", [80, 20, 17])
def test_class_count_from_file_size(tmp_path, classes: int) -> None:
    path = tmp_path / "x.weights"
    _sparse_file(path, _reference_floats(classes))
    assert inspect_yolov3_file(path).num_classes == classes


def test_file_of_no_class_count_refused_in_one_line(tmp_path) -> None:
    path = tmp_path / "bad.weights"
    _sparse_file(path, YOLOV3_FLOATS - 10)
    with pytest.raises(CheckpointError) as err:
        bk.create_model("yolov3", pretrained=path)
    message = str(err.value)
    assert "\n" not in message and "62,001,757 for 80" in message and "found 62,001,747" in message
    assert "layer 105" in message and "head.convs_pred.2" in message


# -- images in, detections out -----------------------------------------------------------------
def test_letterbox_geometry_and_mapping_by_hand() -> None:
    box = letterbox_geometry(50, 80, 64)  # h=50, w=80 -> 64x40 at top 12 (the one letterbox, augment.py)
    assert (box.new_w, box.new_h, box.left, box.top) == (64, 40, 0, 12)
    mapped = box.to_original(torch.tensor([[8.0, 22.0, 40.0, 60.0]]))
    assert mapped.tolist() == [[10.0, 12.5, 50.0, 50.0]]  # x*1.25, (y-12)*1.25, clipped to the height
    tall = letterbox_geometry(100, 30, 64)  # h=100, w=30 -> 19x64 at left 22
    assert (tall.new_w, tall.new_h, tall.left, tall.top) == (19, 64, 22, 0)


def _reference_detections(model, image, score_thresh, nms_thresh, max_det):
    """Letterbox by hand, then per class torchvision.ops.nms, best max_det, boxes back by hand."""
    h, w = image.shape[1:]
    s = 64
    nw, nh = (s, int(h * s // w)) if w >= h else (int(w * s // h), s)
    top, left = (s - nh) // 2, (s - nw) // 2
    canvas = torch.full((1, 3, s, s), 0.5)
    canvas[0, :, top:top + nh, left:left + nw] = torch.nn.functional.interpolate(image[None], (nh, nw),
                                                                                 mode="bilinear")[0]
    pred = model.forward_raw(canvas)[0]
    sx, sy = w / nw, h / nh
    found = []
    for c in range(model.num_classes):
        score = pred[:, 4] * pred[:, 5 + c]
        cx, cy, bw, bh = pred[:, :4].unbind(1)
        boxes = torch.stack((cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2), 1)
        in_image = clip_boxes_to_image((boxes - torch.tensor([left, top] * 2)) * torch.tensor([sx, sy] * 2), (h, w))
        keep = (score > score_thresh) & (box_area(in_image) > 0)  # nothing of a box in the padding is left
        boxes = boxes[keep]
        for i in nms(boxes, score[keep], nms_thresh).tolist():
            found.append((score[keep][i].item(), c, boxes[i]))
    found.sort(key=lambda t: -t[0])
    out = []
    for sc, c, b in found[:max_det]:
        x1, y1, x2, y2 = b.tolist()
        out.append((c, sc, [min(max((x1 - left) * sx, 0), w), min(max((y1 - top) * sy, 0), h),
                            min(max((x2 - left) * sx, 0), w), min(max((y2 - top) * sy, 0), h)]))
    return out


def test_postprocess_drops_boxes_in_the_padding_before_the_cap() -> None:
    from torchvision.ops import batched_nms

    from backbonekit.detection.models.yolov3 import postprocess

    box = letterbox_geometry(16, 64, 64)  # a 64 x 16 image fills rows 24..40 of the 64 x 64 input
    assert (box.top, box.new_h) == (24, 16)
    rows = torch.tensor([  # cx, cy, w, h, objectness, p(class 0), p(class 1)
        [10.0, 8.0, 12.0, 10.0, 1.0, 0.95, 0.0],   # in the padding above the image: best score, no area left
        [30.0, 56.0, 20.0, 12.0, 1.0, 0.0, 0.9],   # in the padding below
        [50.0, 22.0, 10.0, 4.0, 1.0, 0.85, 0.0],   # ends on the image's top edge (y 20..24): no area
        [10.0, 30.0, 8.0, 8.0, 1.0, 0.7, 0.0],     # inside
        [40.0, 22.0, 10.0, 6.0, 1.0, 0.0, 0.6],    # straddles the top edge (y 19..25): one row inside
        [54.0, 34.0, 6.0, 6.0, 1.0, 0.5, 0.0],     # inside, fourth best in the image
    ])
    found = postprocess(rows[None], [box], score_thresh=0.1, nms_thresh=0.45, detections_per_img=2)[0]
    # the reference: torchvision's box_area on each box mapped into the image and clipped, then batched_nms
    scores, labels = (rows[:, 4:5] * rows[:, 5:]).max(1)
    xyxy = torch.cat([rows[:, :2] - rows[:, 2:4] / 2, rows[:, :2] + rows[:, 2:4] / 2], 1)
    offset = torch.tensor([box.left, box.top] * 2)
    scale = torch.tensor([box.width / box.new_w, box.height / box.new_h] * 2)
    in_image = clip_boxes_to_image((xyxy - offset) * scale, (16, 64))
    has_area = (box_area(in_image) > 0).nonzero().flatten()
    assert has_area.tolist() == [3, 4, 5]
    keep = has_area[batched_nms(xyxy[has_area], scores[has_area], labels[has_area], 0.45)][:2]
    torch.testing.assert_close(found["boxes"], in_image[keep])
    torch.testing.assert_close(found["scores"], scores[keep])
    assert found["labels"].tolist() == labels[keep].tolist() == [0, 1]


def test_eval_detections_match_a_hand_pipeline() -> None:
    model = small_model(num_classes=3).eval()
    images = [torch.rand(3, 50, 80), torch.rand(3, 100, 30)]
    results = model.detect(images, score_thresh=0.2, nms_thresh=0.45, detections_per_img=7)
    assert len(results) == 2
    for image, result in zip(images, results):
        expected = _reference_detections(model, image, 0.2, 0.45, 7)
        assert 0 < len(expected) and len(result["boxes"]) == len(expected)
        assert result["labels"].tolist() == [c for c, _, _ in expected]
        assert result["scores"].tolist() == pytest.approx([s for _, s, _ in expected], rel=1e-5)
        torch.testing.assert_close(result["boxes"], torch.tensor([b for _, _, b in expected]), rtol=1e-4, atol=1e-3)
    assert all(len(r["boxes"]) == 0 for r in model.detect(images, score_thresh=1.0))
    default = model(images)  # eval forward on a list: the model's own thresholds (0.05, 0.45, 100)
    assert len(default) == 2 and all(len(r["boxes"]) <= 100 for r in default)


@pytest.mark.parametrize("images, match", [
    ([], "non-empty list"),
    ([torch.rand(1, 20, 20)], "image 0: expected a 3-channel"),
    ([torch.rand(3, 20, 20), torch.rand(20, 20)], "image 1: expected a 3-channel"),
    ([torch.zeros(3, 8, 8, dtype=torch.uint8)], "divide uint8 images by 255"),
    ([np.zeros((3, 8, 8))], "found ndarray"),
])
def test_bad_images_one_line(images, match: str) -> None:
    with pytest.raises(ValueError, match=match) as err:
        check_images(images)
    assert "\n" not in str(err.value)



def test_convert_round_trip_keeps_the_bytes(reference_file, tmp_path) -> None:
    from backbonekit.detection.weights import convert_detector_weights

    _, path = reference_file
    pt = convert_detector_weights(path, tmp_path / "det.pt")
    back = convert_detector_weights(pt, tmp_path / "back.weights")
    assert back.read_bytes()[20:] == path.read_bytes()[20:]
    (tmp_path / "back.weights").write_bytes(path.read_bytes()[:20] + bytes(len(path.read_bytes()) - 20))
    assert convert_detector_weights(pt, back) == back  # a YOLOv3 Darknet file holds nothing the output lacks
    assert back.read_bytes()[20:] == path.read_bytes()[20:]
    model = bk.create_model("yolov3", pretrained=pt)  # the checkpoint records the architecture
    assert model.num_classes == 2 and model.model_kwargs["backbone"] == "darknet53"


def test_predict_files_writes_annotated_images_and_coco_results(tmp_path) -> None:
    import json

    from PIL import Image

    from backbonekit.detection.predict import class_names, coco_categories, predict_files, read_image

    model = small_model(num_classes=3).eval()
    paths = []
    for name, (h, w) in (("000000000042", (40, 70)), ("b", (90, 50))):
        path = tmp_path / f"{name}.png"
        Image.fromarray(np.random.randint(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    out = predict_files(model, paths, tmp_path / "out", names=["cat", "dog", "fish"], score_thresh=0.2)
    rows = json.loads(out.read_text())
    pixels = [torch.from_numpy(np.asarray(Image.open(p))).permute(2, 0, 1).float() / 255 for p in paths]
    torch.testing.assert_close(read_image(paths[0]), pixels[0])
    expected = model.detect(pixels, score_thresh=0.2)
    assert len(rows) == sum(len(r["boxes"]) for r in expected) > 0
    assert {r["image_id"] for r in rows} <= {0, 1} and set(rows[0]) == {"image_id", "category_id", "bbox", "score"}
    first = expected[0]["boxes"][0].tolist()
    assert rows[0]["bbox"] == pytest.approx([first[0], first[1], first[2] - first[0], first[3] - first[1]], abs=0.01)
    drawn = np.asarray(Image.open(tmp_path / "out" / "000000000042.png"))
    assert drawn.shape == (40, 70, 3)
    names = class_names(80)
    assert names[0] == "person" and names[-1] == "toothbrush" and coco_categories()[-1] == (90, "toothbrush")
    bad = tmp_path / "not-an-image.png"
    bad.write_text("hello")
    with pytest.raises(OSError, match="cannot read image .*not-an-image.png: UnidentifiedImageError"):
        predict_files(model, [bad], tmp_path / "out2")


def test_profile_splits_backbone_neck_head() -> None:
    from backbonekit.profiler import profile_model

    result = profile_model(small_model(num_classes=2), 64)
    top = {layer.name: layer.macs for layer in result.layers if layer.depth == 1}
    assert set(top) == {"backbone", "neck", "head"} and sum(top.values()) == result.macs > 0

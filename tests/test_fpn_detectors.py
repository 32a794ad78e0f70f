"""Faster R-CNN, RetinaNet and FCOS on this package's backbones: DetNet's pyramid and RoI pooling, FCOS's
per-level ranges, the label convention, torchvision interop, freezing, profiling, bad input.

References are independent of the code under test: torchvision's own detectors and ``roi_align``, the FPN
paper's level formula, FCOS's published regression ranges, torchvision's published parameter counts.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models import detection as tvd
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection._utils import overwrite_eps
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

import backbonekit as bk
from backbonekit.checkpoint import CheckpointError
from backbonekit.detection import LevelRoIAlign
from helpers import with_random_bn_statistics

SMALL = dict(min_size=128, max_size=128)
FEW_PROPOSALS = dict(rpn_pre_nms_top_n_train=50, rpn_post_nms_top_n_train=20, rpn_pre_nms_top_n_test=50,
                     rpn_post_nms_top_n_test=20, box_batch_size_per_image=16)


def small_detector(kind: str, backbone: str = "resnet18", num_classes: int = 3, **kwargs) -> nn.Module:
    extra = FEW_PROPOSALS if kind == "fasterrcnn" else {}
    return bk.create_model(kind, backbone=backbone, num_classes=num_classes, **{**SMALL, **extra, **kwargs})


# -- DetNet's pyramid ----------------------------------------------------------------------------------
def test_detnet_pyramid_is_stages_2_to_6_and_topdown_adds_equal_strides_without_upsampling():
    torch.manual_seed(0)
    model = small_detector("fasterrcnn", "detnet59").eval()
    backbone = model.backbone
    assert backbone.strides == (4, 8, 16, 16, 16) and backbone.levels == (2, 3, 4, 5, 6)
    assert [info.module for info in backbone.body.feature_info] == ["layer1", "layer2", "layer3", "layer4", "layer5"]
    assert [s for (s,) in model.rpn.anchor_generator.sizes] == [32, 64, 128, 256, 512]
    pooler = model.roi_heads.box_roi_pool
    assert isinstance(pooler, LevelRoIAlign) and pooler.levels == (2, 3, 4, 5, 6) and pooler.featmap_names == list("01234")
    fpn = backbone.fpn
    with torch.no_grad():
        nn.init.normal_(fpn.inner_blocks[4][0].bias)  # so the top-down terms are not zero
        feats = backbone.body(torch.rand(1, 3, 96, 128))
        out = list(fpn(OrderedDict((str(i), f) for i, f in enumerate(feats))).values())
        # by hand: stride-16 levels add as they are; only 16 -> 8 and 8 -> 4 upsample (x2 nearest)
        lateral = [fpn.inner_blocks[i](f) for i, f in enumerate(feats)]
        top = [None] * 5
        top[4] = lateral[4]
        top[3] = lateral[3] + top[4]
        top[2] = lateral[2] + top[3]
        top[1] = lateral[1] + top[2].repeat_interleave(2, 2).repeat_interleave(2, 3)
        top[0] = lateral[0] + top[1].repeat_interleave(2, 2).repeat_interleave(2, 3)
        expected = [fpn.layer_blocks[i](t) for i, t in enumerate(top)]
    assert len(out) == 5 and all(torch.equal(a, b) for a, b in zip(out, expected))


@pytest.mark.parametrize("kind, backbone, min_level, strides, bodies", [
    ("retinanet", "detnet59", None, (4, 8, 16, 16, 16), ["layer1", "layer2", "layer3", "layer4", "layer5"]),
    ("retinanet", "detnet59", 3, (8, 16, 16, 16), ["layer2", "layer3", "layer4", "layer5"]),
    ("fcos", "detnet59", 3, (8, 16, 16, 16), ["layer2", "layer3", "layer4", "layer5"]),
    ("retinanet", "resnet18", 2, (4, 8, 16, 32, 64, 128), ["layer1", "layer2", "layer3", "layer4"]),
    ("fasterrcnn", "resnet18", 3, (8, 16, 32, 64), ["layer2", "layer3", "layer4"]),
    ("fasterrcnn", "detnet59", 3, (8, 16, 16, 16), ["layer2", "layer3", "layer4", "layer5"]),
])
def test_fpn_min_level_starts_the_pyramid_at_p2_or_p3(kind, backbone, min_level, strides, bodies):
    model = small_detector(kind, backbone, fpn_min_level=min_level)
    first = 2 if min_level is None else min_level
    assert model.backbone.strides == strides
    assert model.backbone.levels == tuple(range(first, first + len(strides)))
    assert [info.module for info in model.backbone.body.feature_info] == bodies
    with torch.no_grad():
        maps = list(model.backbone(torch.rand(1, 3, 128, 128)).values())
    assert [m.shape[-1] for m in maps] == [-(-128 // s) for s in strides]  # ceil: stride-2 convs pad
    if kind == "fasterrcnn":  # the RoI pooler reads the backbone's own maps at their levels
        assert model.roi_heads.box_roi_pool.levels == model.backbone.levels[:len(bodies)]
    assert model.model_kwargs.get("fpn_min_level") == min_level  # recorded, so a checkpoint rebuilds it


def test_detnet_retinanet_from_p3_sees_about_a_resnets_share_of_positions():
    """At 128 px: DetNet P2-P6 32^2 + 16^2 + 3 * 8^2 = 1472 positions, P3-P6 448, ResNet's P3-P7 341."""
    def positions(model):
        with torch.no_grad():
            return sum(m.shape[-1] * m.shape[-2] for m in model.backbone(torch.rand(1, 3, 128, 128)).values())

    assert positions(small_detector("retinanet", "detnet59")) == 1472
    assert positions(small_detector("retinanet", "detnet59", fpn_min_level=3)) == 448
    assert positions(small_detector("retinanet", "resnet50")) == 341


@pytest.mark.parametrize("level", [1, 4, "3"])
def test_an_fpn_min_level_other_than_2_or_3_is_one_line(level):
    with pytest.raises(ValueError, match=r"fpn_min_level must be one of 2, 3 .*found"):
        small_detector("retinanet", "resnet18", fpn_min_level=level)


def _level_features(sizes, channels=8):
    torch.manual_seed(1)
    return OrderedDict((str(i), torch.randn(1, channels, h, h)) for i, h in enumerate(sizes))


def test_level_roi_align_pools_each_roi_from_its_fpn_level_over_equal_strides():
    image = 1024
    strides = (4, 8, 16, 16, 16)
    feats = _level_features([image // s for s in strides])
    sides = [80, 150, 300, 600, 1000]  # FPN Eqn. 1: k = floor(4 + log2(side / 224)) -> 2 (clamped), 3, 4, 5, 6
    boxes = torch.tensor([[10.0, 10.0, 10.0 + s, 10.0 + s] for s in sides])
    pooler = LevelRoIAlign(list(feats), strides, (2, 3, 4, 5, 6), 7, 2)
    pooled = pooler(feats, [boxes], [(image, image)])
    rois = torch.cat([torch.zeros(len(boxes), 1), boxes], 1)
    for i, stride in enumerate(strides):  # RoI i comes from map i: the level its size asks for
        reference = roi_align(feats[str(i)], rois[i:i + 1], 7, spatial_scale=1.0 / stride, sampling_ratio=2)
        assert torch.allclose(pooled[i:i + 1], reference), f"RoI {i}"
    # torchvision's pooler, inferring levels 2-4 from the strides, pools the 600 and 1000 px RoIs from stage 4's map
    plain = MultiScaleRoIAlign(list(feats), 7, 2)(feats, [boxes], [(image, image)])
    for i in (3, 4):
        assert torch.allclose(plain[i:i + 1], roi_align(feats["2"], rois[i:i + 1], 7, 1 / 16, 2))


def test_level_roi_align_is_torchvision_pooler_on_a_stride_doubling_pyramid():
    feats = _level_features([64, 32, 16, 8])
    boxes = [torch.tensor([[0.0, 0.0, 30.0, 40.0], [5.0, 5.0, 200.0, 150.0], [1.0, 2.0, 250.0, 255.0]])]
    ours = LevelRoIAlign(list(feats), (4, 8, 16, 32), (2, 3, 4, 5))(feats, boxes, [(256, 256)])
    assert torch.equal(ours, MultiScaleRoIAlign(list(feats), 7, 2)(feats, boxes, [(256, 256)]))


def _box_head_gradients(pooler_class) -> tuple[set[int], list[float]]:
    """One DetNet Faster R-CNN training step at 128 px with the RoI scale shrunk 8x (canonical 28 px, so
    RoIs of 56+ px go to P5 and 112+ px to P6); the levels pooled and the box-head losses' gradient on
    each FPN output conv (the RPN's proposals are detached: only RoI pooling carries it)."""
    torch.manual_seed(0)
    levels = dict(strides=(4, 8, 16, 16, 16), levels=(2, 3, 4, 5, 6)) if pooler_class is LevelRoIAlign else {}
    pooler = pooler_class(["0", "1", "2", "3", "4"], output_size=7, sampling_ratio=2, canonical_scale=28, **levels)
    model = small_detector("fasterrcnn", "detnet59", box_roi_pool=pooler).train()
    used = []
    pooler.forward = _recording(pooler, used)
    target = {"boxes": torch.tensor([[4.0, 4.0, 64.0, 64.0], [0.0, 0.0, 124.0, 120.0]]), "labels": torch.tensor([0, 1])}
    losses = model([torch.rand(3, 128, 128)], [target])
    (losses["loss_classifier"] + losses["loss_box_reg"]).backward()
    grads = [float(block[0].weight.grad.abs().sum()) if block[0].weight.grad is not None else 0.0
             for block in model.backbone.fpn.layer_blocks]
    return set(used[0].tolist()), grads, model


def _recording(pooler, used):
    forward = pooler.forward

    def record(x, boxes, image_shapes):
        result = forward(x, boxes, image_shapes)
        used.append(pooler.map_levels(boxes))
        return result
    return record


def test_detnet_faster_rcnn_pools_from_stages_5_and_6_and_they_get_gradients():
    used, grads, model = _box_head_gradients(LevelRoIAlign)
    assert {3, 4} <= used  # P5 (stage 5) and P6 (stage 6)
    assert grads[3] > 0 and grads[4] > 0
    body = model.backbone.body
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (body.layer4[2].conv3.weight,
                                                                        body.layer5[2].conv3.weight))
    # torchvision's own pooler on the same pyramid: levels inferred as 2-4, P5 and P6 never pooled
    used, grads, _ = _box_head_gradients(MultiScaleRoIAlign)
    assert used <= {0, 1, 2} and grads[3] == 0 and grads[4] == 0


# -- FCOS: one regression range per level --------------------------------------------------------------
def test_fcos_on_detnet_gives_each_equal_stride_level_its_own_size_range():
    model = small_detector("fcos", "detnet59")
    image = 1280
    strides = model.backbone.strides
    maps = [torch.zeros(1, 1, image // s, image // s) for s in strides]
    anchors = model.anchor_generator(ImageList(torch.zeros(1, 3, image, image), [(image, image)]), maps)
    per_level = [m.shape[2] * m.shape[3] for m in maps]
    # concentric boxes whose half-sides fall inside FCOS's ranges (0, 64, 128, 256, 512, inf), 4.5 x the
    # level's size so centre sampling keeps each box inside one range
    halves = [36, 72, 144, 288, 576]
    boxes = torch.tensor([[640.0 - h, 640.0 - h, 640.0 + h, 640.0 + h] for h in halves])
    captured = []
    model.head.compute_loss = lambda targets, outputs, anchors, matched: captured.extend(matched) or {}
    model.compute_loss([{"boxes": boxes, "labels": torch.zeros(5, dtype=torch.long)}], {}, anchors, per_level)
    level_of_point = torch.repeat_interleave(torch.arange(5), torch.tensor(per_level))
    matched = captured[0]
    for box in range(5):
        assert set(level_of_point[matched == box].tolist()) == {box}, f"box {box}"


# -- labels: 0-based, objects only ---------------------------------------------------------------------
def test_faster_rcnn_takes_and_returns_0_based_labels():
    torch.manual_seed(0)
    model = small_detector("fasterrcnn", num_classes=3, box_score_thresh=0.5)
    seen = []
    model.roi_heads.register_forward_pre_hook(lambda m, args: seen.append(args[3][0]["labels"].clone()) if args[3] else None)
    model.train()
    model([torch.rand(3, 96, 128)], [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 70.0], [5.0, 5.0, 90.0, 90.0]]),
                                       "labels": torch.tensor([0, 2])}])
    assert seen[0].tolist() == [1, 3]  # torchvision's slots: 0 is background
    model.eval()
    predictor = model.roi_heads.box_predictor
    assert predictor.cls_score.out_features == 4 and model.num_classes == 3
    with torch.no_grad():  # make slot 3 (object class 2) win every RoI
        predictor.cls_score.weight.zero_()
        predictor.cls_score.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 10.0]))
        (out,) = model([torch.rand(3, 96, 128)])
    assert out["labels"].numel() > 0 and set(out["labels"].tolist()) == {2}


@pytest.mark.parametrize("kind", ["retinanet", "fcos"])
def test_one_stage_detectors_have_no_background_slot(kind):
    model = small_detector(kind, num_classes=3)
    assert model.head.classification_head.num_classes == 3 and model.num_classes == 3


@pytest.mark.parametrize("kind", ["retinanet", "fcos"])
def test_detect_drops_boxes_without_area_before_the_cap(kind):
    from torchvision.ops import box_area

    torch.manual_seed(0)
    model = small_detector(kind).eval()
    image = torch.rand(3, 8, 128)  # a thin image: most anchors lie over the batch's padding
    with torch.no_grad():
        model.score_thresh, model.detections_per_img = 0.0, 10_000
        everything = model([image])[0]  # torchvision's own post-processing, clipped boxes and all
        model.detections_per_img = 100
        found = model.detect([image], detections_per_img=20)[0]
    with_area = (box_area(everything["boxes"]) > 0).nonzero().flatten()
    assert len(with_area) < len(everything["boxes"])  # the check can fail: torchvision keeps empty boxes
    assert len(with_area) >= 20
    for key in ("boxes", "scores", "labels"):
        torch.testing.assert_close(found[key], everything[key][with_area[:20]])


# -- torchvision interop ---------------------------------------------------------------------------------
INTEROP = {  # torchvision's builder, its class, the extra pyramid level, test options, label offset
    "fasterrcnn": (tvd.fasterrcnn_resnet50_fpn, tvd.FasterRCNN, None,
                   dict(box_score_thresh=0.0, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50), 1),
    "retinanet": (tvd.retinanet_resnet50_fpn, tvd.RetinaNet, "p6p7", dict(score_thresh=0.0, topk_candidates=100), 0),
    "fcos": (tvd.fcos_resnet50_fpn, tvd.FCOS, "p6p7", dict(score_thresh=0.0, topk_candidates=100), 0),
}


def _frozen_reference(kind: str, state: dict, **kwargs) -> nn.Module:
    """torchvision's detector as its builder makes it from trained weights: FrozenBatchNorm2d in the ResNet."""
    _, cls, extra, _, _ = INTEROP[kind]
    layers = dict(returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256)) if extra else {}
    model = cls(resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=3, **layers), 5, **kwargs)
    model.load_state_dict(state)
    return model.eval()


def _same_detections(found, expected, offset) -> None:
    for e, f in zip(expected, found):
        assert e["boxes"].shape[0] > 0 and e["boxes"].shape == f["boxes"].shape
        assert torch.allclose(f["boxes"], e["boxes"], atol=1e-4) and torch.allclose(f["scores"], e["scores"])
        assert torch.equal(f["labels"], e["labels"] - offset)


@pytest.mark.parametrize("kind", ["fasterrcnn", "retinanet", "fcos"])
def test_torchvision_state_dict_gives_torchvision_detections(kind, tmp_path):
    builder, _, _, options, offset = INTEROP[kind]
    torch.manual_seed(0)
    reference = with_random_bn_statistics(builder(weights=None, weights_backbone=None, num_classes=5, **SMALL, **options))
    path = tmp_path / f"{kind}.pth"
    torch.save(reference.state_dict(), path)
    model = bk.create_model(kind, backbone="resnet50", pretrained=path, **SMALL, **options).eval()
    assert model.num_classes == 5 - offset  # follows the file; Faster R-CNN's background slot is not a class
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.backbone.body.modules())
    frozen = _frozen_reference(kind, reference.state_dict(), **SMALL, **options)
    plain = bk.create_model(kind, backbone="resnet50", pretrained=path, frozen_bn=False, **SMALL, **options).eval()
    images = [torch.rand(3, 100, 128), torch.rand(3, 128, 90)]
    with torch.no_grad():
        _same_detections(model(images), frozen(images), offset)
        _same_detections(plain(images), reference(images), offset)  # torchvision's builder: plain BatchNorm
    if kind == "fasterrcnn":  # torchvision's COCO_V1 Faster R-CNN and RetinaNet files go with eps 0 (overwrite_eps)
        overwrite_eps(frozen, 0.0)
        model = bk.create_model(kind, backbone="resnet50", pretrained=path, bn_eps=0.0, **SMALL, **options).eval()
        with torch.no_grad():
            _same_detections(model(images), frozen(images), offset)


def test_num_classes_other_than_the_file_keeps_all_but_the_class_layers(tmp_path):
    torch.manual_seed(0)
    reference = tvd.fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=5, **SMALL)
    path = tmp_path / "fcos.pth"
    torch.save(reference.state_dict(), path)
    with pytest.warns(UserWarning, match="5-class fcos, found num_classes=2: loaded all but"):
        model = bk.create_model("fcos", pretrained=path, num_classes=2, **SMALL)
    ours, theirs = model.state_dict(), reference.state_dict()
    assert torch.equal(ours["head.regression_head.bbox_reg.weight"], theirs["head.regression_head.bbox_reg.weight"])
    assert ours["head.classification_head.cls_logits.weight"].shape[0] == 2


def test_published_parameter_counts_of_torchvision_detectors():
    with torch.device("meta"):
        counts = {kind: sum(p.numel() for p in bk.create_model(kind, backbone="resnet50", num_classes=n,
                                                               frozen_bn=True).parameters())
                  for kind, n in (("fasterrcnn", 90), ("retinanet", 91), ("fcos", 91))}
    assert counts == {name: bk.model_info(name).params for name in counts}
    assert bk.model_info("fasterrcnn").params == 41_755_286  # torchvision's FasterRCNN_ResNet50_FPN_Weights meta


# -- FrozenBatchNorm2d and trainable_layers as torchvision -------------------------------------------------
@pytest.mark.parametrize("trainable", [0, 3, 5])
def test_trainable_layers_freeze_what_torchvision_freezes(trainable):
    reference = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=trainable)
    model = small_detector("fasterrcnn", frozen_bn=True, trainable_layers=trainable)
    ours = {n for n, p in model.backbone.body.named_parameters() if p.requires_grad}
    assert ours == {n for n, p in reference.body.named_parameters() if p.requires_grad}
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.backbone.modules())


def test_from_scratch_keeps_batchnorm_and_trains_everything():
    model = small_detector("retinanet")
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.backbone.body.modules())
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


def test_backbone_file_loads_the_body_and_freezes_its_batchnorm(tmp_path):
    torch.manual_seed(0)
    resnet = with_random_bn_statistics(bk.create_model("resnet18"))
    path = tmp_path / "resnet18.pth"
    torch.save(resnet.state_dict(), path)
    with pytest.warns(UserWarning, match="holds a backbone only"):
        model = small_detector("fcos", pretrained=path)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = resnet.eval().forward_levels(x)[2:]
        found = model.backbone.body(x)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(expected, found))
    assert not model.backbone.body.conv1.weight.requires_grad and model.backbone.body.layer2[0].conv1.weight.requires_grad


# -- profiling ---------------------------------------------------------------------------------------------
def test_profile_splits_faster_rcnn_into_backbone_neck_and_heads():
    from backbonekit.profiler import profile_model

    result = profile_model(small_detector("fasterrcnn", min_size=64, max_size=64), 64)
    top = {layer.name: layer.macs for layer in result.layers if layer.depth == 1}
    parts = {layer.name for layer in result.layers if layer.depth == 2}
    assert {"backbone", "rpn", "roi_heads"} <= set(top) and {"backbone.body", "backbone.fpn"} <= parts
    assert sum(top.values()) == result.macs > 0


# -- bad input: one line each --------------------------------------------------------------------------------
def _one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


def test_unknown_backbone_and_detector_as_backbone():
    with pytest.raises(KeyError, match="unknown model 'resnet5'.*did you mean") as e:
        bk.create_model("fasterrcnn", backbone="resnet5")
    _one_line(e)
    with pytest.raises(ValueError, match="found the detector 'yolov3'"):
        bk.create_model("fcos", backbone="yolov3")


def test_wrong_labels_and_images_are_one_line_errors():
    model = small_detector("fasterrcnn", num_classes=3).train()
    box = torch.tensor([[10.0, 10.0, 50.0, 50.0]])
    with pytest.raises(ValueError, match=r"expected 0-based labels in \[0, 2\] .*found 3") as e:
        model([torch.rand(3, 64, 64)], [{"boxes": box, "labels": torch.tensor([3])}])
    _one_line(e)
    with pytest.raises(ValueError, match=r"image 0: expected a 3-channel \(3, H, W\) tensor, found shape \(1, 64, 64\)"):
        model.eval()([torch.rand(1, 64, 64)])
    with pytest.raises(ValueError, match="x2 > x1"):
        model.train()([torch.rand(3, 64, 64)], [{"boxes": box.flip(1), "labels": torch.tensor([0])}])


def test_a_file_of_another_detector_is_refused_in_one_line(tmp_path):
    reference = tvd.fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3)
    path = tmp_path / "fcos.pth"
    torch.save(reference.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"for fasterrcnn: expected a state_dict of fasterrcnn \(roi_heads.*found a state_dict of fcos") as e:
        bk.create_model("fasterrcnn", pretrained=path)
    _one_line(e)
    with pytest.raises(CheckpointError, match="for retinanet: .*found a state_dict of fcos"):
        bk.create_model("retinanet", pretrained=path)

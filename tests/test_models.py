"""Every registered model through the same checks, against torchvision, timm and published figures."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import backbonekit as bk
from backbonekit.checkpoint import CheckpointError
from backbonekit.detection import fpn_backbone
from backbonekit.weights import timm_darknet_to_backbonekit
from helpers import assert_same_network_output, randomized

MODELS = bk.list_models()
RESNETS = bk.list_models("resnet*")
SMALL = 64  # input side for shape/gradient checks: divisible by every model's stride


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_every_family():
    assert set(MODELS) == {"darknet53", "detnet59", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"}
    assert bk.list_models("resnet1*") == ["resnet101", "resnet152", "resnet18"]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("batch, train", [(1, False), (2, False), (2, True)])  # BN cannot train on 1 value
def test_classification_shape(name, batch, train):
    model = bk.create_model(name, num_classes=7).train(train)
    out = model(torch.randn(batch, 3, SMALL, SMALL))
    assert out.shape == (batch, 7)  # seed 001's torch.squeeze gave shape (7,) for batch 1


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("batch", [1, 2])
def test_features_shapes_follow_feature_info(name, batch):
    model = bk.create_model(name, features_only=True).eval()
    outs = model(torch.randn(batch, 3, SMALL, SMALL))
    assert isinstance(outs, list) and len(outs) == 3 == len(model.feature_info)
    for out, info in zip(outs, model.feature_info):
        assert out.shape == (batch, info.channels, SMALL // info.stride, SMALL // info.stride)
    assert model.out_channels == [i.channels for i in model.feature_info]


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_gets_a_gradient(name):
    model = bk.create_model(name, num_classes=3).train()
    model(torch.randn(2, 3, SMALL, SMALL)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("name", MODELS)
def test_features_model_keeps_only_used_parameters(name):
    model = bk.create_model(name, features_only=True, out_indices=(1, 2))
    outs = model(torch.randn(2, 3, SMALL, SMALL))
    sum(o.sum() for o in outs).backward()
    assert all(p.grad is not None for p in model.parameters())  # DDP's find_unused_parameters not needed


@pytest.mark.parametrize("name", MODELS)
def test_torch_export_matches_eager(name):
    model = bk.create_model(name).eval()
    x = torch.randn(2, 3, SMALL, SMALL)
    exported = torch.export.export(model, (x,))
    assert_same_network_output(exported.module()(x), model(x), model)


@pytest.mark.parametrize("name", MODELS)
def test_param_count_equals_published(name):
    assert n_params(bk.create_model(name)) == bk.model_info(name).params


def test_darknet53_published_figures():
    # seed 002 (thop, torchsummaryX): 40,584,928 backbone params; timm: 41.61M with the 1000-class fc
    assert n_params(bk.create_model("darknet53", num_classes=0)) == 40_584_928
    assert n_params(bk.create_model("darknet53", features_only=True, out_indices=(5,))) == 40_584_928
    assert n_params(bk.create_model("darknet53")) == 41_609_928


def test_darknet53_structure_matches_yolov3():
    model = bk.create_model("darknet53")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 52 and all(c.bias is None for c in convs)  # 52 convs + the fc = Darknet-53
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())  # seed 000 claims two max-pools
    slopes = {m.negative_slope for m in model.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.1}
    assert [len(s.blocks) for s in model.stages] == [1, 2, 8, 8, 4]


def test_detnet59_structure():
    model = bk.create_model("detnet59")
    for name in ("layer4", "layer5"):  # the paper's stages 5 and 6
        blocks = list(getattr(model, name))
        assert len(blocks) == 3
        assert blocks[0].downsample is not None and blocks[1].downsample is None and blocks[2].downsample is None
        for b in blocks:
            assert b.conv2.dilation == (2, 2) and b.conv2.stride == (1, 1)
            assert (b.conv1.out_channels, b.conv2.out_channels, b.conv3.out_channels) == (256, 256, 1024)
    # stages 1-4 are exactly ResNet-50's: a torchvision resnet50's weights for them load unchanged
    tv = torchvision.models.resnet50().state_dict()
    own = model.state_dict()
    shared = [k for k in own if k.split(".")[0] in ("conv1", "bn1", "layer1", "layer2", "layer3")]
    assert shared and all(own[k].shape == tv[k].shape for k in shared)
    assert model.feature_info[-1].stride == 16


def test_detnet59_has_residual_connections():
    # seed 003's DetBottleneck has no skip: with every conv weight zeroed, a residual block passes its input through
    block = bk.create_model("detnet59").layer5[1].eval()
    for p in block.conv3.parameters():
        nn.init.zeros_(p)
    x = torch.rand(1, 1024, 4, 4)
    torch.testing.assert_close(block(x), torch.relu(x))


@pytest.mark.parametrize("name", RESNETS)
def test_torchvision_state_dict_gives_same_logits(name, tmp_path):
    reference = randomized(getattr(torchvision.models, name)())
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    model = bk.create_model(name, pretrained=path).eval()
    assert n_params(model) == n_params(reference)
    x = torch.randn(2, 3, SMALL, SMALL)
    with torch.no_grad():
        assert_same_network_output(model(x), reference(x), reference)


def test_timm_darknet53_state_dict_gives_same_logits(tmp_path):
    timm = pytest.importorskip("timm")
    reference = randomized(timm.create_model("darknet53"))  # timm zero-inits the last BN of each block
    path = tmp_path / "timm_darknet53.pth"
    torch.save(reference.state_dict(), path)
    model = bk.create_model("darknet53", pretrained=path).eval()
    assert model.act_slope == 0.01  # timm trains with nn.LeakyReLU() defaults
    x = torch.randn(2, 3, SMALL, SMALL)
    with torch.no_grad():
        assert_same_network_output(model(x), reference(x), reference)


def test_timm_darknet53_features_match(tmp_path):
    timm = pytest.importorskip("timm")
    reference = randomized(timm.create_model("darknet53"))
    path = tmp_path / "timm_darknet53.pth"
    torch.save(reference.state_dict(), path)
    model = bk.create_model("darknet53", pretrained=path, features_only=True).eval()
    timm_info = reference.feature_info[3:]  # timm: stem + 5 stages; detectors take the last three
    assert [i.channels for i in model.feature_info] == [i["num_chs"] for i in timm_info]
    assert [i.stride for i in model.feature_info] == [i["reduction"] for i in timm_info]
    x = torch.randn(1, 3, SMALL, SMALL)
    with torch.no_grad():
        theirs, y = [], reference.stem(x)
        for stage in reference.stages:
            y = stage(y)
            theirs.append(y)
        for ours, ref in zip(model(x), theirs[2:]):
            assert_same_network_output(ours, ref, reference)


def test_own_state_dict_round_trip_keeps_darknet_slope(tmp_path):
    model = bk.create_model("darknet53", num_classes=5).eval()
    path = tmp_path / "own.pth"
    torch.save(model.state_dict(), path)
    loaded = bk.create_model("darknet53", num_classes=5, pretrained=path).eval()
    assert loaded.act_slope == 0.1
    x = torch.randn(1, 3, SMALL, SMALL)
    torch.testing.assert_close(loaded(x), model(x))


def test_pretrained_with_other_num_classes_keeps_backbone(tmp_path):
    reference = torchvision.models.resnet18().eval()
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)
    with pytest.warns(UserWarning, match="classifier left initialised"):
        model = bk.create_model("resnet18", num_classes=10, pretrained=path).eval()
    torch.testing.assert_close(model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert model.fc.out_features == 10


def test_pretrained_for_another_architecture_is_refused(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(CheckpointError, match="missing keys") as info:
        bk.create_model("resnet50", pretrained=path)
    assert "\n" not in str(info.value)


def test_corrupt_checkpoint_is_one_clear_line(tmp_path):
    path = tmp_path / "broken.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cannot read checkpoint") as info:
        bk.create_model("resnet18", pretrained=path)
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="not found"):
        bk.create_model("resnet18", pretrained=tmp_path / "absent.pth")


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("output_stride", [8, 16])
def test_output_stride_replaces_strides_by_dilation(name, output_stride):
    model = bk.create_model(name, features_only=True, output_stride=output_stride).eval()
    assert model.feature_info[-1].stride == output_stride
    outs = model(torch.randn(1, 3, SMALL, SMALL))
    for out, info in zip(outs, model.feature_info):
        assert out.shape[-1] == SMALL // info.stride


# Every comparison below randomises every weight and norm statistic first: timm zero-initialises the last
# BatchNorm of each residual branch, so on its fresh weights a model without the dilation gives the same output.
@pytest.mark.parametrize("name", ["resnet50", "resnet101", "resnet152"])  # torchvision's BasicBlock cannot dilate
@pytest.mark.parametrize("output_stride, dilate", [(16, [False, False, True]), (8, [False, True, True])])
def test_dilated_resnet_matches_torchvision(name, output_stride, dilate):
    reference = randomized(getattr(torchvision.models, name)(replace_stride_with_dilation=dilate))
    model = bk.create_model(name, output_stride=output_stride).eval()
    model.load_state_dict(reference.state_dict())
    x = torch.randn(1, 3, SMALL, SMALL)
    with torch.no_grad():
        assert_same_network_output(model(x), reference(x), reference)


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_dilated_basic_block_resnet_matches_timm(name, output_stride):
    timm = pytest.importorskip("timm")
    reference = randomized(timm.create_model(name, output_stride=output_stride))
    model = bk.create_model(name, output_stride=output_stride).eval()
    model.load_state_dict(reference.state_dict())
    x = torch.randn(1, 3, SMALL, SMALL)
    with torch.no_grad():
        assert_same_network_output(model(x), reference(x), reference)


def test_first_basic_block_of_a_dilated_stage_dilates_its_second_conv():
    # timm's BasicBlock: conv1 takes first_dilation (the previous stage's), conv2 the stage's new dilation
    model = bk.create_model("resnet18", output_stride=8)
    dilations = [(b.conv1.dilation[0], b.conv2.dilation[0]) for layer in (model.layer3, model.layer4) for b in layer]
    assert dilations == [(1, 2), (2, 2), (2, 4), (4, 4)]


@pytest.mark.parametrize("output_stride", [8, 16])
def test_dilated_darknet_matches_timm(output_stride):
    timm = pytest.importorskip("timm")
    reference = randomized(timm.create_model("darknet53", output_stride=output_stride))
    model = bk.create_model("darknet53", output_stride=output_stride, act_slope=0.01).eval()
    model.load_state_dict(timm_darknet_to_backbonekit(reference.state_dict()))
    x = torch.randn(1, 3, SMALL, SMALL)
    with torch.no_grad():
        assert_same_network_output(model(x), reference(x), reference)


@pytest.mark.parametrize("name", MODELS)
def test_frozen_stages_and_norm_eval(name):
    model = bk.create_model(name, frozen_stages=1, norm_eval=True).train()
    frozen = model.stem_modules() + model.stage_modules()[:1]
    frozen_params = {id(p) for m in frozen for p in m.parameters()}
    for p in model.parameters():
        assert p.requires_grad == (id(p) not in frozen_params)
    assert all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    stats = {k: v.clone() for k, v in model.stage_modules()[-1].state_dict().items()}
    model(torch.randn(2, 3, SMALL, SMALL))
    after = model.stage_modules()[-1].state_dict()  # running stats stay put under norm_eval
    assert all(torch.equal(stats[k], after[k]) for k in stats if "running" in k)


def test_frozen_stages_without_norm_eval_keeps_other_bns_training():
    model = bk.create_model("resnet18", frozen_stages=2).train()
    assert not model.bn1.training and not model.layer2[0].bn1.training
    assert model.layer3[0].bn1.training and model.training


def test_fpn_feeds_torchvision_ops():
    body = bk.create_model("darknet53", features_only=True).eval()
    fpn = torchvision.ops.FeaturePyramidNetwork(body.out_channels, 64)
    feats = body(torch.randn(1, 3, 128, 128))
    out = fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))
    assert [v.shape for v in out.values()] == [(1, 64, 16, 16), (1, 64, 8, 8), (1, 64, 4, 4)]


@pytest.mark.parametrize("name", ["darknet53", "detnet59"])
def test_faster_rcnn_with_backbonekit_backbone(name):
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    backbone = fpn_backbone(name, out_channels=64)  # three levels + the FPN's max-pool level
    anchors = AnchorGenerator(sizes=((32,), (64,), (128,), (256,)), aspect_ratios=((0.5, 1.0, 2.0),) * 4)
    roi_pool = MultiScaleRoIAlign(featmap_names=["0", "1", "2"], output_size=7, sampling_ratio=2)
    detector = FasterRCNN(backbone, num_classes=5, min_size=128, max_size=128,
                          rpn_anchor_generator=anchors, box_roi_pool=roi_pool).eval()
    with torch.no_grad():
        (result,) = detector([torch.rand(3, 128, 160)])
    assert set(result) == {"boxes", "labels", "scores"} and result["boxes"].shape[1] == 4


# -- bad input: one clear line, raised before any convolution runs ---------------------

def _first_conv_guard(model: nn.Module) -> list[bool]:
    ran = []
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    first.register_forward_pre_hook(lambda *_: ran.append(True))
    return ran


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape, message", [
    ((1, 1, 64, 64), "expected 3 input channels, found 1"),
    ((3, 64, 64), "expected a 4-D input"),
    ((1, 3, 8, 64), "smaller than the network's total stride"),
])
def test_bad_input_is_rejected_before_any_conv(name, shape, message):
    model = bk.create_model(name)
    ran = _first_conv_guard(model)
    with pytest.raises(ValueError, match=message) as info:
        model(torch.randn(*shape))
    assert not ran and "\n" not in str(info.value)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_non_float_input_is_rejected_before_any_conv(name, dtype):
    model = bk.create_model(name)
    ran = _first_conv_guard(model)
    with pytest.raises(ValueError, match=f"expected a floating-point input .*found {dtype}") as info:
        model(torch.randint(0, 255, (1, 3, SMALL, SMALL), dtype=dtype))
    assert not ran and "\n" not in str(info.value)


@pytest.mark.parametrize("call, message", [
    (lambda: bk.create_model(None), "expected a model name string .*found NoneType None"),
    (lambda: bk.model_info(3), "expected a model name string .*found int 3"),
    (lambda: bk.create_model("detnet59", pretrained=True), "detnet59 has no published weights"),
    (lambda: bk.create_model("resnet18", pretrained=1), "expects True, a published tag .*or the path of a weights file, "
                                                         "found int"),
])
def test_wrong_argument_types_are_one_line(call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert "\n" not in str(info.value)


def test_pretrained_false_builds_without_weights():
    assert bk.create_model("resnet18", pretrained=False, num_classes=2).fc.out_features == 2


@pytest.mark.parametrize("name", ["resnet18", "darknet53"])
def test_reset_classifier(name):
    model = bk.create_model(name)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 0 .*found -1"):
        model.reset_classifier(-1)
    model.reset_classifier(4)
    assert model(torch.randn(1, 3, SMALL, SMALL)).shape == (1, 4)
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, SMALL, SMALL)).shape == (1, model.num_features)


@pytest.mark.parametrize("name", MODELS)
def test_out_indices_keep_the_order_given(name):
    x = torch.randn(1, 3, SMALL, SMALL)
    forward = bk.create_model(name, features_only=True, out_indices=(1, 3)).eval()
    backward = bk.create_model(name, features_only=True, out_indices=(3, 1)).eval()
    backward.load_state_dict(forward.state_dict())
    with torch.no_grad():
        ordered, reordered = forward(x), backward(x)
    assert backward.out_indices == (3, 1) and backward.feature_info == forward.feature_info[::-1]
    assert [o.shape[1] for o in reordered] == backward.out_channels == forward.out_channels[::-1]
    for a, b in zip(reordered, ordered[::-1]):
        torch.testing.assert_close(a, b)


def test_out_indices_order_matches_timm_feature_info():
    timm = pytest.importorskip("timm")
    reference = timm.create_model("resnet18", features_only=True, out_indices=(3, 1))
    model = bk.create_model("resnet18", features_only=True, out_indices=(3, 1))
    assert model.out_channels == reference.feature_info.channels()
    assert [i.stride for i in model.feature_info] == reference.feature_info.reduction()


def test_in_chans_changes_the_stem():
    model = bk.create_model("darknet53", in_chans=1, num_classes=2).eval()
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 2)


def test_unknown_model_suggests_close_matches():
    with pytest.raises(KeyError, match="did you mean darknet53"):
        bk.create_model("darknet35")


@pytest.mark.parametrize("kwargs, message", [
    (dict(features_only=True, out_indices=(3, 6)), r"out_indices must be distinct integers in \[0, 5\]"),
    (dict(output_stride=4), "output_stride must be 8, 16 or 32, found 4"),
    (dict(out_indices=(1,)), "out_indices only applies with features_only=True"),
    (dict(frozen_stages=9), r"frozen_stages must be in \[-1, 5\]"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bk.create_model("darknet53", **kwargs)


def test_detnet_output_stride_32_is_refused():
    with pytest.raises(ValueError, match="detnet59 has output stride 16 by design"):
        bk.create_model("detnet59", output_stride=32)


@pytest.mark.parametrize("name", MODELS)
def test_macs_equal_published(name):
    # torch's own FlopCounterMode (2 FLOPs per multiply-add) against torchvision's _ops / seed 002 / the paper table
    info = bk.model_info(name)
    model = bk.create_model(name).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, info.input_size, info.input_size))
    assert counter.get_total_flops() / 2 / 1e9 == pytest.approx(info.gmacs, abs=5e-4)


def test_darknet53_backbone_macs_at_416_equal_seed_002():
    model = bk.create_model("darknet53", num_classes=0).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, 416, 416))
    assert counter.get_total_flops() // 2 == 24_515_805_184


@pytest.mark.parametrize("name", ["resnet18", "darknet53"])
def test_pretrained_into_a_model_without_classifier(name, tmp_path):
    full = bk.create_model(name).eval()
    path = tmp_path / "full.pth"
    torch.save(full.state_dict(), path)
    headless = bk.create_model(name, num_classes=0, pretrained=path).eval()
    x = torch.randn(1, 3, SMALL, SMALL)
    torch.testing.assert_close(headless(x), full.forward_head(full.forward_features(x), pre_logits=True))


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_classes=-1), "num_classes must be an integer >= 0, found -1"),
    (dict(num_classes=2.5), "num_classes must be an integer >= 0, found 2.5"),
    (dict(in_chans=0), "in_chans must be an integer >= 1, found 0"),
    (dict(features_only=True, out_indices=[1.7, 2.2, 3]), "out_indices must be a sequence of integers"),
    (dict(features_only=True, out_indices=3), "out_indices must be a sequence of integers, found 3"),
])
def test_bad_numbers_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bk.create_model("resnet18", **kwargs)


def test_as_features_twice_is_refused():
    model = bk.create_model("resnet18", features_only=True)
    with pytest.raises(ValueError, match="already features_only"):
        model.as_features((1, 2))
    assert model(torch.randn(1, 3, SMALL, SMALL))[-1].shape[1] == 512  # still intact


# -- norm_layer / act_layer -----------------------------------------------------------------------
def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize("name", MODELS)
def test_frozen_batchnorm_model_matches_batchnorm_model(name):
    from torchvision.ops import FrozenBatchNorm2d

    reference = randomized(bk.create_model(name, num_classes=5))
    frozen = bk.create_model(name, num_classes=5, norm_layer="frozen_batchnorm")
    assert _count(frozen, nn.BatchNorm2d) == 0
    assert _count(frozen, FrozenBatchNorm2d) == _count(reference, nn.BatchNorm2d)
    own = reference.state_dict()
    assert set(frozen.state_dict()) == {k for k in own if not k.endswith("num_batches_tracked")}  # same names
    frozen.load_state_dict(own)  # FrozenBatchNorm2d drops the counters itself
    x = torch.randn(2, 3, SMALL, SMALL)
    with torch.no_grad():
        expected = reference(x)
        assert_same_network_output(frozen.eval()(x), expected, reference)
        assert_same_network_output(frozen.train()(x), expected, reference)  # frozen: train mode changes nothing


def test_batchnorm_and_frozen_batchnorm_files_load_into_each_other(tmp_path):
    reference = randomized(torchvision.models.resnet18())
    path = tmp_path / "tv.pth"
    torch.save(reference.state_dict(), path)
    frozen = bk.create_model("resnet18", pretrained=path, norm_layer="frozen_batchnorm").eval()
    frozen_path = tmp_path / "frozen.pth"
    torch.save(frozen.state_dict(), frozen_path)  # no num_batches_tracked counters
    back = bk.create_model("resnet18", pretrained=frozen_path).eval()
    x = torch.randn(1, 3, SMALL, SMALL)
    with torch.no_grad():
        assert_same_network_output(frozen(x), reference(x), reference)
        assert_same_network_output(back(x), reference(x), reference)


@pytest.mark.parametrize("name", MODELS)
def test_groupnorm_model_trains_a_step(name):
    model = bk.create_model(name, num_classes=3, norm_layer="groupnorm").train()
    assert _count(model, nn.BatchNorm2d) == 0 and _count(model, nn.GroupNorm) > 0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = nn.functional.cross_entropy(model(torch.randn(2, 3, SMALL, SMALL)), torch.tensor([0, 2]))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    optimizer.step()
    assert all(not torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", ["darknet53", "resnet18", "detnet59"])  # one per builder
@pytest.mark.parametrize("norm_layer", ["frozen_batchnorm", "groupnorm"])
def test_frozen_stages_and_norm_eval_with_other_norms(name, norm_layer):
    model = bk.create_model(name, num_classes=3, frozen_stages=2, norm_eval=True, norm_layer=norm_layer).train()
    frozen = {id(p) for m in model.stem_modules() + model.stage_modules()[:2] for p in m.parameters()}
    assert all(p.requires_grad == (id(p) not in frozen) for p in model.parameters())
    assert all(not m.training for m in model.stem_modules() + model.stage_modules()[:2])
    assert model.stage_modules()[2].training
    model(torch.randn(2, 3, SMALL, SMALL)).sum().backward()
    assert all((p.grad is None) == (id(p) in frozen) for p in model.parameters())


def test_act_layer_replaces_every_activation():
    relu = randomized(bk.create_model("resnet18", num_classes=4))
    silu = bk.create_model("resnet18", num_classes=4, act_layer="silu").eval()
    assert _count(silu, nn.ReLU) == 0 and _count(silu, nn.SiLU) == _count(relu, nn.ReLU)
    silu.load_state_dict(relu.state_dict())
    swapped = copy.deepcopy(relu)  # the same network with SiLU put in place of each ReLU by hand
    for parent in list(swapped.modules()):
        for child_name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                setattr(parent, child_name, nn.SiLU())
    x = torch.randn(1, 3, SMALL, SMALL)
    with torch.no_grad():
        assert not torch.allclose(silu(x), relu(x))
        torch.testing.assert_close(silu(x), swapped(x))
    darknet = bk.create_model("darknet53", act_layer=nn.Hardswish)
    assert _count(darknet, nn.LeakyReLU) == 0 and _count(darknet, nn.Hardswish) == 52


@pytest.mark.parametrize("kwargs, message", [
    (dict(norm_layer="layernorm"), "norm_layer must be one of batchnorm, frozen_batchnorm, groupnorm or a callable"),
    (dict(norm_layer=3), "norm_layer must be a name .* found int"),
    (dict(norm_layer=lambda channels: "bn"), "norm_layer must return a torch.nn.Module, found str"),
    (dict(act_layer="swish"), "act_layer must be one of relu, .* found 'swish'"),
])
def test_bad_norm_and_act_layers_are_one_line(kwargs, message):
    for name in ("resnet18", "darknet53"):
        with pytest.raises(ValueError, match=message) as info:
            bk.create_model(name, **kwargs)
        assert "\n" not in str(info.value)


def test_callable_norm_layer():
    model = bk.create_model("detnet59", num_classes=2, norm_layer=lambda c: nn.GroupNorm(1, c))
    assert all(m.num_groups == 1 for m in model.modules() if isinstance(m, nn.GroupNorm))
    assert model(torch.randn(1, 3, SMALL, SMALL)).shape == (1, 2)

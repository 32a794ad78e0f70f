"""The speed helpers change no results: folded == eval-mode model, compiled == eager, dead-tap convs == full convs."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import backbonekit as bk
from backbonekit.optimize import (
    PaddingAwareConv2d,
    count_batchnorms,
    fast_adam,
    fuse_batchnorm,
    optimize_for_inference,
    skip_padding_taps,
)
from helpers import with_random_bn_statistics

MODELS = bk.list_models()
SMALL = 64


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("name", MODELS)
def test_optimized_model_matches_eval_model(name):
    reference = with_random_bn_statistics(bk.create_model(name, num_classes=11))
    x = torch.randn(2, 3, SMALL, SMALL)
    with torch.no_grad():
        expected = reference(x)
        for channels_last in (False, True):
            fast = optimize_for_inference(copy.deepcopy(reference), channels_last=channels_last)
            assert count_batchnorms(fast) == 0 and type(fast) is type(reference) and not fast.training
            assert_same(fast(x), expected)
    assert count_batchnorms(reference) > 0


@pytest.mark.parametrize("name", MODELS)
def test_folded_features_only_model_keeps_its_levels(name):
    reference = with_random_bn_statistics(bk.create_model(name, features_only=True, out_indices=(1, 2, 3)))
    x = torch.randn(1, 3, SMALL, SMALL)
    with torch.no_grad():
        expected = reference(x)
        fast = optimize_for_inference(copy.deepcopy(reference))
        actual = fast(x)
    assert fast.features_only and fast.feature_info == reference.feature_info
    assert count_batchnorms(fast) == 0
    assert [a.shape for a in actual] == [e.shape for e in expected]
    for a, e in zip(actual, expected):
        assert_same(a, e)


def test_create_model_fuse_gives_the_folded_eval_model(tmp_path):
    reference = with_random_bn_statistics(bk.create_model("resnet18", num_classes=5))
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)
    fused = bk.create_model("resnet18", num_classes=5, pretrained=path, fuse=True)
    x = torch.randn(2, 3, SMALL, SMALL)
    with torch.no_grad():
        assert_same(fused(x), reference(x))
    assert count_batchnorms(fused) == 0 and not fused.training


@pytest.mark.parametrize("inplace", [False, True])
def test_fusing_leaves_a_bn_that_follows_no_conv(inplace):
    # an in-place ReLU hands the BatchNorm the conv's own tensor object, modified: not foldable
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=inplace), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1),
                          nn.BatchNorm2d(4))
    with_random_bn_statistics(model)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
        fuse_batchnorm(model, example=x)
        actual = model(x)
    assert isinstance(model[2], nn.BatchNorm2d) and isinstance(model[4], nn.Identity)
    assert_same(actual, expected)


@pytest.mark.slow
def test_compiled_model_matches_eager():
    reference = with_random_bn_statistics(bk.create_model("resnet18", num_classes=10))
    x = torch.randn(2, 3, SMALL, SMALL)
    with torch.no_grad():
        expected = reference(x)
        compiled = optimize_for_inference(copy.deepcopy(reference), compile=True)
        actual = compiled(x)
    assert_same(actual, expected)


# -- training helpers ---------------------------------------------------------------------------
CONV_CASES = [  # (input side, kernel, stride, padding, dilation)
    (1, 3, 1, 1, 1),  # Darknet-53 at 32x32, last stage: only the centre tap is live
    (2, 3, 2, 1, 1),  # its stride-2 downsampling conv from 2x2 to 1x1: taps 1..2 of each axis
    (2, 3, 1, 1, 1),  # the stage before, at 2x2: every tap live, the plain conv
    (1, 3, 1, 2, 2),  # dilated
    (3, 5, 1, 2, 1),  # 5x5 on 3x3: taps 0 and 4 see only padding
    (4, 5, 1, 1, 1),
    (1, 1, 1, 0, 1),  # a 1x1 conv on a 1x1 map
    (5, 5, 1, 2, 2),  # dilated, 1x1 output: taps 1..3 of each axis live: crop
    (5, 3, 2, 1, 1),
]


@pytest.mark.parametrize("side,kernel,stride,padding,dilation", CONV_CASES)
def test_padding_aware_conv_matches_full_conv(side, kernel, stride, padding, dilation):
    conv = nn.Conv2d(6, 5, kernel, stride, padding, dilation=dilation, bias=True)
    fast = skip_padding_taps(nn.Sequential(copy.deepcopy(conv)))[0]
    assert isinstance(fast, PaddingAwareConv2d)
    x = torch.randn(3, 6, side, side, requires_grad=True)
    x_fast = x.detach().clone().requires_grad_(True)
    expected = F.conv2d(x, conv.weight, conv.bias, stride, padding, dilation)
    actual = fast(x_fast)
    assert_same(actual, expected)
    grad = torch.randn_like(expected)
    expected.backward(grad)
    actual.backward(grad)
    assert_same(fast.weight.grad, conv.weight.grad)
    assert_same(x_fast.grad, x.grad)


def test_skip_padding_taps_keeps_darknet_training_step_and_state_dict():
    # float64: train-mode BatchNorm over 4 values per channel at 1x1 amplifies float32 rounding
    reference = bk.create_model("darknet53", num_classes=10).double().train()
    fast = skip_padding_taps(copy.deepcopy(reference))
    assert list(fast.state_dict()) == list(reference.state_dict())
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)  # the last two stages run at 2x2 and 1x1
    y = torch.randint(0, 10, (4,))
    for model in (reference, fast):
        F.cross_entropy(model(x), y).backward()
    grads = dict(reference.named_parameters())
    for name, p in fast.named_parameters():
        assert_same(p.grad, grads[name].grad)


def test_fast_adam_takes_the_same_steps_as_adam():
    torch.manual_seed(2)
    a = nn.Linear(8, 3)
    b = copy.deepcopy(a)
    opt_a, opt_b = torch.optim.Adam(a.parameters(), lr=1e-3), fast_adam(b.parameters(), lr=1e-3)
    for _ in range(3):
        x = torch.randn(4, 8)
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-7)


def test_training_autocast_runs_convs_in_bfloat16_only_when_enabled():
    from backbonekit.optimize import training_autocast

    conv = nn.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 8, 8)
    with training_autocast("cpu", enabled=True):
        assert conv(x).dtype == torch.bfloat16
    with training_autocast("cpu", enabled=False):
        assert conv(x).dtype == torch.float32
    with training_autocast("cpu"):  # opt-in on the CPU
        assert conv(x).dtype == torch.float32

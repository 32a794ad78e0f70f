"""Speed: an inference fast path (BatchNorm folding, channels_last, ``torch.compile``) and training-step helpers.

Everything here keeps the model's class and interface (``features_only``, ``feature_info``,
``forward_levels``); only the modules inside change. Figures: ``benchmarks/`` and ``docs/speed.md``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

_BATCHNORMS = (nn.BatchNorm2d,)


# -- BatchNorm folding ------------------------------------------------------------------------
def conv_bn_pairs(model: nn.Module, example: Tensor | None = None) -> list[tuple[str, str]]:
    """Names of (conv, BatchNorm) pairs where the BatchNorm's input is exactly that conv's output.

    Found by running ``example`` (default: a small input the model accepts) once with forward hooks,
    so the pairing follows the data flow rather than the order modules were registered in: the
    BatchNorm must receive the very tensor the conv returned, unmodified (its version counter
    unchanged, so an in-place op in between rules the pair out). A conv or BatchNorm that runs more
    than once (a shared module) is never folded. Assumed, and true of every registered model (the
    tests check outputs): the conv's output feeds nothing but that BatchNorm.
    """
    names = {module: name for name, module in model.named_modules()}
    produced_by: dict[int, tuple[str, Tensor, int]] = {}  # holding the tensor keeps its id from being reused
    calls: dict[str, int] = {}
    pairs: list[tuple[str, str]] = []

    def after_conv(module: nn.Module, _inputs: tuple, output: Tensor) -> None:
        name = names[module]
        calls[name] = calls.get(name, 0) + 1
        produced_by[id(output)] = (name, output, output._version)

    def before_bn(module: nn.Module, inputs: tuple) -> None:
        calls[names[module]] = calls.get(names[module], 0) + 1
        entry = produced_by.get(id(inputs[0]))
        if entry is not None and entry[1] is inputs[0] and entry[2] == inputs[0]._version:
            pairs.append((entry[0], names[module]))

    handles = [m.register_forward_hook(after_conv) for m in model.modules() if isinstance(m, nn.Conv2d)]
    handles += [m.register_forward_pre_hook(before_bn) for m in model.modules() if isinstance(m, _BATCHNORMS)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            outputs = model(_example_input(model) if example is None else example)
        del outputs
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return [(conv, bn) for conv, bn in pairs if calls[conv] == 1 and calls.get(bn, 0) == 1]


def _example_input(model: nn.Module) -> Tensor:
    stride = int(getattr(model, "stride", 32))
    size = max(2 * stride, 64)
    param = next(model.parameters())
    return torch.zeros(1, int(getattr(model, "in_chans", 3)), size, size, dtype=param.dtype, device=param.device)


def fuse_batchnorm(model: nn.Module, example: Tensor | None = None) -> nn.Module:
    """Fold every BatchNorm that directly follows a conv into the conv's weights (in place), return the model.

    Uses ``torch.nn.utils.fusion.fuse_conv_bn_eval`` (the running statistics, i.e. eval-mode
    BatchNorm); the BatchNorm becomes ``nn.Identity``. The model is put in eval mode: a folded
    model is for inference only.
    """
    model.eval()
    for conv_name, bn_name in conv_bn_pairs(model, example):
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        _replace(model, conv_name, fuse_conv_bn_eval(conv, bn))
        _replace(model, bn_name, nn.Identity())
    return model


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def count_batchnorms(model: nn.Module) -> int:
    """Number of BatchNorm layers left in ``model``."""
    return sum(isinstance(m, _BATCHNORMS) for m in model.modules())


# -- the inference fast path --------------------------------------------------------------------
def channels_last_is_faster(device: torch.device | str) -> bool:
    """Whether NHWC is the better default for convolutions on this device.

    CUDA: yes (tensor-core kernels are NHWC). CPU: yes at detection-sized inputs (darknet53, 256x256,
    batch 8: 1.1x over NCHW in ``benchmarks/bench_inference.py``), but not at every size (mixed
    results at 64-128 px): ``backbonekit bench MODEL --variant fused fused-nchw`` measures a case.
    """
    return torch.device(device).type in ("cuda", "cpu")


def optimize_for_inference(model: nn.Module, *, channels_last: bool | None = None, compile: bool = False,
                           freezing: bool = True, example: Tensor | None = None) -> nn.Module:
    """Return ``model`` folded, in eval mode and ready for fast inference (its outputs are unchanged).

    Args:
        model: any backbonekit model (classifier or ``features_only``); changed in place.
        channels_last: store weights NHWC (``None``: where :func:`channels_last_is_faster` says so).
            Inputs may stay NCHW; outputs then come back NHWC-strided, with the same values.
        compile: wrap in ``torch.compile`` (the first call compiles, which takes tens of seconds on CPU).
            The result is an ``OptimizedModule``; the original model is its ``_orig_mod``.
        freezing: with ``compile``, let Inductor treat the weights as constants (``freezing``), which
            lets it pre-pack them for oneDNN; run it under ``torch.no_grad()`` for that to apply.
        example: an input used once to find conv/BatchNorm pairs (default: a small zero image).
    """
    fuse_batchnorm(model, example)
    device = next(model.parameters()).device
    if channels_last is None:
        channels_last = channels_last_is_faster(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile:
        return torch.compile(model, options={"freezing": freezing})
    return model


# -- training-step helpers -----------------------------------------------------------------------
class PaddingAwareConv2d(nn.Conv2d):
    """``nn.Conv2d`` that drops the kernel taps which only ever see zero padding.

    A 3x3 conv (padding 1) on a 1x1 map multiplies eight of its nine taps by padding: the result is
    the centre tap alone, a 1x1 conv. Darknet-53 on 32x32 images (seed 001) runs its last stage at
    1x1, where oneDNN's full 3x3 backward costs several times the 1x1 one. The cropped conv gives
    the same output and gradients (zero for the dead taps). Maps where every tap is live (2x2 and
    larger for a 3x3 conv with stride 1) run the plain conv: a gathered dense matrix product was
    tried for 2x2 maps and was slower in the forward pass.
    """

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.padding_mode != "zeros" or isinstance(self.padding, str) or self.groups != 1:
            return super()._conv_forward(input, weight, bias)
        crop = _live_crop(tuple(input.shape[-2:]), self.kernel_size, self.stride, self.padding, self.dilation)
        if crop is None:
            return super()._conv_forward(input, weight, bias)
        (top, bottom, pad_h), (left, right, pad_w) = crop
        return F.conv2d(input, weight[:, :, top:bottom, left:right], bias, self.stride, (pad_h, pad_w),
                        self.dilation, self.groups)


def _output_size(n: int, k: int, s: int, p: int, d: int) -> int:
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def _live_crop(size: tuple, kernel: tuple, stride: tuple, padding: tuple, dilation: tuple) -> tuple | None:
    """Per spatial dim (first tap, end tap, new padding) of the taps that touch real input, or ``None``
    when no tap can be dropped or when a symmetric padding cannot reproduce the output size."""
    crops = []
    for n, k, s, p, d in zip(size, kernel, stride, padding, dilation):
        out = _output_size(n, k, s, p, d)
        live = [t for t in range(k) if any(0 <= o * s - p + t * d < n for o in range(out))]
        if not live:
            return None
        first, last = live[0], live[-1]
        new_p = p - first * d
        if new_p < 0 or _output_size(n, last - first + 1, s, new_p, d) != out:
            return None
        crops.append((first, last + 1, new_p))
    if all(first == 0 and end == k for (first, end, _), k in zip(crops, kernel)):
        return None
    return tuple(crops)


def skip_padding_taps(model: nn.Module) -> nn.Module:
    """Make every plain ``nn.Conv2d`` in ``model`` a :class:`PaddingAwareConv2d` (in place) and return it.

    Parameters, buffers and ``state_dict`` keys are unchanged (the class is swapped, not the
    module), so checkpoints, optimizers and EMA copies are unaffected. Safe to call before
    creating the optimizer or after.
    """
    for module in model.modules():
        if type(module) is nn.Conv2d and module.padding_mode == "zeros" and not isinstance(module.padding, str):
            module.__class__ = PaddingAwareConv2d
    return model


def fused_optimizer(cls: type[torch.optim.Optimizer], params: Any, **kwargs: Any) -> torch.optim.Optimizer:
    """``cls(params, fused=True, ...)`` where the device supports it (one kernel for every parameter),
    else ``foreach``. The update is the same; only the kernel launches differ. SGD, Adam and AdamW
    have fused CPU and CUDA kernels."""
    params = list(params)
    try:
        return cls(params, fused=True, **kwargs)
    except (RuntimeError, ValueError, TypeError):
        return cls(params, foreach=True, **kwargs)


def fast_adam(params: Any, lr: float = 1e-3, **kwargs: Any) -> torch.optim.Adam:
    """``torch.optim.Adam`` through :func:`fused_optimizer`."""
    return fused_optimizer(torch.optim.Adam, params, lr=lr, **kwargs)


def prepare_for_training(model: nn.Module, *, channels_last: bool = False,
                         skip_dead_taps: bool = True) -> nn.Module:
    """Apply the training-speed changes that never change results, in place; return the model.

    ``skip_dead_taps`` (:func:`skip_padding_taps`) pays off when late stages run at 1x1 (small
    images, e.g. 32x32 CIFAR through a stride-32 backbone). ``channels_last`` is off by default:
    on CPU it measured slower for training (see ``benchmarks/RESULTS.md``); on CUDA turn it on
    with AMP. Pair with :func:`fast_adam` for the optimizer.
    """
    if skip_dead_taps:
        skip_padding_taps(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def bf16_is_native(device: torch.device | str) -> bool:
    """Whether this device has native bfloat16 convolutions (CUDA with bf16; CPUs with AVX512-BF16 or AMX)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def training_autocast(device: torch.device | str, enabled: bool | None = None,
                      dtype: torch.dtype = torch.bfloat16) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` (bfloat16 by default) for the forward pass and the loss, or a no-op.

    The one mixed-precision switch of the package (``benchmarks``, ``bench`` and the training loop use it).
    ``enabled=None`` turns it on for CUDA devices with bf16 only; ``enabled=True`` forces it. On the
    CPU keep it opt-in, and only where :func:`bf16_is_native`: on our AVX512-BF16 machine the
    bf16 backward of Darknet-53 ran 10x slower than fp32 with [0, 1] inputs (``benchmarks/bench_train.py
    --variants fast fast-bf16``). Mixed precision changes numerics, unlike the other helpers here;
    float16 needs a ``torch.amp.GradScaler``. Wrap the forward and the loss only, not ``backward()`` or
    ``optimizer.step()``.
    """
    device = torch.device(device)
    if enabled is None:
        enabled = device.type == "cuda" and bf16_is_native(device)
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def compile_for_training(model: nn.Module, **options: Any) -> Callable[..., Any]:
    """``torch.compile(model)`` for training steps (forward and backward both compiled; no freezing,
    since the weights change). Parameters stay shared with ``model``: build the optimizer on ``model``."""
    return torch.compile(model, **options)

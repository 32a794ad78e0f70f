"""Helpers shared by the test modules (importable: pytest puts tests/ on sys.path)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

# The tiny runs: resnet18 on 32 fake images at 32x32 (classification); resnet18 at 64 px under a quarter-width
# neck (detection). A test that needs another value says so: {**TINY_TRAIN, "epochs": 1}.
TINY_TRAIN = dict(model="resnet18", dataset="fake:32", epochs=2, batch_size=8, lr=0.02, workers=0, seed=3)
TINY_DETECT = dict(backbone="resnet18", input_size=64, neck_width=0.25, batch_size=4, anchors="coco", device="cpu")


def with_random_bn_statistics(model: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine terms, so folding has something to fold."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return model.eval()


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """Draw every parameter and every float buffer of ``model`` at random (seeded); return it in eval mode.

    Norm scales in [0.5, 1.5], running variances in [0.5, 2], shifts, means and biases around 0, conv and
    linear weights N(0, 1/fan_in) (small enough that 50 residual blocks stay finite in float32). No tensor
    is left at a value that hides a difference: not timm's zero-initialised last BatchNorm of each residual
    branch, not the identity statistics (mean 0, var 1) a fresh BatchNorm starts with.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            tensors = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
            for name, t in tensors:
                if t.is_floating_point():
                    t.copy_(_draw(name, t, g))
    return model.eval()


def _draw(name: str, t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    if name == "running_var":
        return torch.rand(t.shape, generator=g) * 1.5 + 0.5
    if name in ("running_mean", "bias"):
        return torch.randn(t.shape, generator=g) * 0.2
    if t.dim() <= 1:  # a norm's scale
        return torch.rand(t.shape, generator=g) + 0.5
    return torch.randn(t.shape, generator=g) / t[0].numel() ** 0.5



FLOAT32_EPS = torch.finfo(torch.float32).eps
ROUNDING_PER_LAYER = 4 * FLOAT32_EPS


def weight_layers(model: nn.Module) -> int:
    """How many convolutions and linear layers an input passes through at most (their count)."""
    return max(1, sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules()))


def assert_same_network_output(actual: torch.Tensor, expected: torch.Tensor, model: nn.Module) -> None:
    """Two float32 computations of one network agree up to the rounding its depth accumulates.

    Another kernel family (AVX2 against AVX-512), another BatchNorm class or a folded layer rounds
    differently at every layer; the differences add up along the layers an input goes through and are
    proportional to the size of the activations, so the tolerance is measured against the output's
    magnitude (as torchvision's and timm's suites compare outputs), not element by element: a few float32
    epsilons per weight layer, times the largest output. A real difference (another activation slope,
    BatchNorm epsilon or stride) is orders of magnitude above it.
    """
    layers = weight_layers(model)
    scale = max(expected.abs().max().item(), 1e-6)
    tolerance = ROUNDING_PER_LAYER * layers
    torch.testing.assert_close(actual, expected, rtol=tolerance, atol=tolerance * scale)


# -- tiny detection data (the detection imports stay inside: classification tests need not load them) --

def tiny_set(split: str = "train", n: int = 4, seed: int = 0):
    """``n`` photodigits images of 64 px with one or two digits 20-32 px high (the same first images for any n)."""
    from backbonekit.detection.data.photodigits import PhotoDigitsSpec, photodigits

    spec = PhotoDigitsSpec(image_size=64, num_train=n, num_val=n, digits_per_image=(1, 2), digit_height=(20, 32),
                           seed=seed)
    return photodigits(split, spec)


def write_tiny_yolo(root: Path, train: int, val: int, seed: int = 0) -> Path:
    """``tiny_set``'s images as a YOLO folder at ``root``: ``train`` training and ``val`` validation images."""
    from backbonekit.detection.data.photodigits import write_yolo_dataset

    return write_yolo_dataset({"train": tiny_set("train", train, seed), "val": tiny_set("val", val, seed)}, root)


def fit_one_batch(model: nn.Module, images, targets, steps: int, lr: float = 1e-3) -> list[float]:
    """Train a detector ``steps`` times on one batch (AdamW, cosine); the loss of each step."""
    from backbonekit.detection.training.engine import train_one_epoch
    from backbonekit.engine.optim import build_optimizer, build_scheduler

    optimizer = build_optimizer("adamw", model, lr, 0.0)
    scheduler = build_scheduler("cosine", optimizer, lr, 1, steps, warmup_epochs=0.1)
    return [train_one_epoch(model, [(images, targets)], optimizer, scheduler, device=torch.device("cpu")).parts["loss"]
            for _ in range(steps)]


# -- a run killed mid-way ------------------------------------------------------------------------------

@contextmanager
def interrupt_after(trainer_module, epochs: int, error: BaseException | type = KeyboardInterrupt) -> Iterator[None]:
    """Inside the block, ``trainer_module.train_one_epoch`` runs ``epochs`` epochs, then raises ``error`` as
    the next one starts (a run killed during epoch ``epochs + 1``; ``epochs=0``: a run that fails in its
    first). Patches the module itself, not through pytest, so it works in spawned DDP workers too."""
    real, started = trainer_module.train_one_epoch, []

    def epoch(*args, **kwargs):
        started.append(1)
        if len(started) > epochs:
            raise error
        return real(*args, **kwargs)

    trainer_module.train_one_epoch = epoch
    try:
        yield
    finally:
        trainer_module.train_one_epoch = real

"""Where and how a run computes: the device, mixed precision, determinism, and the model behind DDP."""

from __future__ import annotations

import os

import torch
from torch import nn

from . import dist


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else CPU. Under torchrun each rank takes its LOCAL_RANK GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: expected a CUDA GPU, found none (use --device cpu or auto)")
        return torch.device("cuda", dist.local_rank())
    return torch.device("cpu")


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """Mixed precision is a CUDA feature here; ``auto`` picks bf16 where the GPU has it, else fp16."""
    if device.type != "cuda":
        if mode in ("bf16", "fp16"):
            raise ValueError(f"--amp {mode} needs --device cuda, found device {device.type}")
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def set_determinism(seed: int, deterministic: bool, device: torch.device) -> None:
    """Seed torch; with ``deterministic``, deterministic algorithms (and cuDNN without benchmarking)."""
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (the model itself otherwise)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model

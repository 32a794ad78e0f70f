"""Shared test setup: every test starts from the same random state; compiled kernels are cached per
PyTorch CPU kernel family; the tiny detection set most detection-training tests share."""

import os
import tempfile
from pathlib import Path

import pytest
import torch

from helpers import write_tiny_yolo


def _inductor_cache_per_kernel_family() -> None:
    """Inductor's on-disk cache does not key its compiled kernels on ``ATEN_CPU_CAPABILITY``: a kernel
    compiled under ``ATEN_CPU_CAPABILITY=avx2`` aborts the process when a default (AVX-512) run loads it,
    and the other way round fails test_compiled_model_matches_eager (torch 2.14.1, measured here). The README's AVX2 pass runs
    after the default one, so each family gets a cache folder of its own, unless the user chose one."""
    if "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        return
    family = os.environ.get("ATEN_CPU_CAPABILITY", "default") or "default"
    user = os.environ.get("USER") or str(os.getuid())
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), f"torchinductor_{user}_{family}")


_inductor_cache_per_kernel_family()


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def yolo_dir(tmp_path_factory) -> Path:
    """A YOLO folder of ``tiny_set`` images, 8 for training and 4 for validation (one per test module)."""
    return write_tiny_yolo(tmp_path_factory.mktemp("data") / "tiny", train=8, val=4)

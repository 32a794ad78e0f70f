"""``evaluate`` for exported ONNX classifiers (fp32 or int8): the same figures and report files as a checkpoint.

The preprocessing (image size, mean/std, class names) comes from the file's metadata
(:mod:`backbonekit.deploy.metadata`), so the file is checked exactly as the checkpoint it came from.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..deploy.runtime import open_session
from ..engine.onnx import OnnxModule
from ..engine.runs import evaluation_folder, evaluation_output
from .engine import EvalResult, evaluate
from .trainer import EVAL_BATCH_SIZE, evaluation_batches


def evaluate_onnx(path: str | os.PathLike, *, dataset: str | None = None, split: str = "test",
                  force: bool = False,  # ``out`` as runs.evaluation_output allows; force: over other files
                  data_dir: str | os.PathLike = "data", batch_size: int = EVAL_BATCH_SIZE,
                  out: str | os.PathLike | None = None, download: bool = True, threads: int | None = None,
                  log: Callable[[str], None] = print) -> EvalResult:
    """Evaluate an exported classifier with ONNX Runtime: :func:`evaluate_checkpoint`'s figures and report.

    ``dataset`` defaults to the one in the file's metadata; the report goes to ``out`` (default
    ``FILE_FOLDER/eval-FILE_STEM-DATASET-SPLIT``).
    """
    from . import report

    if split not in ("test", "train"):
        raise ValueError(f"--split must be test or train, found {split!r}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, found {batch_size}")
    session, meta = open_session(path, threads)
    if meta["task"] != "classification":
        raise ValueError(f"{path} holds a {meta['task']} model: evaluate takes classifiers")
    name = dataset or meta.get("dataset")
    if not name:
        raise ValueError(f"{path} does not name the dataset it was trained on: pass --dataset")
    out = evaluation_output(out or evaluation_folder(path, f"{Path(path).stem}-{name}", split), force=force)
    prep = {"image_size": meta["image_size"], "classes": meta["classes"], "mean": meta["mean"], "std": meta["std"]}
    dev = torch.device("cpu")
    data, batches = evaluation_batches(prep, name, split, data_dir, download, dev, batch_size)
    ev = evaluate(OnnxModule(session), batches, nn.CrossEntropyLoss(), device=dev, reduce=False)
    kind = "int8" if "quantization" in meta else "fp32"
    report.write_evaluation(out, ev, data, title=f"{path} ({kind} ONNX) on {name} {split} split")
    log(f"{path} ({kind} ONNX) on {name} {split}: loss {ev.loss:.4f} {ev.summary()} ({ev.count} images); "
        f"report in {out}")
    return ev

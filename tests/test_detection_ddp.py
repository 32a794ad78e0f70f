"""``detect train --nproc 2``: two CPU processes with gloo, launched through torchrun's API.

Rank 0 gathers every rank's predictions and computes COCO mAP once; that mAP must equal one process
evaluating the saved best.pt on the same validation images (an independent, single-process run). A
barely trained model's mAP is near 0 and could not show predictions paired with the wrong image, so a
second test evaluates an oracle that answers each image with its own ground truth: every image must
come back exactly once, in order, and score mAP 1.
"""

from __future__ import annotations

import pytest
import torch
import yaml
from torch import nn

from backbonekit.detection.training.config import DetectConfig
from backbonekit.detection.data import load_detection_dataset
from backbonekit.detection.training.engine import evaluate
from backbonekit.detection.training.metrics import DetectionEvaluator
from backbonekit.detection.loading import load_run_checkpoint
from backbonekit.engine.launch import launch
from helpers import TINY_DETECT, tiny_set, write_tiny_yolo

pytestmark = pytest.mark.slow  # two spawned processes importing torch: ~20-40 s on 2 cores

TINY = {**TINY_DETECT, "batch_size": 2, "score_thresh": 0.01, "epochs": 1, "workers": 0, "seed": 3}


def ddp_worker(cfg_dict: dict) -> dict:
    from backbonekit.detection.training.trainer import train
    from backbonekit.engine import dist

    try:
        result = train(DetectConfig(**cfg_dict), log=lambda _: None)
        return {"history": result.history, "world": dist.world_size()}
    finally:
        dist.cleanup()


def test_two_gloo_ranks_compute_the_map_of_best_pt_once(tmp_path):
    root = write_tiny_yolo(tmp_path / "data", train=8, val=5, seed=2)
    out = tmp_path / "run"
    cfg = DetectConfig(**TINY, dataset=f"yolo:{root}", out=str(out))
    results = launch(ddp_worker, (cfg.to_dict(),), nproc=2, threads_per_process=1)
    assert results[0]["world"] == results[1]["world"] == 2
    (row,) = results[0]["history"]
    assert results[1]["history"] == []  # only rank 0 computes the mAP
    assert yaml.safe_load((out / "config.yaml").read_text())["nproc"] == 2  # the real process count

    model, ckpt = load_run_checkpoint(out / "best.pt")
    val = load_detection_dataset(f"yolo:{root}", None, "val")  # the images the ranks evaluated
    metrics, items = evaluate(model, val, ckpt["classes"], device=torch.device("cpu"), batch_size=2,
                              score_thresh=cfg.score_thresh, nms_thresh=cfg.nms_thresh, distributed=False)
    assert len(items) == 5
    assert row["map"] == pytest.approx(metrics.summary["map"], abs=1e-6)
    assert row["map_50"] == pytest.approx(metrics.summary["map_50"], abs=1e-6)


class GroundTruthOracle(nn.Module):
    """Answers each image of ``dataset`` with its own boxes and labels (score 1): perfect detections."""

    def __init__(self, dataset) -> None:
        super().__init__()
        self.answers = {bytes(image.numpy()): target for image, target in (dataset[i] for i in range(len(dataset)))}

    def detect(self, images, **_) -> list[dict]:
        out = []
        for image in images:
            target = self.answers[bytes((image * 255).round().to(torch.uint8).numpy())]
            out.append({"boxes": target["boxes"].float(), "labels": target["labels"],
                        "scores": torch.ones(len(target["labels"]))})
        return out


def oracle_val():
    return tiny_set("val", 7, seed=4)


def oracle_worker() -> dict:
    from backbonekit.engine import dist

    dist.setup("cpu")
    try:
        val = oracle_val()
        metrics, items = evaluate(GroundTruthOracle(val), val, val.classes, device=torch.device("cpu"), batch_size=2)
        paired = all(torch.equal(target["boxes"], val[i][1]["boxes"].float()) for i, _, target in items)
        return {"map_50": metrics.summary["map_50"] if metrics else None, "indices": [i for i, _, _ in items],
                "paired": paired}
    finally:
        dist.cleanup()


def test_ranks_evaluate_every_image_once_and_rank_0_sees_them_all():
    val = oracle_val()
    single, _ = evaluate(GroundTruthOracle(val), val, val.classes, device=torch.device("cpu"), distributed=False)
    assert single.summary["map_50"] == pytest.approx(1.0)
    # predictions paired with another image's targets score far lower: the mAP shows a mixed-up gather
    evaluator = DetectionEvaluator(val.classes)
    answers = [GroundTruthOracle(val).detect([val[i][0].float() / 255])[0] for i in range(len(val))]
    evaluator.update(answers[1:] + answers[:1], [val[i][1] for i in range(len(val))])
    assert evaluator.compute().summary["map_50"] < 0.5
    results = launch(oracle_worker, (), nproc=2, threads_per_process=1)
    # every image evaluated once (rank 0: 0, 2, 4, 6; rank 1: 1, 3, 5), all gathered on rank 0 in order
    assert results[0]["indices"] == list(range(7)) and results[1] == {"map_50": None, "indices": [], "paired": True}
    assert results[0]["paired"] and results[0]["map_50"] == pytest.approx(1.0)  # each target is its index's

"""``detect train --nproc 2``: two CPU processes with gloo, launched through torchrun's API.

Rank 0 gathers every rank's predictions and computes COCO mAP once; that mAP must equal one process
evaluating the saved best.pt on the same validation images (an independent, single-process run).
"""

from __future__ import annotations

import pytest
import torch
import yaml

from backbonekit.detection.config import DetectConfig
from backbonekit.detection.data import load_detection_dataset
from backbonekit.detection.engine import evaluate
from backbonekit.detection.synthetic import PhotoDigitsSpec, photodigits, write_yolo_dataset
from backbonekit.detection.trainer import load_detector
from backbonekit.train.launch import launch

pytestmark = pytest.mark.slow  # two spawned processes importing torch: ~20-40 s on 2 cores

TINY = dict(backbone="resnet18", input_size=64, neck_width=0.25, batch_size=2, anchors="coco", device="cpu",
            score_thresh=0.01, epochs=1, workers=0, seed=3)


def ddp_worker(cfg_dict: dict) -> dict:
    from backbonekit.detection.trainer import train
    from backbonekit.train import dist

    try:
        result = train(DetectConfig(**cfg_dict), log=lambda _: None)
        return {"history": result.history, "world": dist.world_size()}
    finally:
        dist.cleanup()


def test_two_gloo_ranks_compute_the_map_of_best_pt_once(tmp_path):
    spec = PhotoDigitsSpec(image_size=64, num_train=8, num_val=5, digits_per_image=(1, 2), digit_height=(20, 32),
                           seed=2)
    root = tmp_path / "data"
    write_yolo_dataset({"train": photodigits("train", spec), "val": photodigits("val", spec)}, root)
    out = tmp_path / "run"
    cfg = DetectConfig(**TINY, dataset=f"yolo:{root}", out=str(out))
    results = launch(ddp_worker, (cfg.to_dict(),), nproc=2, threads_per_process=1)
    assert results[0]["world"] == results[1]["world"] == 2
    (row,) = results[0]["history"]
    assert results[1]["history"] == []  # only rank 0 computes the mAP
    assert yaml.safe_load((out / "config.yaml").read_text())["nproc"] == 2  # the real process count

    model, ckpt = load_detector(out / "best.pt")
    val = load_detection_dataset(f"yolo:{root}", None, "val")  # the images the ranks evaluated
    metrics, items = evaluate(model, val, ckpt["classes"], device=torch.device("cpu"), batch_size=2,
                              score_thresh=cfg.score_thresh, nms_thresh=cfg.nms_thresh, distributed=False)
    assert len(items) == 5
    assert row["map"] == pytest.approx(metrics.summary["map"], abs=1e-6)
    assert row["map_50"] == pytest.approx(metrics.summary["map_50"], abs=1e-6)

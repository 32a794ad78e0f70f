"""Detection training: the loss falls, the detector overfits four images, the run folder, resume, bad labels.

Everything runs on tiny generated photodigits sets (64x64, ResNet-18 backbone, a quarter-width neck).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from backbonekit.checkpoint import load_file
from backbonekit.detection.training import trainer
from backbonekit.detection.training.config import DetectConfig, resolve_detect_config
from backbonekit.detection.training.engine import (TrainBatches, augment_config, evaluate, shard_indices,
                                          train_one_epoch)
from backbonekit.detection.training.build import build_from_config
from backbonekit.detection.training.history import METRIC_FIELDS
from backbonekit.detection.loading import load_run_checkpoint
from backbonekit.detection.training.trainer import evaluate_checkpoint, resolve_anchors, train
from backbonekit.engine.optim import build_optimizer, build_scheduler
from helpers import TINY_DETECT, fit_one_batch, interrupt_after, tiny_set

CPU = torch.device("cpu")
TINY = {**TINY_DETECT, "score_thresh": 0.01}
RUN_FILES = ("config.yaml", "metrics.csv", "last.pt", "best.pt", "curves.png", "pr_curves.png", "predictions.png",
             "per_class_ap.txt", "per_class_ap.json", "report.html")


def run_config(yolo_dir: Path, out: Path, **kw) -> DetectConfig:
    return DetectConfig(**{**TINY, "dataset": f"yolo:{yolo_dir}", "epochs": 2, "out": str(out), **kw})


@pytest.fixture(scope="module")
def full_run(yolo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    return out, train(run_config(yolo_dir, out), log=lambda _: None)


def test_loss_falls_on_augmented_batches():
    data = tiny_set("train", 8, seed=1)
    cfg = DetectConfig(**TINY)
    model, _ = build_from_config(cfg, 10, resolve_anchors("coco", data, 64))
    optimizer = build_optimizer("adamw", model, 3e-3, 0.0)
    scheduler = build_scheduler("cosine", optimizer, 3e-3, 12, 2, warmup_epochs=0.5)
    losses, xy = [], []
    for epoch in range(12):  # 24 steps of 4 images, each epoch a new order and new jitter
        batches = TrainBatches(data, 4, 64, CPU, seed=0, epoch=epoch, augment=augment_config(0.2, 0.1, False, True))
        stats = train_one_epoch(model, batches, optimizer, scheduler, device=CPU, epoch=epoch)
        assert set(stats.parts) == {"loss", "loss_xy", "loss_wh", "loss_obj", "loss_noobj", "loss_cls"}
        losses.append(stats.parts["loss"] - stats.parts["loss_xy"])
        xy.append(stats.parts["loss_xy"])
    # the xy term is a BCE against fractional targets: its floor is their entropy, not 0, and with several
    # anchors per box (iou_thresh) it is most of the loss; the parts that can reach 0 must fall by 30%
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses
    assert sum(xy[-3:]) < sum(xy[:3]), xy


def test_detector_overfits_four_images():
    data = tiny_set("train", 4)
    model, _ = build_from_config(DetectConfig(**TINY), 10, resolve_anchors("coco", data, 64))
    images, targets = next(iter(TrainBatches(data, 4, 64, CPU, seed=0, epoch=0)))
    losses = fit_one_batch(model, images, targets, steps=80)
    assert losses[-1] < 0.5 * losses[0]
    metrics, items = evaluate(model, data, data.classes, device=CPU, distributed=False)
    assert [i for i, _, _ in items] == [0, 1, 2, 3]
    assert metrics.summary["map_50"] >= 0.9, metrics.summary


def test_evaluation_shards_cover_every_image_once():
    shards = [shard_indices(10, r, 3) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(10))


def test_run_folder_holds_every_file(full_run):
    out, result = full_run
    for name in RUN_FILES:
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert list(rows[0]) == list(METRIC_FIELDS) and [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(float(r["train_loss_noobj"]) > 0 for r in rows)
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["classes"] == [str(d) for d in range(10)] and best["input_size"] == 64
    assert len(best["anchors"]) == 9 and best["model_kwargs"]["backbone"] == "resnet18"
    assert best["epoch"] == max(result.history, key=lambda r: r["map"])["epoch"]
    per_class = json.loads((out / "per_class_ap.json").read_text())
    assert set(per_class) <= set(best["classes"])
    html = (out / "report.html").read_text()
    assert all(name in html for name in ("curves.png", "pr_curves.png", "predictions.png", "mAP@.5"))
    # best.pt alone is enough to evaluate: the same figures as the final report
    metrics = evaluate_checkpoint(out / "best.pt", out=out / "eval", device="cpu", log=lambda _: None)
    assert metrics.summary == pytest.approx(result.final.summary)
    model, _ = load_run_checkpoint(out / "best.pt")
    assert model.input_size == 64 and model.num_classes == 10


def test_resume_continues_exactly(full_run, yolo_dir, tmp_path):
    out_full, full = full_run
    with interrupt_after(trainer, epochs=1), pytest.raises(KeyboardInterrupt):
        train(run_config(yolo_dir, tmp_path / "run"), log=lambda _: None)
    assert load_file(tmp_path / "run" / "last.pt")["epoch"] == 1
    resumed = train(DetectConfig(resume=str(tmp_path / "run"), device="cpu"), log=lambda _: None)
    a, b = load_file(out_full / "last.pt"), load_file(tmp_path / "run" / "last.pt")
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    strip = [{k: v for k, v in row.items() if k != "time_s"} for row in full.history]
    assert strip == [{k: v for k, v in row.items() if k != "time_s"} for row in resumed.history]


def test_a_run_saved_before_a_field_existed_resumes_with_what_it_trained_with(tmp_path):
    from backbonekit.detection.training.config import DETECT_LEGACY_VALUES, DETECT_RESUME_RULES
    from backbonekit.engine.runs import resumed_config

    saved = {k: v for k, v in DetectConfig(epochs=4).to_dict().items() if k not in ("iou_thresh", "ignore_thresh")}

    def resume(**flags):
        return resumed_config(saved, DetectConfig(**flags), set(flags), tmp_path, tmp_path / "last.pt", 2,
                              DETECT_RESUME_RULES, DETECT_LEGACY_VALUES)

    assert DetectConfig().iou_thresh != 1.0  # today's default differs from what the old run trained with
    assert resume().iou_thresh == 1.0 and resume().ignore_thresh == 0.7
    assert resume(iou_thresh=1.0).iou_thresh == 1.0  # naming the old value is no change
    with pytest.raises(ValueError, match=r"--iou-thresh 1.0 -> 0.5"):
        resume(iou_thresh=0.5)


def test_bad_label_gives_one_line_before_training(yolo_dir, tmp_path):
    import shutil

    data = tmp_path / "bad"
    shutil.copytree(yolo_dir, data)
    label = data / "labels" / "train" / "000002.txt"
    label.write_text(label.read_text() + "12 0.5 0.5 0.2 0.2\n")
    bad_line = len(label.read_text().splitlines())
    with pytest.raises(ValueError) as info:
        train(run_config(data, tmp_path / "run"), log=lambda _: None)
    message = str(info.value)
    assert "\n" not in message and f"000002.txt:{bad_line}: class id 12 is outside" in message
    assert not (tmp_path / "run").exists()  # nothing was written: the check comes first


def test_config_file_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\nanchors: [[10, 13], [16, 30], [33, 23], [30, 61], [62, 45], [59, 119], "
                    "[116, 90], [156, 198], [373, 326]]\nlr: 0.01\n")
    cfg = resolve_detect_config(path, {"lr": 0.002})
    assert cfg.epochs == 3 and cfg.lr == 0.002 and len(cfg.anchors) == 9
    with pytest.raises(ValueError, match="anchors must be coco, auto or nine positive"):
        DetectConfig(anchors="10,13 16,30")
    path.write_text("epochs: many\n")
    with pytest.raises(ValueError, match=r"config key 'epochs' in .*c.yaml:1 expects int"):
        resolve_detect_config(path)


def _detect_cli():
    """The ``detect`` command's parser, as ``backbonekit`` builds it."""
    from backbonekit.cli import build_parser

    return build_parser()


def test_cli_flags_come_from_the_config_and_evaluate_prints_the_table(full_run, capsys):
    parser = _detect_cli()
    args = parser.parse_args(["detect", "train", "--backbone", "darknet53", "--no-hsv", "--mosaic", "0.5", "--anchors", "coco"])
    assert (args.backbone, args.hsv, args.mosaic, args.anchors) == ("darknet53", False, 0.5, "coco")
    assert not hasattr(args, "epochs")  # unset flags leave the config file's (or the default) value
    out, _ = full_run
    args = parser.parse_args(["detect", "evaluate", str(out / "best.pt"), "--device", "cpu", "--out", str(out / "cli-eval")])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "mAP@[.5:.95]" in printed and "AP50" in printed

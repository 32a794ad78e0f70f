"""``backbonekit detect compare``: two tiny pairs on a tiny generated set, killed and continued; bad pairs;
Faster R-CNN's proposal counts; the preset.

The comparison is killed in the second pair's second epoch and continued through the command line; the
figures in its table are checked against the run folders' own files (pycocotools' summary in eval.json,
metrics.csv) and by hand (images per epoch, latency = 1000 / images per second).
"""

from __future__ import annotations

import csv
import inspect
import json
import math
import re
from pathlib import Path

import pytest
from PIL import Image
from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN

from backbonekit.checkpoint import load_file
from backbonekit.cli import main
from backbonekit.detection.training import trainer as detect_trainer
from backbonekit.detection.training.compare import (COLUMNS, PLAN_FILE, check_pairs, compare, make_plan, pareto_front,
                                           run_state)
from backbonekit.detection.training.config import DetectConfig
from backbonekit.engine.runs import LOCK_NAME
from helpers import interrupt_after

PAIRS = ["yolov3:resnet18", "retinanet:resnet18"]
FOLDERS = ["yolov3-resnet18", "retinanet-resnet18"]
TRAIN_IMAGES, BATCH = 8, 4  # the training images of yolo_dir (conftest.py)
RUN_FILES = ("config.yaml", "metrics.csv", "last.pt", "best.pt", "eval.json", "curves.png", "pr_curves.png",
             "predictions.png", "per_class_ap.txt", "report.html")


def tiny_plan(yolo_dir: Path, **settings):
    return make_plan(PAIRS, settings={"dataset": f"yolo:{yolo_dir}", "input_size": 64, "batch_size": BATCH,
                                      "epochs": 2, "device": "cpu", **settings},
                     model_options={"yolov3": {"neck_width": 0.25, "anchors": "coco"}}, speed_images=4,
                     speed_repeats=2)


@pytest.fixture(scope="module")
def continued(yolo_dir, tmp_path_factory):
    """A comparison killed in its second pair's second epoch, then continued with ``--resume``."""
    out = tmp_path_factory.mktemp("compare") / "cmp"
    real_train, trained = detect_trainer.train, []
    with interrupt_after(detect_trainer, epochs=3), pytest.raises(KeyboardInterrupt):  # killed in the 4th epoch
        compare(tiny_plan(yolo_dir), out, log=lambda _: None)
    first, second = (out / "runs" / name for name in FOLDERS)
    killed = {"states": (run_state(first), run_state(second)), "second_epoch": load_file(second / "last.pt")["epoch"],
              "first_files": {name: (first / name).read_bytes() for name in ("last.pt", "best.pt", "metrics.csv")}}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(detect_trainer, "train", lambda cfg, **kw: trained.append(cfg) or real_train(cfg, **kw))
        code = main(["detect", "compare", "--resume", str(out), "--device", "cpu"])
    return out, killed, trained, code


def test_a_killed_comparison_continues_without_retraining_the_finished_pair(continued):
    out, killed, trained, code = continued
    first, second = (out / "runs" / name for name in FOLDERS)
    assert killed["states"] == ("done", "partial") and killed["second_epoch"] == 1
    assert code == 0
    assert [cfg.resume for cfg in trained] == [str(second)]  # only the unfinished run trained, continued
    assert {name: (first / name).read_bytes() for name in killed["first_files"]} == killed["first_files"]
    assert load_file(second / "last.pt")["epoch"] == 2


def test_both_runs_are_complete_and_the_table_has_every_column(continued):
    out, _, _, _ = continued
    for folder in FOLDERS:
        for name in RUN_FILES:
            assert (out / "runs" / folder / name).is_file(), (folder, name)
    with (out / "comparison.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(COLUMNS) and [f"{r['detector']}:{r['backbone']}" for r in rows] == PAIRS
    for row, folder in zip(rows, FOLDERS):
        numbers = {k: float(v) for k, v in row.items() if k not in ("detector", "backbone")}
        assert all(math.isfinite(v) for v in numbers.values()), row
        assert numbers["params_m"] > 0 and numbers["gmacs"] > 0 and numbers["images_per_s"] > 0
        assert numbers["latency_ms"] == pytest.approx(1000 / numbers["images_per_s"])
        run = out / "runs" / folder
        summary = json.loads((run / "eval.json").read_text())["summary"]  # pycocotools, via the run's report
        for key in ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100"):
            assert numbers[key] == pytest.approx(summary[key]) and -1 <= numbers[key] <= 1, key
        with (run / "metrics.csv").open(newline="") as f:
            epochs = list(csv.DictReader(f))
        seconds = sum(float(e["time_s"]) for e in epochs)
        assert numbers["epochs"] == len(epochs) == 2
        assert numbers["train_s_per_image"] == pytest.approx(seconds / (2 * TRAIN_IMAGES))  # 2 batches of 4 each
    table = (out / "comparison.md").read_text().splitlines()
    assert len(table) == 4 and table[0].count("|") == len(COLUMNS) + 1


def test_the_frontier_plot_and_the_report_are_written(continued):
    out, _, _, _ = continued
    for name in ("frontier.png", "map_curves.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and min(image.size) > 100
    page = (out / "report.html").read_text()
    assert "frontier.png" in page and all(f"runs/{folder}/report.html" in page for folder in FOLDERS)
    assert not list(out.glob(".*.tmp"))  # every file written through a temporary one and renamed


def test_a_rerun_with_another_plan_is_refused(continued, yolo_dir):
    out, _, _, _ = continued
    before = (out / PLAN_FILE).read_text()
    with pytest.raises(ValueError, match=r"started with another plan \(settings\.epochs 2 -> 3\)") as e:
        compare(tiny_plan(yolo_dir, epochs=3), out, log=lambda _: None)
    assert "\n" not in str(e.value) and (out / PLAN_FILE).read_text() == before


def test_a_folder_of_other_files_is_refused_and_left_as_it_was(yolo_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"expected a new or empty folder for a comparison .* \[notes.txt\]"):
        compare(tiny_plan(yolo_dir), tmp_path, log=lambda _: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"] and not (tmp_path / LOCK_NAME).exists()


def test_pareto_front_by_hand():
    rows = [{"latency_ms": 30, "map": 0.5}, {"latency_ms": 10, "map": 0.3}, {"latency_ms": 20, "map": 0.2},
            {"latency_ms": 40, "map": 0.45}]
    assert [r["latency_ms"] for r in pareto_front(rows)] == [10, 30]


@pytest.mark.parametrize("pairs, message", [
    (["yolov3:resnet18", "yolov3:detnet59"], r"pair yolov3:detnet59: backbone detnet59 has no feature maps at "
                                            r"strides \[32\]: YOLOv3 needs strides \(8, 16, 32\)"),
    (["retinanet:resnet5"], r"pair retinanet:resnet5: backbone must be one of darknet53, .*found .resnet5."),
    (["retinanet:yolov3"], r"pair retinanet:yolov3: backbone must be one of darknet53, .*found .yolov3."),
    (["ssd:resnet18"], r"pair ssd:resnet18: unknown detector 'ssd', expected one of yolov3, fasterrcnn"),
    (["fcos"], r"expected each pair as DETECTOR:BACKBONE .*found 'fcos'"),
    (["fcos:resnet18", "fcos:resnet18"], r"each pair once: found fcos:resnet18 more than once"),
    (["fcos:resnet18", "--rpn-pre-nms-top-n-train", "100"],
     r"options of fasterrcnn \(rpn_pre_nms_top_n_train\) given, but no fasterrcnn pair among fcos:resnet18"),
])
def test_a_bad_pair_is_refused_in_one_line_before_anything_trains(pairs, message, yolo_dir, tmp_path, capsys,
                                                                  monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("trained")

    monkeypatch.setattr(detect_trainer, "train", no_training)
    out = tmp_path / "cmp"
    code = main(["detect", "compare", "--dataset", f"yolo:{yolo_dir}", "--out", str(out), "--pairs", *pairs])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert re.search(message, err), err
    assert not out.exists()


def test_faster_rcnn_proposal_counts_reach_torchvision_and_only_faster_rcnn_takes_them(capsys):
    counts = dict(rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300, rpn_pre_nms_top_n_test=200,
                  rpn_post_nms_top_n_test=100)
    cfg = DetectConfig(model="fasterrcnn", backbone="resnet18", input_size=64, **counts)
    model, kwargs = detect_trainer.build_from_config(cfg, 3, None)
    assert model.rpn._pre_nms_top_n == {"training": 600, "testing": 200}
    assert model.rpn._post_nms_top_n == {"training": 300, "testing": 100}
    assert {k: kwargs[k] for k in counts} == counts  # recorded in the checkpoint's model_kwargs
    default, _ = detect_trainer.build_from_config(DetectConfig(model="fasterrcnn", backbone="resnet18"), 3, None)
    signature = inspect.signature(TorchvisionFasterRCNN).parameters  # unset: torchvision's own defaults
    assert default.rpn._pre_nms_top_n == {"training": signature["rpn_pre_nms_top_n_train"].default,
                                          "testing": signature["rpn_pre_nms_top_n_test"].default}
    assert main(["detect", "train", "--model", "retinanet", "--rpn-pre-nms-top-n-train", "100"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "rpn_pre_nms_top_n_train is a Faster R-CNN option" in err


def test_the_cpu_preset_compares_the_issue_pairs_and_every_pair_builds(tmp_path):
    plan = make_plan(preset="cpu-hour")
    assert [str(p) for p in plan.pairs] == ["retinanet:resnet50", "retinanet:detnet59", "yolov3:darknet53",
                                             "yolov3:resnet18", "yolov3:resnet50", "fasterrcnn:resnet50",
                                             "fasterrcnn:detnet59"]
    configs = dict((str(p), cfg) for p, cfg in check_pairs(plan, tmp_path))  # built on the meta device
    assert {cfg.time for cfg in configs.values()} == {"7m"} and {cfg.device for cfg in configs.values()} == {"auto"}
    assert configs["fasterrcnn:detnet59"].rpn_post_nms_top_n_train == 300
    assert configs["retinanet:resnet50"].rpn_post_nms_top_n_train is None
    assert not list(tmp_path.iterdir())
    assert make_plan(["retinanet:resnet50"], preset="cpu-hour").model_options == {}  # no pair for the preset's


def test_seconds_per_image_count_the_images_an_epoch_cut_by_the_budget_trained_on(tmp_path):
    from backbonekit.detection.training.compare import _trained_images
    from backbonekit.engine.report import read_metrics

    assert detect_trainer.metric_fields("retinanet")[-1] == "images"  # the trainer writes the column
    path = tmp_path / "metrics.csv"  # by hand: epoch 2 was ended by --time after one batch of 4 images
    path.write_text("epoch,time_s,images\n1,2.0,8\n2,0.5,4\n", encoding="utf-8")
    assert _trained_images(read_metrics(path), per_epoch=8) == 12  # not 2 x 8
    assert _trained_images([{"epoch": 1.0, "time_s": 2.0}], per_epoch=8) == 8  # a run written before the column

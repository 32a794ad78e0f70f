"""Datasets as other tools write them: YOLO data.yaml (ultralytics, Roboflow), COCO ids end to end,
crowd regions, VOC difficult objects, duplicate COCO image ids.

Every file here is written by hand; the references are pycocotools' own COCOeval and figures computed
by hand. Images are a few pixels of noise; the one training run is one step on two 64 px images.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("pycocotools")
pytest.importorskip("torchmetrics")

from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

from backbonekit.checkpoint import load_file  # noqa: E402
from backbonekit.cli import main  # noqa: E402
from backbonekit.detection.task.anchors import dataset_box_shapes  # noqa: E402
from backbonekit.detection.data import load_detection_dataset, read_coco, read_yolo  # noqa: E402
from backbonekit.detection.training.engine import TrainBatches  # noqa: E402
from backbonekit.detection.loading import load_detector  # noqa: E402
from backbonekit.detection.training.metrics import DetectionEvaluator  # noqa: E402


def save_image(path: Path, h: int = 16, w: int = 20, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def pycocotools_stats(gt_file: Path, results: list[dict]) -> np.ndarray:
    """COCOeval's 12 bbox figures for ``results`` against ``gt_file``, pycocotools alone."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        run = COCOeval(gt, gt.loadRes(results), "bbox")
        run.evaluate()
        run.accumulate()
        run.summarize()
    return run.stats


# ---------------------------------------------------------------------------------------------- 1. YOLO data.yaml

def test_yolo_yaml_splits_are_folders_lists_and_image_lists(tmp_path):
    """``path`` relative to the yaml's folder; train a list of folders; val a .txt with ./ and absolute
    entries; labels where the LAST images/ of the path becomes labels/; names as {index: name}."""
    root = tmp_path / "data"
    save_image(root / "images" / "a" / "x.png", 16, 20, seed=1)
    save_image(root / "images" / "b" / "y.png", 10, 40, seed=2)
    write(root / "labels" / "a" / "x.txt", "1 0.5 0.5 0.5 0.5\n")
    write(root / "labels" / "b" / "y.txt", "0 0.25 0.5 0.5 1\n")
    # two images/ folders in the path: only the last one becomes labels/
    save_image(root / "images" / "v" / "images" / "z.png", 20, 20, seed=3)
    write(root / "images" / "v" / "labels" / "z.txt", "2 0.5 0.5 0.1 0.1\n")
    write(root / "labels" / "v" / "images" / "z.txt", "0 0.5 0.5 1 1\n")  # the wrong one
    far = save_image(tmp_path / "elsewhere" / "images" / "w.png", 8, 8, seed=4)
    write(tmp_path / "elsewhere" / "labels" / "w.txt", "1 0.5 0.5 1 1\n")
    write(root / "val.txt", f"./images/v/images/z.png\n{far}\nnotes.md\n")
    yaml = write(tmp_path / "cfg" / "my.yaml", "path: ../data\ntrain: [images/a, images/b]\nval: val.txt\n"
                                                "names: {0: cat, 1: dog, 2: emu}\nnc: 3\n")
    train = load_detection_dataset(f"yolo:{yaml}", split="train")
    assert train.classes == ["cat", "dog", "emu"] and [p.name for p in train.paths] == ["x.png", "y.png"]
    # x.png is 20 wide, 16 tall: (cx, cy, w, h) = (.5, .5, .5, .5) -> x 5..15, y 4..12
    assert torch.equal(train.targets[0]["boxes"], torch.tensor([[5.0, 4, 15, 12]]))
    assert torch.equal(train.targets[1]["boxes"], torch.tensor([[0.0, 0, 20, 10]]))
    assert [t["labels"].tolist() for t in train.targets] == [[1], [0]]
    val = load_detection_dataset(f"yolo:{yaml}", split="val")
    assert sorted(p.name for p in val.paths) == ["w.png", "z.png"]
    by_name = {p.name: t for p, t in zip(val.paths, val.targets)}
    assert by_name["z.png"]["labels"].tolist() == [2]
    assert torch.allclose(by_name["z.png"]["boxes"], torch.tensor([[9.0, 9, 11, 11]]))
    assert by_name["w.png"]["labels"].tolist() == [1]


def roboflow_export(root: Path) -> Path:
    """What Roboflow's "YOLOv8" export unpacks to: data.yaml beside train/ valid/ test/, paths '../x/images'."""
    for split, n in (("train", 2), ("valid", 1), ("test", 1)):
        for i in range(n):
            save_image(root / split / "images" / f"{split}{i}.jpg", 12, 12, seed=i)
            write(root / split / "labels" / f"{split}{i}.txt", f"{i % 2} 0.5 0.5 0.5 0.5\n")
    return write(root / "data.yaml", "train: ../train/images\nval: ../valid/images\ntest: ../test/images\n\n"
                                     "nc: 2\nnames: ['hard-hat', 'head']\n\nroboflow:\n  workspace: w\n  version: 3\n")


def test_roboflow_export_reads_by_folder_or_by_yaml(tmp_path):
    yaml = roboflow_export(tmp_path / "helmets")
    for spec in (f"yolo:{yaml.parent}", f"yolo:{yaml}"):
        train, val, test = (load_detection_dataset(spec, split=s) for s in ("train", "val", "test"))
        assert (len(train), len(val), len(test)) == (2, 1, 1)
        assert train.classes == ["hard-hat", "head"]
        assert [t["labels"].tolist() for t in train.targets] == [[0], [1]]
        assert val.paths[0].name == "valid0.jpg" and torch.equal(val.targets[0]["boxes"], torch.tensor([[3.0, 3, 9, 9]]))


def test_yaml_naming_the_same_folder_for_train_and_val_warns_that_val_is_not_held_out(tmp_path):
    root = tmp_path / "ds"
    for i in range(2):
        save_image(root / "images" / f"{i}.png", seed=i)
        write(root / "labels" / f"{i}.txt", "0 0.5 0.5 0.5 0.5\n")
    write(root / "data.yaml", "train: images\nval: images\nnames: [thing]\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(read_yolo(root, "train")) == 2
    with pytest.warns(UserWarning, match="2 of the 2 val images are also training images: the val split is not held out"):
        assert len(read_yolo(root, "val")) == 2


def test_yolo_yaml_errors_are_one_line(tmp_path):
    root = tmp_path / "ds"
    save_image(root / "images" / "train" / "0.png")
    yaml = write(root / "data.yaml", "train: images/train\nval: images/nowhere\nnc: 2\n")
    assert read_yolo(root, "train").classes == ["0", "1"]  # nc alone: numbered classes
    with pytest.raises(FileNotFoundError, match=rf"{yaml}: 'val' names .*images/nowhere, expected a folder"):
        read_yolo(root, "val")
    with pytest.raises(ValueError, match="expected a 'test:' entry"):
        read_yolo(yaml, "test")
    write(root / "list.txt", "./images/train/0.png\n./images/train/gone.png\n")
    write(root / "data.yaml", "train: list.txt\nval: list.txt\nnames: [a, b]\nnc: 3\n")
    with pytest.raises(ValueError, match="nc is 3 but 'names' lists 2 classes"):
        read_yolo(root, "train")
    write(root / "data.yaml", "train: list.txt\nval: list.txt\nnames: [a, b]\n")
    with pytest.raises(FileNotFoundError, match=rf"{root / 'list.txt'}:2: expected an image file"):
        read_yolo(root, "train")


# ---------------------------------------------------------------------------------------------- 2. COCO ids

CATEGORIES = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 7, "name": "train"},
              {"id": 3, "name": "car"}]
CLASSES = ["person", "car", "train", "toothbrush"]  # labels 0..3 in id order
IDS = [1, 3, 7, 90]


@pytest.fixture(scope="module")
def coco_run(tmp_path_factory):
    """One training step of a tiny YOLOv3 on a two-image COCO file whose category ids have gaps."""
    from backbonekit.detection.training.config import DetectConfig
    from backbonekit.detection.training.trainer import train

    root = tmp_path_factory.mktemp("coco")
    images = [{"id": 17, "file_name": "p.png", "width": 64, "height": 64},
              {"id": 3, "file_name": "q.png", "width": 64, "height": 64}]
    for i, im in enumerate(images):
        save_image(root / im["file_name"], 64, 64, seed=10 + i)
    anns = [{"id": 1, "image_id": 17, "category_id": 90, "bbox": [4, 4, 30, 20], "area": 600, "iscrowd": 0},
            {"id": 2, "image_id": 3, "category_id": 3, "bbox": [10, 20, 24, 30], "area": 720, "iscrowd": 0}]
    train_file = write(root / "instances_train.json", json.dumps({"images": images, "annotations": anns,
                                                                  "categories": CATEGORIES}))
    cfg = DetectConfig(dataset=f"coco:{train_file},{train_file}", backbone="resnet18", input_size=64, neck_width=0.25,
                       batch_size=2, epochs=1, anchors="coco", device="cpu", out=str(root / "run"))
    train(cfg, log=lambda _: None)
    return root, train_file, root / "run" / "best.pt"


def test_training_records_the_coco_category_ids_and_the_loaded_model_carries_them(coco_run):
    _, _, best = coco_run
    ckpt = load_file(best)
    assert ckpt["classes"] == CLASSES and ckpt["category_ids"] == IDS
    model, _ = load_detector(best)
    assert model.class_names == CLASSES and model.category_ids == IDS


def test_detect_predict_writes_the_files_category_ids_and_old_checkpoints_still_load(coco_run, tmp_path):
    root, _, best = coco_run
    picture = root / "p.png"
    assert main(["detect", "predict", str(best), str(picture), "--out", str(tmp_path / "new"),
                 "--score-thresh", "0.0001"]) == 0
    rows = json.loads((tmp_path / "new" / "detections.json").read_text())
    model, _ = load_detector(best)
    pixels = torch.from_numpy(np.array(Image.open(picture))).permute(2, 0, 1).float() / 255
    labels = model.detect([pixels], score_thresh=0.0001)[0]["labels"].tolist()
    assert len(rows) == len(labels) > 0 and len(set(labels)) > 1  # more than one class, so the mapping shows
    assert sorted(r["category_id"] for r in rows) == sorted(IDS[label] for label in labels)
    # a checkpoint written before the field existed: it loads, and the labels are the ids, as before
    old = {k: v for k, v in load_file(best).items() if k != "category_ids"}
    torch.save(old, tmp_path / "old.pt")
    assert load_detector(tmp_path / "old.pt")[0].category_ids is None
    assert main(["detect", "predict", str(tmp_path / "old.pt"), str(picture), "--out", str(tmp_path / "old"),
                 "--score-thresh", "0.0001"]) == 0
    rows = json.loads((tmp_path / "old" / "detections.json").read_text())
    assert sorted(r["category_id"] for r in rows) == sorted(labels)


def test_detect_predict_gives_cocos_ids_only_to_a_model_with_cocos_80_names(tmp_path):
    """A run trained on 80 classes that are not COCO's (category_ids None: the labels are the ids) is not given
    COCO's ids by detect predict (label 11 became id 13); a model with COCO's 80 names still is."""
    import backbonekit as bk
    from backbonekit.checkpoint import atomic_save
    from backbonekit.detection.training.config import DetectConfig
    from backbonekit.detection.predict import coco_categories
    from backbonekit.detection.training.trainer import checkpoint_dict

    torch.manual_seed(0)
    model = bk.create_model("yolov3", num_classes=80, backbone="resnet18", neck_channels=(32, 16, 8),
                            input_size=64).eval()
    cfg = DetectConfig(backbone="resnet18", input_size=64, neck_width=0.25, anchors="coco")
    picture = save_image(tmp_path / "p.png", 48, 80, seed=3)
    pixels = torch.from_numpy(np.array(Image.open(picture))).permute(2, 0, 1).float() / 255
    labels = sorted(model.detect([pixels], score_thresh=0.3)[0]["labels"].tolist())
    coco_ids = [i for i, _ in coco_categories()]
    assert labels and any(coco_ids[label] != label for label in labels)  # the check can fail
    for names, expected in (([f"part {i}" for i in range(80)], labels),
                            ([name for _, name in coco_categories()], sorted(coco_ids[label] for label in labels))):
        atomic_save(checkpoint_dict(model, cfg, names, model.model_kwargs, epoch=1, history=[], best_map=0.0),
                    tmp_path / "best.pt")
        out = tmp_path / names[0].replace(" ", "")
        assert main(["detect", "predict", str(tmp_path / "best.pt"), str(picture), "--out", str(out),
                     "--score-thresh", "0.3"]) == 0
        rows = json.loads((out / "detections.json").read_text())
        assert sorted(r["category_id"] for r in rows) == expected


def test_detect_evaluate_writes_results_that_pycocotools_scores_the_same(coco_run, tmp_path, capsys):
    """Ground truth built from the model's own detections (some moved, some relabelled, one crowd region),
    image ids out of order and not sequential; COCOeval on detections.json gives detect evaluate's figures."""
    root, train_file, best = coco_run
    model, _ = load_detector(best)
    images, anns = [], []
    rng = np.random.default_rng(0)
    for image_id, seed in ((1001, 21), (5, 22), (42, 23)):
        name = f"e{image_id}.png"
        save_image(root / name, 64, 48, seed=seed)
        images.append({"id": image_id, "file_name": name, "width": 48, "height": 64})
        pixels = torch.from_numpy(np.array(Image.open(root / name))).permute(2, 0, 1).float() / 255
        found = model.detect([pixels], score_thresh=0.0001)[0]
        for k, (box, label) in enumerate(zip(found["boxes"][:6].tolist(), found["labels"][:6].tolist())):
            x1, y1, x2, y2 = (float(v) + rng.uniform(-3, 3) * (k % 3) for v in box)  # exact, near, far
            x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, 48), min(y2, 64)
            if x2 - x1 < 1 or y2 - y1 < 1:
                continue
            category = IDS[label] if k != 4 else IDS[(label + 1) % 4]  # one relabelled: a miss and a false positive
            # COCO's area is the mask's, smaller than the box's: it decides small/medium/large
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": category, "iscrowd": 0,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1) * (0.3 if k % 2 else 1)})
    anns.append({"id": len(anns) + 1, "image_id": 5, "category_id": IDS[0], "iscrowd": 1, "bbox": [0, 0, 48, 20],
                 "area": 960})
    eval_file = write(root / "instances_eval.json", json.dumps({"images": images, "annotations": anns,
                                                                "categories": CATEGORIES}))
    out = tmp_path / "ev"
    assert main(["detect", "evaluate", str(best), "--dataset", f"coco:{train_file},{eval_file}", "--out", str(out),
                 "--score-thresh", "0.0001", "--format", "json"]) == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    results = json.loads((out / "detections.json").read_text())
    assert {r["image_id"] for r in results} == {1001, 5, 42} and {r["category_id"] for r in results} <= set(IDS)
    stats = pycocotools_stats(eval_file, results)
    assert 0.05 < stats[0] < 0.95  # neither trivial end
    ours = [summary[k] for k in ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100")]
    np.testing.assert_allclose(ours, stats[[0, 1, 2, 3, 4, 5, 8]], atol=1e-4)


# ---------------------------------------------------------------------------------------------- 3. crowd regions

def test_detections_on_crowd_regions_are_ignored_as_pycocotools_does(tmp_path):
    """Perfect detections of the ordinary boxes, and higher-scoring ones inside the crowd regions: pycocotools
    scores AP 1 (a detection on a crowd region counts neither way), and so must the dataset + evaluator."""
    images = [{"id": 8, "file_name": "a.png", "width": 80, "height": 60},
              {"id": 2, "file_name": "b.png", "width": 80, "height": 60}]
    for im in images:
        save_image(tmp_path / im["file_name"], 60, 80)
    anns = [{"id": 1, "image_id": 8, "category_id": 1, "bbox": [2, 2, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 2, "image_id": 8, "category_id": 1, "bbox": [30, 10, 48, 40], "area": 1500, "iscrowd": 1},
            {"id": 3, "image_id": 2, "category_id": 4, "bbox": [40, 30, 30, 25], "area": 750, "iscrowd": 0},
            {"id": 4, "image_id": 2, "category_id": 4, "bbox": [0, 0, 30, 60], "area": 1800, "iscrowd": 1}]
    path = write(tmp_path / "crowd.json", json.dumps({"images": images, "annotations": anns, "categories": [
        {"id": 1, "name": "person"}, {"id": 4, "name": "kite"}]}))
    in_crowd = {8: [[32, 12, 18, 18], [55, 20, 20, 28]], 2: [[2, 5, 18, 25], [5, 30, 23, 28]]}  # x, y, w, h
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.5}
               for a in anns if not a["iscrowd"]]
    results += [{"image_id": i, "category_id": 1 if i == 8 else 4, "bbox": box, "score": 0.9 - 0.1 * k}
                for i, boxes in in_crowd.items() for k, box in enumerate(boxes)]
    stats = pycocotools_stats(path, results)
    assert stats[0] == pytest.approx(1.0)
    data = read_coco(path)
    label = {c: i for i, c in enumerate(data.category_ids)}
    predictions = []
    for target in data.targets:
        rows = [r for r in results if r["image_id"] == int(target["image_id"])]
        predictions.append({"boxes": torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in rows)],
                                                  dtype=torch.float32),
                            "labels": torch.tensor([label[r["category_id"]] for r in rows]),
                            "scores": torch.tensor([r["score"] for r in rows])})
    evaluator = DetectionEvaluator(data.classes)
    evaluator.update(predictions, data.targets)
    ours = evaluator.compute()
    np.testing.assert_allclose([ours.summary[k] for k in ("map", "map_50", "map_75", "mar_100")],
                               stats[[0, 1, 2, 8]], atol=1e-6)
    assert ours.crowd_regions == 2 and "crowd regions (iscrowd): 2, ignored" in ours.notes()[0]


def test_crowd_regions_stay_out_of_training_targets_and_anchors(tmp_path):
    save_image(tmp_path / "a.png", 64, 64)
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [30, 10, 30, 40], "area": 1200, "iscrowd": 1}]
    path = write(tmp_path / "one.json", json.dumps({"images": [{"id": 1, "file_name": "a.png", "width": 64,
                                                                 "height": 64}], "annotations": anns,
                                                     "categories": [{"id": 1, "name": "person"}]}))
    data = read_coco(path)
    assert data.targets[0]["iscrowd"].tolist() == [False, True]
    _, targets = next(iter(TrainBatches(data, 1, 64, torch.device("cpu"), seed=0, epoch=0)))
    assert torch.equal(targets[0]["boxes"], torch.tensor([[2.0, 2, 22, 22]]))
    assert dataset_box_shapes(data, 64).tolist() == [[20.0, 20.0]]


# ---------------------------------------------------------------------------------------------- 4. VOC difficult

VOC_XML = """<annotation><filename>{id}.jpg</filename><size><width>60</width><height>40</height></size>
<object><name>dog</name><difficult>0</difficult>
<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>20</xmax><ymax>30</ymax></bndbox></object>
<object><name>cat</name><difficult>1</difficult>
<bndbox><xmin>31</xmin><ymin>11</ymin><xmax>50</xmax><ymax>40</ymax></bndbox></object>
</annotation>"""


def voc_dataset(root: Path) -> Path:
    for split in ("train", "val"):
        write(root / "ImageSets" / "Main" / f"{split}.txt", "000001\n")
    save_image(root / "JPEGImages" / "000001.jpg", 40, 60)
    write(root / "Annotations" / "000001.xml", VOC_XML.format(id="000001"))
    return root


def test_voc_difficult_objects_are_ignored_unless_counted(tmp_path):
    """dog detected exactly; cat (difficult) detected exactly at 0.8 after a false cat at 0.95.
    Ignored (VOC's protocol): only dog counts, mAP 1. Counted: cat's AP is 0.5 (precision 1/2 at
    every recall), mAP (1 + 0.5) / 2."""
    data = load_detection_dataset(f"voc:{voc_dataset(tmp_path / 'VOC')}", split="val")
    dog, cat = data.classes.index("dog"), data.classes.index("cat")
    prediction = {"boxes": torch.tensor([[0.0, 0, 20, 30], [30, 10, 50, 40], [0, 30, 10, 40]]),
                  "labels": torch.tensor([dog, cat, cat]), "scores": torch.tensor([0.9, 0.8, 0.95])}
    figures = {}
    for counted in (False, True):
        evaluator = DetectionEvaluator(data.classes, count_difficult=counted)
        evaluator.update([prediction], data.targets)
        figures[counted] = evaluator.compute()
    assert figures[False].summary["map"] == pytest.approx(1.0)
    assert figures[True].summary["map"] == pytest.approx(0.75)
    assert figures[True].per_class_ap["cat"] == pytest.approx(0.5)
    assert "difficult objects: 1, ignored" in figures[False].notes()[0]
    assert "difficult objects: 1, counted" in figures[True].notes()[0]


def test_detect_evaluate_says_what_it_did_with_difficult_objects(tmp_path, capsys):
    import backbonekit as bk
    from backbonekit.checkpoint import atomic_save
    from backbonekit.detection.training.config import DetectConfig
    from backbonekit.detection.training.trainer import checkpoint_dict

    root = voc_dataset(tmp_path / "VOC")
    model = bk.create_model("yolov3", num_classes=20, backbone="resnet18", neck_channels=(32, 16, 8), input_size=64)
    cfg = DetectConfig(dataset=f"voc:{root}", backbone="resnet18", input_size=64, neck_width=0.25, anchors="coco")
    classes = load_detection_dataset(cfg.dataset, split="val").classes
    atomic_save(checkpoint_dict(model.eval(), cfg, classes, model.model_kwargs, epoch=1, history=[], best_map=0.0),
                tmp_path / "best.pt")
    for flags, said in (([], "difficult objects: 1, ignored as in VOC's protocol"),
                        (["--count-difficult"], "difficult objects: 1, counted as ordinary objects")):
        out = tmp_path / f"ev{len(flags)}"
        assert main(["detect", "evaluate", str(tmp_path / "best.pt"), "--out", str(out), *flags]) == 0
        assert said in capsys.readouterr().out
        assert said in (out / "per_class_ap.txt").read_text()
        assert any(said in note for note in json.loads((out / "eval.json").read_text())["notes"])
    from backbonekit.cli import build_parser

    args = build_parser().parse_args(["detect", "train", "--count-difficult"])
    assert args.count_difficult is True


def test_a_run_saved_before_count_difficult_existed_resumes_counting_them(tmp_path):
    from backbonekit.detection.training.config import DETECT_RESUME_RULES, DetectConfig, legacy_values
    from backbonekit.engine.runs import resumed_config

    for model in ("yolov3", "fasterrcnn"):
        saved = {k: v for k, v in DetectConfig(model=model, epochs=4).to_dict().items() if k != "count_difficult"}
        resumed = resumed_config(saved, DetectConfig(model=model), set(), tmp_path, tmp_path / "last.pt", 2,
                                 DETECT_RESUME_RULES, legacy_values(saved))
        assert resumed.count_difficult is True and DetectConfig().count_difficult is False


# ---------------------------------------------------------------------------------------------- 5. duplicate ids

def test_duplicate_coco_image_ids_are_refused_naming_the_id_and_both_files(tmp_path):
    images = [{"id": 4, "file_name": "first.png", "width": 20, "height": 16},
              {"id": 9, "file_name": "other.png", "width": 20, "height": 16},
              {"id": 4, "file_name": "second.png", "width": 20, "height": 16}]
    for im in images:
        save_image(tmp_path / im["file_name"])
    path = write(tmp_path / "dup.json", json.dumps({"images": images, "annotations": [], "categories": [
        {"id": 1, "name": "a"}]}))
    with pytest.raises(ValueError) as info:
        read_coco(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert "image id 4 is used twice, by 'first.png' and 'second.png'" in message

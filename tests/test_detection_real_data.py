"""Datasets as other tools write them: YOLO data.yaml (ultralytics, Roboflow), COCO ids end to end,
crowd regions, VOC difficult objects, duplicate COCO image ids.

Every file here is written by hand. Images are a few pixels of noise.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backbonekit.detection.data import load_detection_dataset, read_coco, read_yolo


def save_image(path: Path, h: int = 16, w: int = 20, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


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

"""Detection datasets: readers checked on files written by hand here, bad labels, and photodigits."""

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from backbonekit.detection.data import load_detection_dataset, read_coco, read_voc, read_yolo
from backbonekit.detection.data.photodigits import PhotoDigitsSpec, _digit_pool, generate_with_masks, photodigits, write_yolo_dataset

TINY = PhotoDigitsSpec(image_size=64, num_train=12, num_val=4, digit_height=(12, 30), seed=5)


def save_image(path, h, w, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


# ---------------------------------------------------------------------------------------------- YOLO

def yolo_folder(root, rows, names="[a, b, c]", sizes=((40, 80),)):
    """images/train/img{i}.png with (h, w) sizes[i], labels/train/img{i}.txt with rows[i] (None: no file)."""
    for i, text in enumerate(rows):
        h, w = sizes[i % len(sizes)]
        save_image(root / "images" / "train" / f"img{i}.png", h, w, seed=i)
        if text is not None:
            (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
            (root / "labels" / "train" / f"img{i}.txt").write_text(text)
    if names is not None:
        (root / "data.yaml").write_text(f"names: {names}\n")
    return root


def test_yolo_reader_converts_rows_to_pixel_boxes(tmp_path):
    root = yolo_folder(tmp_path / "ds", ["0 0.5 0.5 0.5 0.5\n2 0.25 0.75 0.1 0.2\n", "", "1 0.5 0.5 1 1\n\n"],
                       names="{0: a, 1: b, 2: c}")
    ds = read_yolo(root, "train")
    assert ds.classes == ["a", "b", "c"] and len(ds) == 3
    # image 0 is 80 wide, 40 tall: (cx, cy, w, h) = (.5, .5, .5, .5) -> x 20..60, y 10..30
    assert torch.allclose(ds.targets[0]["boxes"], torch.tensor([[20.0, 10, 60, 30], [16, 26, 24, 34]]))
    assert ds.targets[0]["labels"].tolist() == [0, 2] and ds.targets[0]["labels"].dtype == torch.int64
    assert ds.targets[1]["boxes"].shape == (0, 4)  # an empty file: a valid negative
    assert torch.allclose(ds.targets[2]["boxes"], torch.tensor([[0.0, 0, 80, 40]]))
    image, target = ds[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 40, 80)
    assert torch.equal(image.permute(1, 2, 0), torch.from_numpy(np.array(Image.open(root / "images/train/img0.png"))))
    assert tuple(ds.sizes[0].tolist()) == (40, 80)


@pytest.mark.parametrize("line, reason", [
    ("3 0.5 0.5 0.2 0.2", "class id 3 is outside the known classes 0..2"),
    ("-1 0.5 0.5 0.2 0.2", "outside the known classes"),
    ("1.5 0.5 0.5 0.2 0.2", "outside the known classes"),
    ("0 1.5 0.5 0.2 0.2", "normalised to [0, 1]"),
    ("0 0.5 0.5 0 0.2", "width and height must be > 0"),
    ("0 0.5 0.5 0.2", "expected 5 numbers"),
    ("0 a b c d", "expected numbers"),
    ("0 0.9 0.5 0.6 0.2", "past the image edge"),
])
def test_yolo_bad_label_gives_one_line_with_file_and_line(tmp_path, line, reason):
    root = yolo_folder(tmp_path / "ds", ["0 0.5 0.5 0.2 0.2\n", f"1 0.5 0.5 0.2 0.2\n{line}\n"])
    with pytest.raises(ValueError) as info:
        load_detection_dataset(f"yolo:{root}", split="train")
    message = str(info.value)
    assert "\n" not in message and reason in message
    assert f"{root / 'labels' / 'train' / 'img1.txt'}:2:" in message and "skip_bad_labels" in message
    with pytest.warns(UserWarning, match="skipped 1 bad label rows"):
        ds = load_detection_dataset(f"yolo:{root}", split="train", skip_bad_labels=True)
    assert ds.skipped_labels == 1 and [len(t["boxes"]) for t in ds.targets] == [1, 1]


def test_yolo_missing_labels_one_warning_and_unreadable_image(tmp_path):
    root = yolo_folder(tmp_path / "ds", ["0 0.5 0.5 0.2 0.2\n", None, None])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = read_yolo(root, "train")
    assert len(caught) == 1 and "2 of 3 images have no label file" in str(caught[0].message)
    assert ds.missing_labels == 2 and [len(t["boxes"]) for t in ds.targets] == [1, 0, 0]
    (root / "images" / "train" / "broken.jpg").write_bytes(b"not an image at all")
    with pytest.raises(OSError) as info:
        read_yolo(root, "train")
    assert "broken.jpg" in str(info.value) and "\n" not in str(info.value)


def test_yolo_layout_and_names_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="images/val/"):
        read_yolo(yolo_folder(tmp_path / "a", ["0 0.5 0.5 0.2 0.2\n"]), "val")
    root = yolo_folder(tmp_path / "b", ["4 0.5 0.5 0.2 0.2\n"], names=None)
    with pytest.warns(UserWarning, match="5 numbered classes"):
        assert read_yolo(root, "train").classes == ["0", "1", "2", "3", "4"]
    (root / "data.yaml").write_text("names: {0: a, 2: c}\n")
    with pytest.raises(ValueError, match="keys must be the class indices"):
        read_yolo(root, "train")
    with pytest.raises(ValueError, match="expected a dataset as one of"):
        load_detection_dataset("pascal:/x")


# ---------------------------------------------------------------------------------------------- COCO

def coco_files(tmp_path, annotations, extra_images=0):
    images = [{"id": 10, "file_name": "a.png", "width": 60, "height": 50},
              {"id": 11, "file_name": "b.png", "width": 40, "height": 30}]
    images += [{"id": 20 + i, "file_name": f"n{i}.png", "width": 16, "height": 16} for i in range(extra_images)]
    for im in images:
        save_image(tmp_path / "imgs" / im["file_name"], im["height"], im["width"])
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": 7, "name": "cat"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]}
    path = tmp_path / "instances_train.json"
    path.write_text(json.dumps(data))
    return path


ANNOTATIONS = [
    {"id": 1, "image_id": 10, "category_id": 7, "bbox": [5, 6, 20, 10], "iscrowd": 0, "area": 200},
    {"id": 2, "image_id": 10, "category_id": 1, "bbox": [0, 0, 60, 50], "iscrowd": 0, "area": 3000},
    {"id": 3, "image_id": 10, "category_id": 3, "bbox": [1, 1, 5, 5], "iscrowd": 1, "area": 25},
    {"id": 4, "image_id": 11, "category_id": 3, "bbox": [10.5, 2.25, 4, 8], "iscrowd": 0, "area": 32},
]


def test_coco_reader_maps_categories_flags_crowd_converts_xywh(tmp_path):
    path = coco_files(tmp_path, ANNOTATIONS)
    ds = read_coco(path, tmp_path / "imgs")
    assert ds.classes == ["person", "car", "cat"] and ds.category_ids == [1, 3, 7]  # sorted by category id
    assert torch.allclose(ds.targets[0]["boxes"], torch.tensor([[5.0, 6, 25, 16], [0, 0, 60, 50], [1, 1, 6, 6]]))
    assert ds.targets[0]["labels"].tolist() == [2, 0, 1]
    assert ds.targets[0]["iscrowd"].tolist() == [False, False, True]  # kept as an ignore region
    assert ds.targets[0]["area"].tolist() == [200, 3000, 25]  # the file's areas
    assert torch.allclose(ds.targets[1]["boxes"], torch.tensor([[10.5, 2.25, 14.5, 10.25]]))
    assert ds.targets[1]["labels"].tolist() == [1] and int(ds.targets[1]["image_id"]) == 11
    assert ds[1][0].shape == (3, 30, 40)


@pytest.mark.parametrize("bad, reason", [
    ({"category_id": 99}, "category_id 99 is not in 'categories'"),
    ({"bbox": [5, 5, 0, 4]}, "width and height must be > 0"),
    ({"bbox": [50, 5, 30, 4]}, "outside the 60 x 50 image"),
    ({"bbox": [1, 2]}, "expected bbox"),
])
def test_coco_bad_annotation_one_line(tmp_path, bad, reason):
    anns = ANNOTATIONS + [{"id": 77, "image_id": 10, "category_id": 7, "bbox": [1, 1, 2, 2], "iscrowd": 0} | bad]
    path = coco_files(tmp_path, anns)
    with pytest.raises(ValueError) as info:
        read_coco(path, tmp_path / "imgs")
    assert reason in str(info.value) and "annotation id 77" in str(info.value) and str(path) in str(info.value)
    with pytest.warns(UserWarning, match="skipped 1"):
        assert len(read_coco(path, tmp_path / "imgs", skip_bad_labels=True).targets[0]["boxes"]) == 3  # 2 + a crowd


def test_coco_splits_and_image_folder(tmp_path):
    path = coco_files(tmp_path, ANNOTATIONS, extra_images=8)
    spec = f"coco:{path}"
    train = load_detection_dataset(spec, tmp_path / "imgs", "train")
    val = load_detection_dataset(spec, tmp_path / "imgs", "val")
    ids = lambda d: {int(t["image_id"]) for t in d.targets}
    assert len(val) == 2 and len(train) == 8 and not ids(train) & ids(val)
    assert ids(train) | ids(val) == ids(load_detection_dataset(spec, tmp_path / "imgs", "all"))
    two = load_detection_dataset(f"coco:{path},{path}", tmp_path / "imgs", "val")
    assert len(two) == 10
    with pytest.raises(FileNotFoundError, match="pass the image folder"):
        read_coco(path, tmp_path / "nowhere")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot parse"):
        read_coco(tmp_path / "bad.json", tmp_path / "imgs")


# ---------------------------------------------------------------------------------------------- VOC

VOC_XML = """<annotation>
  <filename>{id}.jpg</filename>
  <size><width>50</width><height>40</height><depth>3</depth></size>
  <object>
    <name>dog</name>
    <difficult>0</difficult>
    <bndbox><xmin>1</xmin><ymin>1</ymin><xmax>10</xmax><ymax>20</ymax></bndbox>
  </object>
  <object>
    <name>{name}</name>
    <difficult>1</difficult>
    <bndbox><xmin>{xmin}</xmin><ymin>5</ymin><xmax>30</xmax><ymax>40</ymax></bndbox>
  </object>
</annotation>
"""


def voc_folder(root, name="cat", xmin=21):
    for split, ids in {"train": ["000001", "000002"], "val": ["000003"]}.items():
        (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for i in ids:
            save_image(root / "JPEGImages" / f"{i}.jpg", 40, 50)
            (root / "Annotations").mkdir(exist_ok=True)
            (root / "Annotations" / f"{i}.xml").write_text(VOC_XML.format(id=i, name=name, xmin=xmin))
    return root


def test_voc_reader_one_based_boxes_and_difficult(tmp_path):
    ds = load_detection_dataset(f"voc:{voc_folder(tmp_path / 'VOC')}", split="train")
    assert ds.classes[:3] == ["aeroplane", "bicycle", "bird"] and len(ds.classes) == 20 and len(ds) == 2
    t = ds.targets[0]
    # 1-based inclusive pixels: xmin=1..xmax=10 covers x in [0, 10]
    assert torch.allclose(t["boxes"], torch.tensor([[0.0, 0, 10, 20], [20, 4, 30, 40]]))
    assert t["labels"].tolist() == [ds.classes.index("dog"), ds.classes.index("cat")]
    assert t["difficult"].tolist() == [False, True]
    assert ds[0][0].shape == (3, 40, 50)
    other = read_voc(voc_folder(tmp_path / "V2", name="unicorn"), "val")
    assert other.classes == ["dog", "unicorn"]


def test_voc_bad_box_names_file_and_line(tmp_path):
    root = voc_folder(tmp_path / "VOC", xmin=35)
    with pytest.raises(ValueError) as info:
        read_voc(root, "train")
    assert f"{root / 'Annotations' / '000001.xml'}:9: box has a non-positive size" in str(info.value)
    with pytest.raises(ValueError, match=r"000001.xml:4: class 'dog' is not one of the 1 known"):
        read_voc(voc_folder(tmp_path / "V2"), "train", classes=["cat"])
    (root / "Annotations" / "000001.xml").write_text("<annotation><object></annotation>")
    with pytest.raises(ValueError, match=r"000001.xml:1: malformed XML"):
        read_voc(root, "train", skip_bad_labels=True)


# ---------------------------------------------------------------------------------------------- photodigits

def test_photodigits_default_sizes():
    train, val = photodigits("train"), photodigits("val")
    assert (len(train), len(val)) == (1000, 200) and train.classes == [str(d) for d in range(10)]
    assert train.images.shape == (1000, 3, 128, 128) and train.images.dtype == torch.uint8
    counts = torch.tensor([len(t["boxes"]) for t in train.targets])
    assert 1 <= counts.min() and counts.max() <= 4
    boxes = torch.cat([t["boxes"] for t in train.targets])
    heights = boxes[:, 3] - boxes[:, 1]
    assert heights.min() >= 16 and heights.max() <= 48
    assert boxes.min() >= 0 and boxes.max() <= 128
    assert set(torch.cat([t["labels"] for t in train.targets]).tolist()) == set(range(10))
    assert not set(_digit_pool("train")) & set(_digit_pool("val"))  # val handwriting is unseen


def test_photodigits_val_handwriting_is_the_digits_test_split():
    # a backbone trained with `backbonekit train --dataset digits` must never have seen val scans
    from sklearn.datasets import load_digits

    from backbonekit.train.data import load_dataset

    def keys(images):
        return {bytes(a) for a in images.reshape(len(images), -1)}

    scans = (torch.from_numpy(load_digits().images) * (255 / 16)).round().to(torch.uint8).numpy()
    data = load_dataset("digits", image_size=8)
    classification_train = keys(data.train.images[:, 0].numpy())
    classification_test = keys(data.val.images[:, 0].numpy())
    val_scans, train_scans = keys(scans[_digit_pool("val")]), keys(scans[_digit_pool("train")])
    assert val_scans == classification_test and train_scans == classification_train
    assert not val_scans & classification_train


def test_photodigits_boxes_are_tight_and_digits_visible():
    images, targets, masks, backgrounds = generate_with_masks("train", TINY)
    assert sum(len(t["boxes"]) for t in targets) >= 12
    for image, target, mask, background in zip(images, targets, masks, backgrounds):
        for box, alpha in zip(target["boxes"], mask):
            rows, cols = (alpha > 0).any(1).nonzero()[:, 0], (alpha > 0).any(0).nonzero()[:, 0]
            assert box.tolist() == [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]
            stroke = alpha >= 1  # fully opaque stroke pixels differ clearly from the photo they cover
            assert (image.float() - background.float()).abs().mean(0)[stroke].mean() > 60
        outside = torch.ones(64, 64, dtype=torch.bool)
        for box in target["boxes"].int().tolist():
            outside[box[1]:box[3], box[0]:box[2]] = False
        assert torch.equal(image[:, outside], background[:, outside])  # nothing pasted outside the boxes
    again = generate_with_masks("train", PhotoDigitsSpec(**{**TINY.__dict__}))  # same spec, same data
    assert torch.equal(again[0], images)


def test_write_yolo_round_trip(tmp_path):
    from backbonekit.detection.data.datasets import InMemoryDetection
    from backbonekit.detection.data.photodigits import CLASSES

    splits = {}
    for split in ("train", "val"):
        images, targets, _, _ = generate_with_masks(split, TINY)
        splits[split] = InMemoryDetection(images, targets, CLASSES, name="tiny")
    out = write_yolo_dataset(splits, tmp_path / "pd")
    for split, original in splits.items():
        back = load_detection_dataset(f"yolo:{out}", split=split)
        assert back.classes == list(CLASSES) and len(back) == len(original)
        for i in range(len(original)):
            image, target = back[i]
            assert torch.equal(image, original.images[i])
            assert torch.allclose(target["boxes"], original.targets[i]["boxes"], rtol=1e-4, atol=1e-3)
            assert torch.equal(target["labels"], original.targets[i]["labels"])
    with pytest.raises(FileExistsError):
        write_yolo_dataset(splits, out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind

"""Which input normalisation each kind of pretrained file gives a detector, by one rule for both families
(``detection.weights.pretrained_normalisation``): what the file records, else none (Darknet's raw [0, 1])
for weights trained by Darknet, else ImageNet's.

Every file is built by hand here: Darknet files packed with ``struct`` (a header, then zeros: the rule
reads the header and size, never the values), torch.save'd state_dicts in torchvision's and timm's key
layouts, this package's checkpoint dicts and safetensors files, a classification run's and a detect run's
best.pt. Each case is pinned on both readers: YOLOv3's (``read_pretrained(path, "yolov3")``) and the FPN
detectors' (``read_pretrained(path, "fasterrcnn")``, and ``normalisation_of``, which ``detect train`` calls).
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch

from backbonekit.darknet_weights import darknet_float_counts
from backbonekit.darknet_yolov3 import yolov3_layers
from backbonekit.detection.weights import normalisation_of, read_pretrained
from backbonekit.models import create_model
from backbonekit.pretrained import IMAGENET_MEAN, IMAGENET_STD
from backbonekit.weights import backbonekit_darknet_to_timm, write_safetensors

IMAGENET = (list(IMAGENET_MEAN), list(IMAGENET_STD))
RAW = None  # Darknet's [0, 1] pixels, no normalisation
RUN = ([0.42, 0.51, 0.33], [0.21, 0.26, 0.19])  # what a run records


def _darknet_file(path: Path, num_floats: int) -> Path:
    """A version 0.2 Darknet file (20-byte header) of ``num_floats`` zeros, sparse on disk."""
    with open(path, "wb") as f:
        f.write(struct.pack("<3iq", 0, 2, 0, 0))
        f.truncate(20 + 4 * num_floats)
    return path


def _keys_of(name: str, **kwargs) -> dict[str, torch.Tensor]:
    """The state_dict keys of model ``name`` (the rule reads keys and metadata only)."""
    with torch.device("meta"):
        model = create_model(name, **kwargs)
    return _light(model.state_dict())


def _light(state) -> dict[str, torch.Tensor]:
    """``state`` with each tensor cut to its first dimension (what tells a detector's class count)."""
    return {k: torch.zeros(v.shape[:1]) for k, v in state.items()}


def _resnet18() -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in create_model("resnet18").state_dict().items()}


def _tiny_yolov3(**kwargs) -> torch.nn.Module:
    return create_model("yolov3", backbone="resnet18", num_classes=2, neck_channels=(64, 32, 16), **kwargs)


def _write(kind: str, path: Path) -> Path:
    if kind == "darknet yolov3.weights":
        return _darknet_file(path, sum(layer.num_floats for layer in yolov3_layers(20)))
    if kind == "darknet darknet53.conv.74":
        return _darknet_file(path, darknet_float_counts()[0])
    if kind == "torchvision resnet18 state_dict":
        torch.save(_resnet18(), path)
    elif kind == "timm darknet53 state_dict":
        torch.save(backbonekit_darknet_to_timm(_keys_of("darknet53")), path)
    elif kind == "torchvision fasterrcnn state_dict":
        from torchvision.models.detection import fasterrcnn_resnet50_fpn

        with torch.device("meta"):
            model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3)
        torch.save(_light(model.state_dict()), path)
    elif kind == "backbonekit resnet18 checkpoint":  # backbonekit convert's output
        torch.save({"format": "backbonekit", "model": "resnet18", "model_kwargs": {}, "state_dict": _resnet18()}, path)
    elif kind == "backbonekit darknet53 checkpoint, Darknet's slope":
        torch.save({"format": "backbonekit", "model": "darknet53", "model_kwargs": {"act_slope": 0.1},
                    "state_dict": _keys_of("darknet53")}, path)
    elif kind == "backbonekit darknet53 checkpoint, timm's slope":
        torch.save({"format": "backbonekit", "model": "darknet53", "model_kwargs": {"act_slope": 0.01},
                    "state_dict": _keys_of("darknet53")}, path)
    elif kind == "backbonekit resnet18 safetensors":
        write_safetensors(_resnet18(), path, "resnet18", {})
    elif kind == "backbonekit darknet53 safetensors, Darknet's slope":
        write_safetensors(_keys_of("darknet53"), path, "darknet53", {"act_slope": 0.1})
    elif kind == "backbonekit yolov3 safetensors":
        model = _tiny_yolov3()
        write_safetensors(model.state_dict(), path, "yolov3", model.model_kwargs)
    elif kind == "backbonekit yolov3 safetensors, recorded normalisation":
        model = _tiny_yolov3(image_mean=RUN[0], image_std=RUN[1])
        write_safetensors(model.state_dict(), path, "yolov3", model.model_kwargs)
    elif kind == "classification run best.pt":  # backbonekit train's: the run's preprocessing
        torch.save({"format": "backbonekit", "model": "resnet18", "model_kwargs": {}, "state_dict": _resnet18(),
                    "preprocessing": {"mean": RUN[0], "std": RUN[1], "image_size": 64}, "config": {}}, path)
    elif kind == "detect run best.pt, fasterrcnn":  # detect train's: image_mean/image_std in model_kwargs
        torch.save({"format": "backbonekit", "task": "detection", "model": "fasterrcnn", "num_classes": 3,
                    "model_kwargs": {"backbone": "resnet18", "image_mean": RUN[0], "image_std": RUN[1]},
                    "state_dict": {"backbone.body.conv1.weight": torch.zeros(1),
                                   "roi_heads.box_predictor.cls_score.weight": torch.zeros(4, 1),
                                   "roi_heads.box_predictor.bbox_pred.weight": torch.zeros(16, 1)}}, path)
    elif kind == "detect run best.pt, yolov3 on Darknet's input":
        model = _tiny_yolov3()
        torch.save({"format": "backbonekit", "task": "detection", "model": "yolov3", "num_classes": 2,
                    "model_kwargs": model.model_kwargs, "state_dict": model.state_dict()}, path)
    else:
        raise AssertionError(kind)
    return path


# file kind -> the normalisation it gives, and whether it is a whole detector of YOLOv3 / of Faster R-CNN
CASES = {
    "darknet yolov3.weights": (RAW, "yolov3"),  # Darknet trains on raw [0, 1] pixels
    "darknet darknet53.conv.74": (RAW, None),
    "torchvision resnet18 state_dict": (IMAGENET, None),  # torchvision's ImageNet weights
    "timm darknet53 state_dict": (IMAGENET, None),  # timm trains on ImageNet-normalised input
    "torchvision fasterrcnn state_dict": (IMAGENET, "fasterrcnn"),  # torchvision's COCO detectors: the same
    # this package's converted files record no normalisation (backbonekit train's always do): the origin decides
    "backbonekit resnet18 checkpoint": (IMAGENET, None),  # ResNet weights come from torchvision
    "backbonekit darknet53 checkpoint, Darknet's slope": (RAW, None),  # converted from Darknet's own file
    "backbonekit darknet53 checkpoint, timm's slope": (IMAGENET, None),  # converted from timm's
    "backbonekit resnet18 safetensors": (IMAGENET, None),
    "backbonekit darknet53 safetensors, Darknet's slope": (RAW, None),
    "backbonekit yolov3 safetensors": (RAW, "yolov3"),  # YOLOv3's default input is Darknet's
    "backbonekit yolov3 safetensors, recorded normalisation": (RUN, "yolov3"),
    "classification run best.pt": (RUN, None),
    "detect run best.pt, fasterrcnn": (RUN, "fasterrcnn"),
    "detect run best.pt, yolov3 on Darknet's input": (RAW, "yolov3"),
}


def _approx(norm):
    return norm if norm is None else (pytest.approx(norm[0]), pytest.approx(norm[1]))


@pytest.mark.parametrize("kind", list(CASES))
def test_each_file_kind_gives_one_normalisation_on_both_detector_paths(kind, tmp_path):
    expected, detector = CASES[kind]
    path = _write(kind, tmp_path / "weights.bin")
    assert normalisation_of(path) == _approx(expected)  # what detect train gives torchvision's detectors
    for family in ("yolov3", "fasterrcnn"):
        if detector not in (None, family):
            continue  # another family's detector: refused by this reader
        source = read_pretrained(path, family)
        assert source.normalisation == _approx(expected), family
        assert source.num_classes > 0 if detector else source.num_classes == 0


def test_yolov3_arguments_follow_the_rule(tmp_path):
    """YOLOv3 takes the rule's answer as ``image_mean``/``image_std``; none for raw input."""
    imagenet = read_pretrained(_write("backbonekit resnet18 safetensors", tmp_path / "r.safetensors"))
    assert imagenet.input_norm == {"image_mean": pytest.approx(IMAGENET[0]), "image_std": pytest.approx(IMAGENET[1])}
    raw = read_pretrained(_write("backbonekit darknet53 safetensors, Darknet's slope", tmp_path / "d.safetensors"))
    assert raw.input_norm == {} and raw.backbone == "darknet53"

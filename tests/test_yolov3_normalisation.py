"""YOLOv3's input normalisation: a backbone from a ``backbonekit train`` run sees the inputs it was trained on.

The reference is the classification path itself: ``train.data.Normalizer`` with the run's mean/std
feeding the classifier. The detector built from that run's best.pt must hand its backbone the same
tensor (and so produce the same C5 map) from [0, 1] pixels, record the mean/std in its checkpoint,
keep them on resume, and refuse to lose them in a Darknet ``.weights`` file.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import backbonekit as bk
from backbonekit.checkpoint import atomic_save, load_file
from backbonekit.detection.training.config import DetectConfig
from backbonekit.detection.data.photodigits import PhotoDigitsSpec, photodigits, write_yolo_dataset
from backbonekit.detection.training.build import build_from_config
from backbonekit.detection.loading import load_run_checkpoint
from backbonekit.detection.training.trainer import train
from backbonekit.detection.weights import save_detector
from backbonekit.train.config import TrainConfig
from backbonekit.train.data import Normalizer
from backbonekit.train.trainer import checkpoint_dict
from helpers import TINY_DETECT, randomized

MEAN, STD = (0.42, 0.51, 0.33), (0.21, 0.26, 0.19)
TINY = {**TINY_DETECT, "score_thresh": 0.01}


@pytest.fixture(scope="module")
def classification_run(tmp_path_factory):
    """A classification run's best.pt as ``backbonekit train`` writes it (resnet18, random weights and BN)."""
    model = randomized(bk.create_model("resnet18", num_classes=10), seed=5).eval()
    data = SimpleNamespace(num_classes=10, preprocessing=lambda: {
        "dataset": "digits", "classes": [str(i) for i in range(10)], "image_size": 64,
        "mean": list(MEAN), "std": list(STD)})
    path = tmp_path_factory.mktemp("cls") / "best.pt"
    atomic_save(checkpoint_dict(model, TrainConfig(model="resnet18"), data, {}, epoch=1, history=[], best_acc=0.5),
                path)
    return model, path


def _c5(module, forward, x):
    seen = {}
    handle = module.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    with torch.no_grad():
        forward(x)
    handle.remove()
    return seen["out"]


def test_backbone_sees_the_normalised_input_of_its_classification_run(classification_run):
    classifier, path = classification_run
    detector, model_kwargs = build_from_config(DetectConfig(**TINY, pretrained=str(path)), 10, [[10, 13]] * 9,
                                            log=lambda _: None)
    detector.eval()
    assert model_kwargs["image_mean"] == pytest.approx(MEAN) and model_kwargs["image_std"] == pytest.approx(STD)
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    uint8 = (pixels * 255).round()
    reference = _c5(classifier.layer4, classifier, Normalizer(MEAN, STD, torch.device("cpu"))(uint8))
    seen = _c5(detector.backbone.layer4, detector.forward_raw, uint8 / 255)
    assert torch.allclose(seen, reference, atol=1e-4), (seen - reference).abs().max()
    # without the normalisation the backbone would see something else: the check can fail
    raw = _c5(classifier.layer4, classifier, uint8 / 255)
    assert not torch.allclose(raw, reference, atol=1e-2)


def test_normalisation_is_recorded_in_the_checkpoint_and_kept_on_resume(classification_run, tmp_path):
    _, path = classification_run
    spec = PhotoDigitsSpec(image_size=64, num_train=4, num_val=2, digits_per_image=(1, 1), digit_height=(20, 32))
    root = tmp_path / "data"
    write_yolo_dataset({"train": photodigits("train", spec), "val": photodigits("val", spec)}, root)
    out = tmp_path / "run"
    cfg = DetectConfig(**TINY, dataset=f"yolo:{root}", epochs=1, out=str(out), pretrained=str(path))
    train(cfg, log=lambda _: None)
    model, ckpt = load_run_checkpoint(out / "best.pt")
    assert ckpt["model_kwargs"]["image_mean"] == pytest.approx(MEAN)
    assert model.image_std.flatten().tolist() == pytest.approx(STD)
    train(DetectConfig(**TINY, dataset=f"yolo:{root}", epochs=2, resume=str(out)), log=lambda _: None,
          given={"epochs", "resume"})
    resumed = load_file(out / "last.pt")
    assert resumed["epoch"] == 2 and resumed["model_kwargs"]["image_std"] == pytest.approx(STD)


def test_default_is_darknets_raw_input_and_bad_values_give_one_line():
    model = bk.create_model("yolov3", backbone="resnet18", num_classes=2, input_size=64)
    assert model.image_mean is None and "image_mean" not in model.model_kwargs
    with pytest.raises(ValueError, match="image_mean and image_std must both be 3 numbers") as err:
        bk.create_model("yolov3", backbone="resnet18", num_classes=2, image_mean=[0.5, 0.5, 0.5])
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="image_std must be positive"):
        bk.create_model("yolov3", backbone="resnet18", num_classes=2, image_mean=MEAN, image_std=(0.2, 0, 0.2))


def test_writing_a_normalised_detector_to_darknet_weights_is_refused(tmp_path):
    with torch.device("meta"):
        model = bk.create_model("yolov3", num_classes=2, image_mean=MEAN, image_std=STD)
    assert model.model_kwargs["image_mean"] == list(MEAN)
    with pytest.raises(ValueError, match="Darknet weights format has no input normalisation") as err:
        save_detector(model, tmp_path / "yolov3.weights")
    assert "\n" not in str(err.value) and not (tmp_path / "yolov3.weights").exists()


def test_torchvision_imagenet_weights_get_imagenet_normalisation(tmp_path):
    # a bare torchvision state_dict records no normalisation: it was trained on ImageNet-normalised input,
    # so the detector's backbone must see what torchvision's own model sees after its Normalize transform
    from torchvision.models import resnet18
    from torchvision.transforms import Normalize

    reference = randomized(resnet18(), seed=3).eval()
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(reference.state_dict(), path)
    detector, model_kwargs = build_from_config(DetectConfig(**TINY, pretrained=str(path)), 10, [[10, 13]] * 9,
                                            log=lambda _: None)
    detector.eval()
    imagenet = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    # one flat list per approx(): pytest 9.2 refuses nested structures
    assert model_kwargs["image_mean"] == pytest.approx(imagenet[0])
    assert model_kwargs["image_std"] == pytest.approx(imagenet[1])
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    expected = _c5(reference.layer4, reference, Normalize(*imagenet)(pixels))
    seen = _c5(detector.backbone.layer4, detector.forward_raw, pixels)
    assert torch.allclose(seen, expected, atol=1e-4), (seen - expected).abs().max()
    # the same weights converted to this package's checkpoint (recording no normalisation) keep ImageNet's
    own = tmp_path / "own.pt"
    atomic_save({"format": "backbonekit", "model": "resnet18", "state_dict": reference.state_dict()}, own)
    _, own_kwargs = build_from_config(DetectConfig(**TINY, pretrained=str(own)), 10, [[10, 13]] * 9, log=lambda _: None)
    assert own_kwargs["image_mean"] == pytest.approx(imagenet[0])

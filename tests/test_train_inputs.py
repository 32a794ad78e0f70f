"""Training inputs and reports: range checks, config files, image folders with bad files, top-k only where it
means something, a report whose cost does not grow with the split, and a run that must actually learn.

Optional packages are skipped per test (``pytest.importorskip`` inside the tests that need them), never for
the whole file.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from backbonekit.cli import main
from backbonekit.train import TrainConfig, resolve_config, train
from backbonekit.train.data import Batches, DataBundle, Normalizer, load_dataset
from backbonekit.train.engine import EvalResult, evaluate

CPU = torch.device("cpu")


def image_folder(root: Path, classes: dict[str, int], size: tuple[int, int] = (12, 10)) -> Path:
    """root/CLASS/i.png, each class a different solid colour (so a model can tell them apart)."""
    from PIL import Image

    for c, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", size, (80 * c % 256, 40 * i % 256, 255 - 60 * c % 256)).save(root / name / f"{i}.png")
    return root


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


# -- item 15: nonsense values are refused, NaN included -----------------------------------------

@pytest.mark.parametrize("values, message", [
    (dict(label_smoothing=math.nan), r"label_smoothing must be in \[0, 1\), found nan"),
    (dict(label_smoothing=1.0), r"label_smoothing must be in \[0, 1\), found 1.0"),
    (dict(grad_clip=math.nan), "grad_clip must be >= 0 and finite, found nan"),
    (dict(grad_clip=-1.0), "grad_clip must be >= 0 and finite, found -1.0"),
    (dict(weight_decay=math.nan), "weight_decay must be >= 0 and finite, found nan"),
    (dict(weight_decay=math.inf), "weight_decay must be >= 0 and finite, found inf"),
    (dict(momentum=5.0), r"momentum must be in \[0, 1\), found 5.0"),
    (dict(momentum=1.0), r"momentum must be in \[0, 1\), found 1.0"),
    (dict(momentum=math.nan), r"momentum must be in \[0, 1\), found nan"),
    (dict(lr=math.nan), "lr must be > 0 and finite, found nan"),
    (dict(lr=math.inf), "lr must be > 0 and finite, found inf"),
    (dict(warmup_epochs=math.nan), "warmup_epochs must be >= 0 and finite, found nan"),
    (dict(input_size=32, crop_padding=32), r"crop_padding must be in \[0, input_size\) = \[0, 32\), found 32"),
    (dict(crop_padding=-1), "crop_padding must be >= 0, found -1"),
])
def test_out_of_range_values_are_refused(values, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**values)


@pytest.mark.parametrize("flags, option", [(["--momentum", "5"], "momentum"), (["--grad-clip", "nan"], "grad_clip"),
                                           (["--label-smoothing", "nan"], "label_smoothing"),
                                           (["--weight-decay", "nan"], "weight_decay")])
def test_out_of_range_flags_are_one_line(tmp_path, capsys, flags, option):
    assert main(["train", "--dataset", "fake:8", "--out", str(tmp_path / "run"), *flags]) == 2
    err = one_error_line(capsys)
    assert f"{option} must be" in err and f"found {float(flags[1])}" in err
    assert not (tmp_path / "run").exists()


def test_sane_values_at_the_edges_are_accepted():
    cfg = TrainConfig(momentum=0.0, label_smoothing=0.0, grad_clip=0.0, weight_decay=0.0, input_size=32,
                      crop_padding=31)
    assert (cfg.momentum, cfg.crop_padding) == (0.0, 31)
    assert TrainConfig(momentum=0.99, label_smoothing=0.3).momentum == 0.99


@pytest.mark.parametrize("image_size, padding", [(None, 32), (16, 16), (32, 10_000)])
def test_crop_padding_not_smaller_than_the_image_is_refused_before_padding(image_size, padding):
    pytest.importorskip("sklearn")
    size = image_size or 32  # digits' default size
    with pytest.raises(ValueError, match=rf"crop_padding must be in \[0, input_size\) = \[0, {size}\), "
                                         rf"found {padding}"):
        load_dataset("digits", image_size=image_size, crop_padding=padding)


def test_imagefolder_default_size_checks_the_padding_too(tmp_path):
    pytest.importorskip("sklearn")
    root = image_folder(tmp_path / "imgs", {"a": 3, "b": 3})
    with pytest.raises(ValueError, match=r"\[0, 224\), found 300"):
        load_dataset(f"imagefolder:{root}", crop_padding=300)


def test_single_class_image_folder_is_refused(tmp_path, capsys):
    pytest.importorskip("sklearn")
    root = image_folder(tmp_path / "imgs", {"only": 6})
    with pytest.raises(ValueError, match=r"has 1 class \[only\]: classification needs at least 2"):
        load_dataset(f"imagefolder:{root}", image_size=16)
    assert main(["train", "--dataset", f"imagefolder:{root}", "--input-size", "16", "--workers", "0",
                 "--out", str(tmp_path / "run")]) == 2
    assert "needs at least 2" in one_error_line(capsys)


# -- item 16: numbers in config files ------------------------------------------------------------

def test_config_file_numbers_written_as_yaml_reads_them(tmp_path):
    pytest.importorskip("yaml")
    import yaml

    text = "lr: 1e-3\nweight_decay: 5E-4\nlabel_smoothing: '0.1'\nepochs: '3'\nmomentum: 9e-1\n"
    assert isinstance(yaml.safe_load(text)["lr"], str)  # the PyYAML behaviour this guards against
    (tmp_path / "c.yaml").write_text(text)
    cfg = resolve_config(tmp_path / "c.yaml")
    assert (cfg.lr, cfg.weight_decay, cfg.label_smoothing, cfg.epochs, cfg.momentum) == (1e-3, 5e-4, 0.1, 3, 0.9)
    assert type(cfg.lr) is float and type(cfg.epochs) is int
    (tmp_path / "c.json").write_text(json.dumps({"lr": "2e-2", "batch_size": "16"}))
    cfg = resolve_config(tmp_path / "c.json")
    assert (cfg.lr, cfg.batch_size) == (0.02, 16)


@pytest.mark.parametrize("text, message", [
    ("model: resnet18\nlr: fast\n", "config key 'lr' in {path}:2 expects float, found str 'fast'"),
    ("epochs: 2.5e0\n", "config key 'epochs' in {path}:1 expects int, found str '2.5e0'"),
    ("\n\nmomentum: '5'\n", r"momentum must be in \[0, 1\), found 5.0"),
    ("grad_clip: .nan\n", "grad_clip must be >= 0 and finite, found nan"),
])
def test_config_file_bad_numbers_name_the_file_and_line(tmp_path, capsys, text, message):
    pytest.importorskip("yaml")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message.format(path=path)):
        resolve_config(path)
    assert main(["train", "--config", str(path)]) == 2
    one_error_line(capsys)


# -- item 11: unreadable images ----------------------------------------------------------------

def test_unreadable_image_is_refused_when_the_folder_is_indexed(tmp_path, capsys):
    pytest.importorskip("sklearn")
    root = image_folder(tmp_path / "imgs", {"a": 4, "b": 4})
    (root / "b" / "bad.png").write_text("this is not an image")
    with pytest.raises(ValueError, match=r"1 of 9 files under .* are not readable images: \[b/bad.png\] "
                                         r"\(UnidentifiedImageError.*--skip-bad-data"):
        load_dataset(f"imagefolder:{root}", image_size=16)
    assert main(["train", "--dataset", f"imagefolder:{root}", "--input-size", "16", "--workers", "1",
                 "--epochs", "1", "--batch-size", "4", "--out", str(tmp_path / "run")]) == 2
    err = one_error_line(capsys)
    assert "b/bad.png" in err and "DataLoader" not in err


def test_many_unreadable_images_are_counted_and_the_first_few_named(tmp_path):
    pytest.importorskip("sklearn")
    root = image_folder(tmp_path / "imgs", {"a": 3, "b": 3})
    for i in range(5):
        (root / "a" / f"bad{i}.jpg").write_bytes(b"\x00" * (i + 1))
    with pytest.raises(ValueError, match=r"5 of 11 files .*: \[a/bad0.jpg, a/bad1.jpg, a/bad2.jpg, \.\.\.\]"):
        load_dataset(f"imagefolder:{root}")


def test_image_that_breaks_after_indexing_is_one_line_from_a_worker(tmp_path):
    pytest.importorskip("sklearn")
    root = image_folder(tmp_path / "imgs", {"a": 4, "b": 4})
    data = load_dataset(f"imagefolder:{root}", image_size=16)
    for path in (root / "a").iterdir():
        path.write_text("overwritten after the folder was checked")
    batches = Batches(data.train, 2, Normalizer(data.mean, data.std, CPU), CPU, seed=0, epoch=0, train=False,
                      workers=1)
    with pytest.raises(ValueError) as info:  # a BadImageError, re-raised by the DataLoader
        list(batches)
    message = str(info.value)
    assert re.match(r"cannot read image \S+/imgs/a/\d.png: UnidentifiedImageError", message), message
    assert len(message.splitlines()) == 1 and "Traceback" not in message and "worker" not in message


def test_skip_bad_images_trains_reports_the_count_and_top5_only_with_more_than_5_classes(tmp_path, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    root = image_folder(tmp_path / "imgs", {"a": 5, "b": 5, "c": 5})
    (root / "a" / "bad.png").write_text("not an image")
    (root / "c" / "empty.jpg").write_bytes(b"")
    out = tmp_path / "run"
    assert main(["train", "--model", "resnet18", "--dataset", f"imagefolder:{root}", "--input-size", "32",
                 "--epochs", "1", "--batch-size", "4", "--workers", "0", "--skip-bad-data",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipped 2 unreadable image file(s)" in printed and "a/bad.png" in printed
    assert "top5" not in printed  # 3 classes: every label is among the top 5
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "val_top1" in header and "val_top5" not in header
    assert "top5" not in json.loads((out / "eval.json").read_text())
    assert "top-5" not in (out / "report.html").read_text()
    assert main(["evaluate", str(out / "best.pt"), "--format", "json", "--out", str(tmp_path / "ev")]) == 2
    assert "--skip-bad-data" in one_error_line(capsys)  # evaluate still refuses the folder with bad files
    (root / "a" / "bad.png").unlink()
    (root / "c" / "empty.jpg").unlink()
    assert main(["evaluate", str(out / "best.pt"), "--format", "json", "--out", str(tmp_path / "ev")]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert "top1" in figures and "top5" not in figures


# -- item 10: top-k only with more than k classes ------------------------------------------------

@pytest.mark.parametrize("num_classes", [2, 5, 6, 10])
def test_top5_is_reported_only_with_more_than_5_classes(num_classes):
    torchmetrics = pytest.importorskip("torchmetrics")
    model = nn.Linear(7, num_classes)
    x, y = torch.randn(40, 7), torch.randint(0, num_classes, (40,))
    batches = [(x[i:i + 16], y[i:i + 16], torch.arange(i, min(i + 16, 40))) for i in range(0, 40, 16)]
    ev = evaluate(model, batches, nn.CrossEntropyLoss(), device=CPU, reduce=False)
    with torch.no_grad():
        logits = model(x)
    top1 = torchmetrics.functional.accuracy(logits, y, "multiclass", num_classes=num_classes, top_k=1, average="micro")
    assert ev.top1 == pytest.approx(float(top1))
    if num_classes <= 5:
        assert ev.top5 is None and "top5" not in ev.summary() and set(ev.accuracies()) == {"top1"}
    else:
        top5 = torchmetrics.functional.accuracy(logits, y, "multiclass", num_classes=num_classes, top_k=5,
                                                average="micro")
        assert ev.top5 == pytest.approx(float(top5)) and ev.top5 < 1
        assert set(ev.accuracies()) == {"top1", "top5"} and "top5" in ev.summary()


# -- item 7: the report decodes only the images it draws -------------------------------------------

class LazySplit(torch.utils.data.Dataset):
    """Ten million images made on demand: stacking them all would take 30 GB (3x32x32 bytes each)."""

    def __init__(self, n: int = 10_000_000) -> None:
        self.n, self.touched = n, []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if not 0 <= i < self.n:
            raise IndexError(i)
        self.touched.append(i)
        return torch.full((3, 32, 32), i % 251, dtype=torch.uint8), i % 10


def test_report_decodes_only_the_drawn_images(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    from backbonekit.train import report

    split = LazySplit()
    indices = torch.arange(0, split.n, 4_999)  # 2,001 evaluated images spread over the whole split
    targets = indices % 10
    preds = torch.where(indices % 7 == 0, (targets + 1) % 10, targets)  # one in seven wrong
    ev = EvalResult(0.5, float((preds == targets).float().mean()), None, len(indices), indices, targets, preds)
    data = DataBundle("lazy", [str(c) for c in range(10)], split, split, 32, (0.5,) * 3, (0.25,) * 3, 0, False)
    report.write_evaluation(tmp_path, ev, data, title="lazy")
    grid = report.GRID_COLUMNS * report.GRID_ROWS
    assert len(split.touched) == grid == len(set(split.touched))  # 32 images decoded, not 2,001 (or 10 million)
    touched = torch.tensor(split.touched)
    assert torch.isin(touched, indices).all()
    wrong = touched[touched % 7 == 0]
    assert len(wrong) == grid // 2  # half the grid shows mistakes, as before
    assert (tmp_path / "predictions.png").stat().st_size > 0
    assert json.loads((tmp_path / "eval.json").read_text())["count"] == len(indices)


# -- the pipeline learns -------------------------------------------------------------------------------

def test_training_learns_digits(tmp_path):
    """resnet18 at 32x32 on scikit-learn's digits through ``train``, 2 epochs (90 steps of 32 images).

    Measured (1 thread, seeds 0, 1, 2): 96.9%, 96.7%, 98.3% test accuracy in about 15 s on a quiet 2-core
    machine. The bar, 90%, leaves a margin for other machines and thread counts; chance is 10%, and a
    pipeline that does not learn (labels detached from images, an optimizer that does not step, a broken
    augmentation) stays far below it.
    """
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    result = train(TrainConfig(model="resnet18", dataset="digits", epochs=2, batch_size=32, lr=0.05, device="cpu",
                               workers=0, seed=0, out=str(tmp_path / "run")), log=lambda _: None)
    assert result.final.count == 360
    assert result.final.top1 >= 0.90, f"test accuracy {100 * result.final.top1:.2f}% after 2 epochs"
    assert result.final.top5 is not None and result.final.top5 >= result.final.top1
    assert result.history[-1]["train_loss"] < 0.5 * result.history[0]["train_loss"]

"""Training, evaluation and prediction on tiny data (resnet18 at 32x32 on a few dozen images)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from backbonekit import create_model
from backbonekit.checkpoint import load_file
from backbonekit.cli import main
from backbonekit.train import TrainConfig, evaluate_checkpoint, predict, resolve_config, train, trainer
from backbonekit.train.data import (Batches, Normalizer, Split, epoch_generator, epoch_indices, load_dataset,
                                    random_crop_flip)
from helpers import TINY_TRAIN, interrupt_after


def tiny_config(tmp_path: Path, name: str = "run", **overrides) -> TrainConfig:
    return TrainConfig(**{**TINY_TRAIN, "out": str(tmp_path / name), **overrides})


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[Path, trainer.TrainResult]:
    tmp = tmp_path_factory.mktemp("trained")
    result = train(tiny_config(tmp), log=lambda _: None)
    return tmp / "run", result


# -- config ---------------------------------------------------------------------------------------

def test_config_file_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: resnet34\nepochs: 7\nlr: 1\nhflip: false\n")
    cfg = resolve_config(path, {"epochs": 3})
    assert (cfg.model, cfg.epochs, cfg.lr, cfg.hflip, cfg.dataset) == ("resnet34", 3, 1.0, False, "digits")
    (tmp_path / "c.json").write_text(json.dumps({"batch_size": 12}))
    assert resolve_config(tmp_path / "c.json").batch_size == 12


@pytest.mark.parametrize("text, message", [("epoch: 3\n", "unknown keys"), ("epochs: three\n", "expects int"),
                                           ("optimizer: lamb\n", "optimizer must be one of"),
                                           ("- 1\n", "mapping")])
def test_config_file_errors(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        resolve_config(path)


# -- data -----------------------------------------------------------------------------------------

def crop_offsets(image: torch.Tensor, result: torch.Tensor, padding: int) -> set[tuple[int, int, bool]]:
    """(top, left, flipped) such that torchvision's pad -> crop (-> hflip) of ``image`` gives ``result``."""
    h, w = image.shape[-2:]
    padded = TF.pad(image, [padding] * 4, fill=0)
    found = set()
    for top in range(2 * padding + 1):
        for left in range(2 * padding + 1):
            crop = TF.crop(padded, top, left, h, w)
            found |= {(top, left, False)} if torch.equal(crop, result) else set()
            found |= {(top, left, True)} if torch.equal(TF.hflip(crop), result) else set()
    return found


@pytest.mark.parametrize("hflip", [False, True])
def test_random_crop_flip_matches_torchvision_pad_crop_flip(hflip):
    images = torch.randint(0, 256, (48, 3, 12, 10), dtype=torch.uint8)
    out = random_crop_flip(images, 2, hflip, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    seen = set()
    for img, res in zip(images, out):
        offsets = crop_offsets(img, res, 2)
        assert offsets, "every output must be a crop of the zero-padded image (or its mirror image)"
        seen |= offsets
    assert len({(t, l) for t, l, _ in seen}) > 10  # offsets vary from image to image
    assert any(f for *_, f in seen) == hflip and any(not f for *_, f in seen)


def test_in_memory_training_batches_are_augmented_normalised_and_cover_the_epoch():
    split = Split(torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8), torch.arange(20))
    normalize = Normalizer((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), torch.device("cpu"))
    batches = Batches(split, 8, normalize, torch.device("cpu"), seed=0, epoch=3, train=True, crop_padding=1,
                      hflip=True)
    seen = []
    for x, y, idx in batches:
        assert torch.equal(y, idx)
        restored = (x * 0.25 + 0.5) * 255  # undo TF.normalize, then compare with uint8 crops
        for img, res in zip(split.images[idx], restored.round().to(torch.uint8)):
            assert crop_offsets(img, res, 1)
        seen += idx.tolist()
    assert sorted(seen) == list(range(20)) and len(batches) == 3
    again = [x for x, _, _ in Batches(split, 8, normalize, torch.device("cpu"), seed=0, epoch=3, train=True,
                                      crop_padding=1, hflip=True)]
    assert all(torch.equal(a, b) for a, b in zip(again, [x for x, _, _ in batches]))


@pytest.mark.parametrize("n, world", [(10, 1), (10, 3), (17, 4)])
def test_epoch_shards(n, world):
    evals = [epoch_indices(n, shuffle=False, seed=0, epoch=0, rank=r, world=world, equal_shards=False)
             for r in range(world)]
    assert sorted(torch.cat(evals).tolist()) == list(range(n))  # the set exactly once
    trains = [epoch_indices(n, shuffle=True, seed=0, epoch=1, rank=r, world=world) for r in range(world)]
    assert len({len(t) for t in trains}) == 1 and len(set(torch.cat(trains).tolist())) == len(torch.cat(trains))
    assert len(torch.cat(trains)) == n - n % world  # only the tail that cannot be shared equally is dropped
    again = epoch_indices(n, shuffle=True, seed=0, epoch=1, rank=0, world=world)
    other = epoch_indices(n, shuffle=True, seed=0, epoch=2, rank=0, world=world)
    assert torch.equal(trains[0], again) and (n < 8 or not torch.equal(trains[0], other))


def test_generators_depend_on_seed_epoch_and_stream():
    draws = {(s, e, k): torch.randint(0, 10**9, (1,), generator=epoch_generator(s, e, k)).item()
             for s in (0, 1) for e in (0, 1) for k in (0, 1)}
    assert len(set(draws.values())) == len(draws)


def test_digits_split_is_stratified_and_upscaled():
    from sklearn.datasets import load_digits

    data = load_dataset("digits")
    target = load_digits().target
    assert len(data.train) + len(data.val) == len(target) == 1797
    assert data.train.images.shape[1:] == (3, 32, 32) and data.train.images.dtype == torch.uint8
    expected = np.bincount(target) * 0.2
    assert np.all(np.abs(np.bincount(data.val.labels.numpy()) - expected) <= 1)
    assert data.classes == [str(i) for i in range(10)] and (data.crop_padding, data.hflip) == (2, False)


def write_cifar10(root: Path, per_batch: int = 6) -> dict[str, np.ndarray]:
    """Small files in the real CIFAR-10 python format: protocol-2 pickled dicts (read with latin1 as torchvision
    does), uint8 rows of 3072 values (1024 R, 1024 G, 1024 B, row-major)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": labels, "data": data,
                         "filenames": [f"{i}.png" for i in range(per_batch)]}, f, protocol=2)
        written[name] = (data, labels)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": classes, "num_cases_per_batch": per_batch, "num_vis": 3072}, f, protocol=2)
    return written


@pytest.fixture
def skip_cifar_checksums(monkeypatch):
    """Test files cannot have the real archive's MD5s: skip only torchvision's integrity check."""
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)


def test_cifar10_reads_the_real_python_format(tmp_path, skip_cifar_checksums):
    written = write_cifar10(tmp_path)
    data = load_dataset("cifar10", tmp_path, download=False)
    train_rows = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    assert torch.equal(data.train.images, torch.from_numpy(train_rows.reshape(-1, 3, 32, 32)))
    assert data.val.labels.tolist() == written["test_batch"][1]
    assert data.classes[0] == "airplane" and (data.crop_padding, data.hflip) == (4, True)


def test_cifar10_missing_offline_names_the_files(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py/\{data_batch_1,.*test_batch,batches.meta\}"):
        load_dataset("cifar10", tmp_path, download=False)
    assert main(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--no-download",
                 "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cifar-10-python.tar.gz" in err


def test_train_on_cifar10_files_through_the_cli(tmp_path, skip_cifar_checksums):
    write_cifar10(tmp_path / "data", per_batch=4)
    out = tmp_path / "run"
    assert main(["train", "--model", "resnet18", "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"),
                 "--epochs", "1", "--batch-size", "10", "--no-download", "--out", str(out)]) == 0
    report = json.loads((out / "classification_report.json").read_text())
    assert report["macro avg"]["support"] == 4 and "airplane" in report


def test_image_folder_without_val_is_split_and_converted_to_rgb(tmp_path):
    from PIL import Image

    for c, mode in (("cat", "L"), ("dog", "RGBA")):
        (tmp_path / c).mkdir()
        for i in range(5):
            Image.new(mode, (20 + i, 15)).save(tmp_path / c / f"{i}.png")
    data = load_dataset(f"imagefolder:{tmp_path}", image_size=16)
    assert data.classes == ["cat", "dog"] and (len(data.train), len(data.val)) == (8, 2)
    assert sorted(data.val.targets) == [0, 1]
    image, _ = data.train[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.uint8


# -- training, checkpoints, resume ------------------------------------------------------------

def test_run_folder_holds_every_artifact(trained_run):
    out, result = trained_run
    expected = {"config.yaml", "metrics.csv", "last.pt", "best.pt", "curves.png", "confusion_matrix.png",
                "classification_report.txt", "classification_report.json", "predictions.png", "report.html"}
    assert expected <= {p.name for p in out.iterdir()}
    assert len(result.history) == 2 and len((out / "metrics.csv").read_text().splitlines()) == 3
    report = json.loads((out / "classification_report.json").read_text())
    assert report["accuracy"] == pytest.approx(result.final.top1)  # scikit-learn agrees with our top-1
    assert result.final.count == 8  # fake:32 -> 8 validation images, each once
    page = (out / "report.html").read_text()
    assert all(name in page for name in ("curves.png", "confusion_matrix.png", "predictions.png", "resnet18"))


def test_checkpoints_load_weights_only_and_into_create_model(trained_run):
    out, _ = trained_run
    best = load_file(out / "best.pt")  # weights_only=True inside
    last = load_file(out / "last.pt")
    assert best["format"] == "backbonekit" and "optimizer" in last and "optimizer" not in best
    model = create_model("resnet18", num_classes=10, pretrained=out / "best.pt").eval()
    reference = create_model("resnet18", num_classes=10).eval()
    reference.load_state_dict(best["state_dict"])
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x), reference(x))


def test_resume_after_interrupt_gives_the_same_run(tmp_path, trained_run):
    out_full, full = trained_run
    with interrupt_after(trainer, epochs=1), pytest.raises(KeyboardInterrupt):
        train(tiny_config(tmp_path), log=lambda _: None)
    assert load_file(tmp_path / "run" / "last.pt")["epoch"] == 1
    resumed = train(TrainConfig(resume=str(tmp_path / "run")), log=lambda _: None)
    a, b = load_file(out_full / "last.pt"), load_file(tmp_path / "run" / "last.pt")
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    drop_time = [{k: v for k, v in row.items() if k != "time_s"} for row in full.history]
    assert drop_time == [{k: v for k, v in row.items() if k != "time_s"} for row in resumed.history]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real = trainer.train_one_epoch
    calls = []

    def poison_second_epoch(model, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(trainer, "train_one_epoch", poison_second_epoch)
    with pytest.raises(ValueError, match=r"loss became nan at epoch 2, step 1.*last good checkpoint .*last.pt"):
        train(tiny_config(tmp_path), log=lambda _: None)
    last = load_file(tmp_path / "run" / "last.pt")
    assert last["epoch"] == 1 and all(torch.isfinite(v).all() for v in last["state_dict"].values()
                                      if v.is_floating_point())


def test_sync_bn_on_cpu_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="--sync-bn needs --device cuda"):
        train(tiny_config(tmp_path, sync_bn=True, device="cpu"))


def test_existing_run_folder_is_not_overwritten(trained_run):  # other files: test_train_runs.py
    out, _ = trained_run
    with pytest.raises(ValueError, match="already holds a run"):
        train(TrainConfig(**{**TINY_TRAIN, "out": str(out)}))


def test_truncated_checkpoint_is_one_error_line(tmp_path, trained_run, capsys):
    out, _ = trained_run
    broken = tmp_path / "run"
    broken.mkdir()
    data = (out / "last.pt").read_bytes()
    (broken / "last.pt").write_bytes(data[: len(data) // 2])
    assert main(["train", "--resume", str(broken)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot read checkpoint" in err


def test_wrong_architecture_checkpoint_is_one_error_line(tmp_path, trained_run, capsys):
    out, _ = trained_run
    ckpt = load_file(out / "best.pt")
    ckpt["model"] = "resnet34"
    torch.save(ckpt, tmp_path / "wrong.pt")
    assert main(["evaluate", str(tmp_path / "wrong.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not fit" in err and "missing keys" in err


# -- evaluate and predict ---------------------------------------------------------------------

def test_evaluate_checkpoint_matches_training_report(tmp_path, trained_run):
    out, result = trained_run
    ev = evaluate_checkpoint(out / "best.pt", out=tmp_path / "eval", log=lambda _: None)
    assert (ev.count, ev.top1) == (result.final.count, pytest.approx(result.final.top1))
    assert (tmp_path / "eval" / "confusion_matrix.png").is_file()


def test_predict_image_files_agrees_with_evaluate(tmp_path, trained_run, capsys):
    from PIL import Image

    out, result = trained_run
    data = load_dataset("fake:32")
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(data.val.images[i].permute(1, 2, 0).numpy()).save(paths[-1])
    top = predict(out / "best.pt", paths, topk=3)
    assert [t[0][0] for t in top] == [f"class{int(p)}" for p in result.final.preds[:3]]
    assert all(len(t) == 3 and t[0][1] >= t[1][1] >= t[2][1] for t in top)
    assert main(["predict", str(out / "best.pt"), str(paths[0]), "--topk", "2", "--format", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed[0]["top"][0]["class"] == top[0][0][0]
    assert sum(p for _, p in predict(out / "best.pt", paths[:1], topk=10)[0]) == pytest.approx(1.0, abs=1e-5)


def test_predict_rejects_a_non_image(tmp_path, trained_run, capsys):
    out, _ = trained_run
    (tmp_path / "x.png").write_text("not an image")
    assert main(["predict", str(out / "best.pt"), str(tmp_path / "x.png")]) == 2
    assert "expected an image file Pillow can decode" in capsys.readouterr().err


def test_cli_config_file_with_flag_override_trains_on_an_image_folder(tmp_path):
    from PIL import Image

    import yaml

    for split in ("train", "val"):
        for c, color in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
            (tmp_path / "imgs" / split / c).mkdir(parents=True)
            for i in range(6 if split == "train" else 2):
                Image.new("RGB", (40, 36), color).save(tmp_path / "imgs" / split / c / f"{i}.jpg")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump({
        "model": "resnet18", "dataset": f"imagefolder:{tmp_path / 'imgs'}", "input_size": 32, "epochs": 3,
        "batch_size": 4, "workers": 0, "out": str(tmp_path / "run")}))
    assert main(["train", "--config", str(tmp_path / "cfg.yaml"), "--epochs", "1"]) == 0
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (written["epochs"], written["batch_size"], written["crop_padding"], written["hflip"]) == (1, 4, 4, True)
    report = json.loads((tmp_path / "run" / "classification_report.json").read_text())
    assert set(report) >= {"red", "blue"} and report["macro avg"]["support"] == 4


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_scheduler_and_optimizer_state_survive_a_weights_only_checkpoint(tmp_path, schedule):
    from backbonekit.checkpoint import atomic_save
    from backbonekit.engine.optim import build_optimizer, build_scheduler

    def make():
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
        opt = build_optimizer("sgd", model, 0.1, 1e-4)
        return model, opt, build_scheduler(schedule, opt, 0.1, epochs=3, steps_per_epoch=5, warmup_epochs=1)

    model, opt, sched = make()
    for _ in range(4):
        model(torch.randn(8, 3)).sum().backward()
        opt.step()
        sched.step()
    atomic_save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, tmp_path / "s.pt")
    saved = load_file(tmp_path / "s.pt")
    model2, opt2, sched2 = make()
    opt2.load_state_dict(saved["optimizer"])
    sched2.load_state_dict(saved["scheduler"])
    for _ in range(6):
        for o, s in ((opt, sched), (opt2, sched2)):
            o.step()
            s.step()
        assert opt.param_groups[0]["lr"] == opt2.param_groups[0]["lr"]


def test_onecycle_keeps_the_given_momentum():
    from backbonekit.engine.optim import build_optimizer, build_scheduler

    model = create_model("resnet18", num_classes=2)
    for momentum in (0.0, 0.5, 0.9):
        optimizer = build_optimizer("sgd", model, 0.1, 0.0, momentum)
        build_scheduler("onecycle", optimizer, 0.1, 2, 5)
        assert all(group["momentum"] == momentum for group in optimizer.param_groups)


@pytest.mark.parametrize("total_steps", [1, 2, 3, 4, 5, 8])
def test_onecycle_works_for_short_runs(total_steps):
    from backbonekit.engine.optim import build_optimizer, build_scheduler

    optimizer = build_optimizer("sgd", create_model("resnet18", num_classes=2), 0.1, 0.0)
    scheduler = build_scheduler("onecycle", optimizer, 0.1, 1, total_steps)
    lrs = []
    for _ in range(total_steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert all(0 < lr <= 0.1 + 1e-12 for lr in lrs)


def test_batch_size_one_is_refused():
    with pytest.raises(ValueError, match="batch_size must be >= 2, found 1"):
        TrainConfig(batch_size=1).validate()


def test_shared_training_step_clips_and_steps_as_by_hand():
    """engine.optim.backward_and_step (both trainers' step): SGD on a clipped gradient, computed by hand."""
    from backbonekit.engine.optim import NonFiniteLoss, backward_and_step, check_finite

    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    model = torch.nn.Module()
    model.w = w
    optimizer = torch.optim.SGD([w], lr=0.1)
    backward_and_step((w * torch.tensor([6.0, 8.0])).sum(), model, optimizer, grad_clip=5.0)
    # gradient (6, 8) has norm 10: clipped to norm 5 -> (3, 4); w - 0.1 * (3, 4)
    assert torch.allclose(w.detach(), torch.tensor([2.7, 3.6]), atol=1e-6)
    backward_and_step((w * torch.tensor([1.0, 1.0])).sum(), model, optimizer)  # zeroed first, no clipping
    assert torch.allclose(w.detach(), torch.tensor([2.6, 3.5]), atol=1e-6)
    check_finite(1.5, 0, 0)
    with pytest.raises(NonFiniteLoss, match="loss became nan at epoch 2, step 4"):
        check_finite(float("nan"), 1, 3)

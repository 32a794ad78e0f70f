"""Renamed config fields (issue 20, item 5): each old name still works where a user or an old run gives it
(a config file, a flag, ``resolve_*config``, a saved run's config.yaml and last.pt), with one note per old
name, and what is written from now on uses the new names."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from backbonekit.checkpoint import load_file
from backbonekit.cli import build_parser, main
from backbonekit.cli._config import resolve_from_flags
from backbonekit.detection.training.config import DetectConfig, resolve_detect_config
from backbonekit.engine.config import read_config_file
from backbonekit.train.config import TrainConfig, resolve_config

# old name -> (new name, a value other than the default)
DETECT_OLD = {"warmup": ("warmup_epochs", 0.5), "freeze": ("frozen_stages", 0),
              "skip_bad_labels": ("skip_bad_data", True)}
TRAIN_OLD = {"image_size": ("input_size", 16), "skip_bad_images": ("skip_bad_data", True)}
CASES = [(DetectConfig, resolve_detect_config, old, new, value) for old, (new, value) in DETECT_OLD.items()] + \
        [(TrainConfig, resolve_config, old, new, value) for old, (new, value) in TRAIN_OLD.items()]
IDS = [f"{c[0].__name__}.{c[2]}" for c in CASES]


def test_the_tables_name_old_fields_that_are_gone_and_new_ones_that_exist():
    for config_class in (DetectConfig, TrainConfig):
        names = {f for f in config_class.__dataclass_fields__}
        assert set(config_class.RENAMED.values()) <= names and not set(config_class.RENAMED) & names
    assert DetectConfig.RENAMED.keys() == DETECT_OLD.keys() and TrainConfig.RENAMED.keys() == TRAIN_OLD.keys()


def notes(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, FutureWarning)]


@pytest.mark.parametrize("config_class, resolve, old, new, value", CASES, ids=IDS)
def test_old_name_in_a_config_file_sets_the_new_field_with_one_note(tmp_path, config_class, resolve, old, new,
                                                                      value):
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({old: value}))
    with pytest.warns(FutureWarning) as record:
        cfg = resolve(path)
    assert getattr(cfg, new) == value
    assert notes(record) == [f"config key {old!r} in {path} is now {new!r}; the old name is read until the next "
                             f"release"]


@pytest.mark.parametrize("config_class, resolve, old, new, value", CASES, ids=IDS)
def test_old_name_in_python_overrides_sets_the_new_field(config_class, resolve, old, new, value):
    with pytest.warns(FutureWarning, match=f"'{old}' in the overrides is now '{new}'"):
        assert getattr(resolve(None, {old: value}), new) == value


def test_old_and_new_name_together_are_refused_in_one_line(tmp_path):
    path = tmp_path / "both.yaml"
    path.write_text(yaml.safe_dump({"warmup": 2.0, "warmup_epochs": 3.0}))
    with pytest.raises(ValueError, match=r"config keys 'warmup' and 'warmup_epochs' .* give only 'warmup_epochs'"):
        read_config_file(path, DetectConfig)


def flag_value(value) -> list[str]:
    return [] if isinstance(value, bool) else [str(value)]


@pytest.mark.parametrize("config_class, resolve, old, new, value", CASES, ids=IDS)
def test_old_flag_sets_the_new_field_with_one_note_and_is_hidden_from_help(capsys, config_class, resolve, old,
                                                                             new, value):
    command = ["detect", "train"] if config_class is DetectConfig else ["train"]
    old_flag, new_flag = "--" + old.replace("_", "-"), "--" + new.replace("_", "-")
    args = build_parser().parse_args([*command, old_flag, *flag_value(value)])
    with pytest.warns(FutureWarning) as record:
        cfg, given = resolve_from_flags(args, config_class, lambda f: read_config_file(f, config_class), resolve)
    assert getattr(cfg, new) == value and given == {new}
    assert notes(record) == [f"{old_flag} is now {new_flag}; the old name is read until the next release"]
    with pytest.raises(SystemExit):
        build_parser().parse_args([*command, "--help"])
    shown = capsys.readouterr().out
    assert new_flag in shown and f"{old_flag} " not in shown and f"{old_flag}\n" not in shown


def test_old_negative_flag_names_the_new_negative_flag():
    args = build_parser().parse_args(["detect", "train", "--no-skip-bad-labels"])
    with pytest.warns(FutureWarning, match="--no-skip-bad-labels is now --no-skip-bad-data"):
        cfg, _ = resolve_from_flags(args, DetectConfig, lambda f: read_config_file(f, DetectConfig),
                                    resolve_detect_config)
    assert cfg.skip_bad_data is False


def test_detect_evaluate_and_anchors_read_the_old_skip_flag():
    for argv in (["detect", "evaluate", "best.pt", "--skip-bad-labels"], ["anchors", "--skip-bad-labels"]):
        assert build_parser().parse_args(argv).skip_bad_data is True


def test_stages_to_freeze_resolves_frozen_stages():
    assert DetectConfig().stages_to_freeze == -1 and DetectConfig(pretrained="x.pt").stages_to_freeze == 1
    assert DetectConfig(frozen_stages=0, pretrained="x.pt").stages_to_freeze == 0


# -- saved runs -------------------------------------------------------------------------------------

def to_old_names(run: Path, renamed: dict[str, str]) -> None:
    """Rewrite a run folder as a version before the rename wrote it: old keys in config.yaml and in the
    checkpoints' config."""
    back = {new: old for old, new in renamed.items()}
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(run / name, map_location="cpu", weights_only=True)
        ckpt["config"] = {back.get(k, k): v for k, v in ckpt["config"].items()}
        torch.save(ckpt, run / name)
    written = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({back.get(k, k): v for k, v in written.items()},
                                                    sort_keys=False))


def assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = load_file(a)["state_dict"], load_file(b)["state_dict"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def resume_old_and_new(run: Path, tmp_path: Path, renamed: dict[str, str], command: list[str]) -> tuple[Path, Path]:
    """Resume a copy of ``run`` as it is and one with the old names, each to 2 epochs, with no note."""
    new, old = Path(shutil.copytree(run, tmp_path / "new")), Path(shutil.copytree(run, tmp_path / "old"))
    to_old_names(old, renamed)
    assert set(renamed) <= set(yaml.safe_load((old / "config.yaml").read_text()))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the user did not write these names: no note
        for folder in (new, old):
            assert main([*command, "--resume", str(folder), "--epochs", "2"]) == 0
    return new, old


def test_a_classification_run_saved_with_old_names_resumes_as_before(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--model", "resnet18", "--dataset", "fake:32", "--epochs", "1", "--batch-size", "8",
                 "--workers", "0", "--input-size", "32", "--out", str(run)]) == 0
    written = yaml.safe_load((run / "config.yaml").read_text())
    assert written["input_size"] == 32 and "skip_bad_data" in written and not set(TrainConfig.RENAMED) & set(written)
    new, old = resume_old_and_new(run, tmp_path, TrainConfig.RENAMED, ["train"])
    assert_same_weights(new / "last.pt", old / "last.pt")
    rewritten = yaml.safe_load((old / "config.yaml").read_text())  # the resumed run writes today's names
    assert rewritten["input_size"] == 32 and not set(TrainConfig.RENAMED) & set(rewritten)


def test_a_detection_run_saved_with_old_names_resumes_and_evaluates_as_before(tmp_path, capsys):
    from backbonekit.detection.data.photodigits import PhotoDigitsSpec, photodigits, write_yolo_dataset
    from backbonekit.detection.training.evaluate import evaluate_checkpoint

    spec = PhotoDigitsSpec(image_size=64, num_train=8, num_val=4, digits_per_image=(1, 2), digit_height=(20, 32))
    data = tmp_path / "data"
    write_yolo_dataset({split: photodigits(split, spec) for split in ("train", "val")}, data)
    run = tmp_path / "run"
    assert main(["detect", "train", "--dataset", f"yolo:{data}", "--backbone", "resnet18", "--input-size", "64",
                 "--neck-width", "0.25", "--batch-size", "4", "--anchors", "coco", "--device", "cpu", "--epochs", "1",
                 "--warmup-epochs", "0.5", "--frozen-stages", "0", "--count-difficult", "--out", str(run)]) == 0
    written = yaml.safe_load((run / "config.yaml").read_text())
    assert (written["warmup_epochs"], written["frozen_stages"]) == (0.5, 0)
    assert not set(DetectConfig.RENAMED) & set(written)
    new, old = resume_old_and_new(run, tmp_path, DetectConfig.RENAMED, ["detect", "train"])
    assert_same_weights(new / "last.pt", old / "last.pt")
    resumed = load_file(old / "last.pt")["config"]  # the resumed run writes today's names
    assert (resumed["warmup_epochs"], resumed["frozen_stages"]) == (0.5, 0)
    capsys.readouterr()
    to_old_names(old, DetectConfig.RENAMED)
    quiet = dict(device="cpu", log=lambda _: None)
    a = evaluate_checkpoint(new / "best.pt", out=tmp_path / "ev-new", **quiet)
    b = evaluate_checkpoint(old / "best.pt", out=tmp_path / "ev-old", **quiet)
    assert a.summary == b.summary


def test_a_comparison_plan_saved_with_old_names_reads_with_the_new_ones(tmp_path):
    from backbonekit.detection.training.compare import PLAN_FILE, read_plan

    (tmp_path / PLAN_FILE).write_text(yaml.safe_dump({
        "pairs": ["yolov3:resnet18"], "settings": {"dataset": "photodigits", "warmup": 2.0},
        "model_options": {"yolov3": {"freeze": 0}}}))
    plan = read_plan(tmp_path)
    assert plan.settings["warmup_epochs"] == 2.0 and plan.model_options == {"yolov3": {"frozen_stages": 0}}


# -- YOLOv3's input_mean/input_std -> image_mean/image_std ---------------------------------------------------

def test_a_yolov3_checkpoint_recording_input_mean_and_input_std_loads_with_its_normalisation(tmp_path):
    import backbonekit as bk
    from backbonekit.detection.loading import load_detector

    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    model = bk.create_model("yolov3", backbone="resnet18", num_classes=2, input_size=64, neck_channels=(16, 8, 4),
                            image_mean=mean, image_std=std)
    assert model.model_kwargs["image_mean"] == mean and "input_mean" not in model.model_kwargs
    old_kwargs = {("input_" + k[len("image_"):] if k.startswith("image_") else k): v
                  for k, v in model.model_kwargs.items()}
    assert old_kwargs["input_mean"] == mean and "image_mean" not in old_kwargs
    path = tmp_path / "best.pt"
    torch.save({"format": "backbonekit", "task": "detection", "model": "yolov3", "model_kwargs": old_kwargs,
                "num_classes": 2, "classes": ["a", "b"], "input_size": 64, "state_dict": model.state_dict(),
                "config": {}}, path)
    loaded, _ = load_detector(path)
    assert loaded.image_mean.flatten().tolist() == pytest.approx(mean)
    assert loaded.image_std.flatten().tolist() == pytest.approx(std)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.forward_raw(x), model.eval().forward_raw(x))
    with pytest.raises(ValueError, match="input_mean and image_mean name the same YOLOv3 argument"):
        bk.create_model("yolov3", backbone="resnet18", num_classes=2, input_mean=mean, image_mean=std)

"""One typed training configuration: dataclass defaults, then a YAML/JSON file, then command-line flags."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from ..engine.config import build_config, check_choice, check_range, check_run_fields
from ..engine.runs import EXTEND, FIXED, LOCAL

SCHEDULES = ("onecycle", "cosine")


@dataclass
class TrainConfig:
    """Everything that decides a training run; ``config.yaml`` in the run folder is this, resolved.

    The defaults are the README quickstart: Darknet-53 on scikit-learn's digits, SGD + one-cycle,
    2-pixel random translation, 4 epochs (>= 98% test accuracy in a few minutes on a 2-core CPU).
    ``zero_init_residual`` (from scratch only) starts each residual branch at zero: without it
    Darknet-53 diverges within a few SGD steps at this learning rate.
    ``None`` means "the dataset's default" (input size, crop padding, flip).
    ``skip_bad_data``: imagefolder files that are not readable images are left out (with a count) instead
    of refusing the folder.
    ``time``: a wall-clock budget (``90s``, ``10m``, ``1.5h``, or minutes): the epochs and the schedule are
    fitted to it after each epoch (:mod:`.budget`); ``epochs`` then only sizes the first epoch's schedule.
    """

    model: str = "darknet53"
    dataset: str = "digits"
    data_dir: str = "data"
    download: bool = True
    epochs: int = 4
    time: str | None = None
    batch_size: int = 64
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    grad_clip: float = 0.0
    input_size: int | None = None
    crop_padding: int | None = None
    hflip: bool | None = None
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool = True
    deterministic: bool = False
    seed: int = 0
    workers: int = 2
    out: str | None = None
    resume: str | None = None
    pretrained: str | None = None
    zero_init_residual: bool = True
    sync_bn: bool = False
    nproc: int = 1
    skip_bad_data: bool = False

    # old field name -> new one (read from config files, flags and saved runs: engine.config.renamed_keys)
    RENAMED: ClassVar[dict[str, str]] = {"image_size": "input_size", "skip_bad_images": "skip_bad_data"}

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise one-line ValueErrors for values no run can use (NaN fails every range check)."""
        check_run_fields(self)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_range("label_smoothing", self.label_smoothing, 0, high=1)
        check_range("warmup_epochs", self.warmup_epochs, 0)
        if self.input_size is not None:
            check_range("input_size", self.input_size, 8)
        if self.crop_padding is not None:
            check_range("crop_padding", self.crop_padding, 0)
            if self.input_size is not None:
                check_crop_padding(self.crop_padding, self.input_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# What ``--resume`` does with each option given again (docs/training.md, "Resume"; the rules are explained in
# :mod:`backbonekit.engine.runs`).
RESUME_RULES: dict[str, str] = {
    "model": FIXED, "dataset": FIXED, "data_dir": LOCAL, "download": LOCAL, "epochs": EXTEND, "time": LOCAL,
    "batch_size": FIXED, "lr": FIXED, "optimizer": FIXED, "momentum": FIXED, "nesterov": FIXED,
    "weight_decay": FIXED, "schedule": FIXED, "warmup_epochs": FIXED, "label_smoothing": FIXED,
    "grad_clip": FIXED, "input_size": FIXED, "crop_padding": FIXED, "hflip": FIXED, "device": LOCAL,
    "amp": FIXED, "channels_last": FIXED, "deterministic": FIXED, "seed": FIXED, "workers": LOCAL,
    "out": LOCAL,  # must name the run's own folder (checked in resumed_config)
    "resume": LOCAL, "pretrained": FIXED, "zero_init_residual": FIXED, "sync_bn": FIXED,
    "nproc": LOCAL,  # checked against the process count the checkpoint records
    "skip_bad_data": FIXED,  # decides which images the run trains on
}


def check_crop_padding(padding: int, input_size: int) -> None:
    """A crop must keep part of the image: padding >= size gives blank crops and a padded copy of the
    split that grows with the square of the padding."""
    if not 0 <= padding < input_size:
        raise ValueError(f"crop_padding must be in [0, input_size) = [0, {input_size}), found {padding}")


def resolve_config(config_file: str | os.PathLike | None = None,
                   overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Dataclass defaults, updated by ``config_file``, updated by ``overrides`` (command-line flags win)."""
    return build_config(TrainConfig, config_file, overrides)

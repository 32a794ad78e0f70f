"""One typed detection-training configuration: dataclass defaults, then a YAML/JSON file, then flags.

The same conventions as :class:`backbonekit.train.config.TrainConfig` (and the same file reader,
:mod:`backbonekit.engine.config`):
``config.yaml`` in a run folder is this, resolved, and ``detect train --config config.yaml`` repeats
the run. The defaults are the recipe ``docs/detection-training.md`` explains.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Mapping

from ...engine.config import build_config, check_choice, check_range, check_run_fields
from ...darknet_yolov3 import YOLOV3_CFG_NECK_CHANNELS as YOLOV3_NECK_CHANNELS
from ...engine.runs import EXTEND, FIXED, LOCAL
from ..models.fpn import FPN_MIN_LEVELS

ANCHOR_CHOICES = ("coco", "auto")
RPN_PROPOSAL_FIELDS = ("rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train", "rpn_pre_nms_top_n_test",
                       "rpn_post_nms_top_n_test")
DETECTORS = ("yolov3", "fasterrcnn", "retinanet", "fcos")  # what ``detect train --model`` trains

__all__ = ["DetectConfig", "check_fraction", "check_input_size", "check_postprocess", "detect_config_keys",
           "parse_anchors", "resolve_detect_config"]


@dataclass
class DetectConfig:
    """Everything that decides a detector training run.

    ``frozen_stages``: backbone stages kept frozen (the backbone's ``frozen_stages``: -1 none, 0 the stem,
    k the stem and k stages); ``None`` means 1 with ``pretrained`` weights and -1 without
    (:attr:`stages_to_freeze` resolves it).
    ``anchors``: ``coco`` (Darknet's nine, input pixels), ``auto`` (k-means on the training boxes at
    ``input_size``, YOLOv2's method) or nine ``w,h`` pairs (``"10,13 16,30 ..."`` or a YAML list).
    ``ignore_thresh``, ``iou_thresh``: YOLOv3's loss (:class:`~backbonekit.detection.task.loss.YOLOv3Loss`):
    the ignore region's IoU, and the shape IoU above which a box is assigned to more anchors than its best
    one (AlexeyAB's Darknet; 1 turns that off, as ``yolov3.cfg``).
    ``model``: one of :data:`DETECTORS`; ``anchors``, ``neck_width``, ``multiscale``, ``frozen_stages`` and the
    two thresholds are YOLOv3's and refused for the others. ``mosaic``: probability of a Mosaic sample.
    ``warmup_epochs``: epochs of linear warm-up before the cosine decay. ``neck_width``: a width multiplier
    (ultralytics' ``width_multiple``, not a list of channels): the YOLOv3 neck's widths (512, 256, 128) times
    this (:attr:`neck_channels`). ``skip_bad_data``: bad label rows are dropped (with a count) instead of
    stopping the run; the images stay, with their other boxes. ``count_difficult``: evaluate VOC's difficult objects as ordinary
    ones (by default they are ignored, as VOC's protocol does).
    ``rpn_*_nms_top_n_*``: Faster R-CNN's region proposals per image kept before and after the RPN's NMS,
    in training and in evaluation (torchvision's arguments; None: torchvision's 2000, 2000, 1000, 1000).
    Fewer make Faster R-CNN cheaper on a CPU (by about 1.3x a training step at ``detect compare``'s preset
    counts; ``docs/detection-compare.md``).
    ``fpn_min_level``: the FPN detectors' first pyramid level, 2 (stride 4) or 3 (stride 8); None: P2 for
    Faster R-CNN and for DetNet-59 (the DetNet paper's P2-P6), P3 for RetinaNet and FCOS on the others
    (torchvision's P3-P7). 3 gives a one-stage detector on DetNet-59 the P3-P6 pyramid, about a third of the
    head's cost at P2-P6 (:func:`~backbonekit.detection.models.fpn.detector_pyramid`).
    ``time``: a wall-clock budget (``90s``, ``10m``, ``1.5h``, or minutes) that the epochs and the schedule
    are fitted to after each epoch (:mod:`backbonekit.engine.budget`); ``epochs`` then only sizes the first
    epoch's schedule.
    """

    model: str = "yolov3"
    backbone: str = "resnet18"
    dataset: str = "photodigits"
    data_dir: str | None = None
    epochs: int = 24
    time: str | None = None
    batch_size: int = 16
    lr: float = 1e-3
    optimizer: str = "adamw"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    grad_clip: float = 10.0
    input_size: int = 128
    neck_width: float = 0.5
    multiscale: bool = False
    mosaic: float = 0.0
    hflip: bool = False
    hsv: bool = True
    scale_jitter: float = 0.25
    translate: float = 0.1
    frozen_stages: int | None = None
    ema: bool = False
    anchors: str | list = "auto"
    ignore_thresh: float = 0.7
    iou_thresh: float = 0.213
    score_thresh: float = 0.01
    nms_thresh: float = 0.45
    device: str = "auto"
    amp: str = "auto"
    seed: int = 0
    workers: int = 0
    out: str | None = None
    resume: str | None = None
    pretrained: str | None = None
    skip_bad_data: bool = False
    count_difficult: bool = False
    nproc: int = 1
    rpn_pre_nms_top_n_train: int | None = None
    rpn_post_nms_top_n_train: int | None = None
    rpn_pre_nms_top_n_test: int | None = None
    rpn_post_nms_top_n_test: int | None = None
    fpn_min_level: int | None = None

    # old field name -> new one (read from config files, flags and saved runs: engine.config.renamed_keys)
    RENAMED: ClassVar[dict[str, str]] = {"warmup": "warmup_epochs", "freeze": "frozen_stages",
                                         "skip_bad_labels": "skip_bad_data"}

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise one-line ValueErrors for values no run can use."""
        check_choice("model", self.model, DETECTORS)
        check_choice("backbone", self.backbone, tuple(_backbones()))  # not a detector: those are --model
        self._check_yolo_only()
        check_run_fields(self)
        for name in ("warmup_epochs", "translate", "scale_jitter"):
            check_range(name, getattr(self, name), 0)
        check_input_size(self.input_size)
        if not 0 < self.neck_width <= 4:
            raise ValueError(f"neck_width must be in (0, 4], found {self.neck_width}")
        for name in ("mosaic", "ignore_thresh", "iou_thresh", "score_thresh", "nms_thresh"):
            check_fraction(name, getattr(self, name))
        if self.scale_jitter >= 1:
            raise ValueError(f"scale_jitter must be < 1 (scales drawn in [1 - s, 1 + s]), found {self.scale_jitter}")
        if self.frozen_stages is not None and self.frozen_stages < -1:
            raise ValueError(f"frozen_stages must be >= -1 (-1: nothing frozen, 0: the stem), found "
                             f"{self.frozen_stages}")
        parse_anchors(self.anchors)
        for name in RPN_PROPOSAL_FIELDS:
            if getattr(self, name) is not None:
                check_range(name, getattr(self, name), 1)
        if self.fpn_min_level is not None and self.fpn_min_level not in FPN_MIN_LEVELS:
            raise ValueError(f"fpn_min_level must be 2 (the pyramid from stride 4) or 3 (from stride 8), found "
                             f"{self.fpn_min_level!r}")

    def _check_yolo_only(self) -> None:
        """The FPN detectors refuse YOLOv3's options in one line (``anchors: auto``, the default, is ignored)."""
        if self.model == "yolov3":
            if self.fpn_min_level is not None:
                raise ValueError(f"fpn_min_level is an option of the FPN detectors (fasterrcnn, retinanet, fcos): "
                                 f"expected it unset for yolov3 (its neck reads strides 8, 16, 32), found "
                                 f"{self.fpn_min_level!r}")
            return
        defaults = {f.name: f.default for f in fields(self)}
        for name in ("neck_width", "multiscale", "frozen_stages", "ignore_thresh", "iou_thresh"):
            if getattr(self, name) != defaults[name]:
                note = (" (the FPN detectors freeze as torchvision does: stem and first stage with --pretrained)"
                        if name == "frozen_stages" else "")
                raise ValueError(f"{name} is a YOLOv3 option: expected it unset for {self.model}, found "
                                 f"{getattr(self, name)!r}{note}")
        if self.anchors != "auto":
            raise ValueError(f"anchors is a YOLOv3 option: expected it unset for {self.model} (its anchors are "
                             f"torchvision's, 32-512 px), found {self.anchors!r}")
        if self.model != "fasterrcnn":
            for name in RPN_PROPOSAL_FIELDS:
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} is a Faster R-CNN option: expected it unset for {self.model}, "
                                     f"found {getattr(self, name)!r}")

    @property
    def rpn_proposals(self) -> dict[str, int]:
        """The proposal counts set for Faster R-CNN, as torchvision's keyword arguments."""
        return {name: getattr(self, name) for name in RPN_PROPOSAL_FIELDS if getattr(self, name) is not None}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def stages_to_freeze(self) -> int:
        """``frozen_stages`` resolved: one stage (and the stem) frozen when starting from pretrained weights."""
        if self.frozen_stages is not None:
            return self.frozen_stages
        return 1 if self.pretrained else -1

    @property
    def neck_channels(self) -> tuple[int, int, int]:
        """YOLOv3's (512, 256, 128) scaled by ``neck_width`` (multiples of 8, at least 8)."""
        return tuple(max(8, int(round(n * self.neck_width / 8)) * 8) for n in YOLOV3_NECK_CHANNELS)


# What a YOLOv3 run saved before these fields existed trained with (a resume keeps it, whatever today's
# default; the FPN detectors take today's defaults, which they must leave unset).
DETECT_LEGACY_VALUES: dict[str, Any] = {"ignore_thresh": 0.7, "iou_thresh": 1.0}
# The same for every detector: runs saved before VOC's difficult objects were ignored counted them.
DETECT_LEGACY_ALL: dict[str, Any] = {"count_difficult": True}


def legacy_values(saved: Mapping[str, Any]) -> dict[str, Any]:
    """What a run whose saved config is ``saved`` used for the fields it predates (for ``resumed_config``)."""
    own = DETECT_LEGACY_VALUES if saved.get("model", "yolov3") == "yolov3" else {}
    return {**DETECT_LEGACY_ALL, **own}

# What ``--resume`` does with an option given again (the classification trainer's rules, engine/runs.py):
# the run's content is fixed, where it runs is local, epochs may be extended.
DETECT_RESUME_RULES: dict[str, str] = {
    **{f.name: FIXED for f in fields(DetectConfig)},
    "epochs": EXTEND, "time": LOCAL, "device": LOCAL, "workers": LOCAL, "nproc": LOCAL, "data_dir": LOCAL,
    "out": LOCAL, "resume": LOCAL,
}


def _backbones() -> list[str]:
    from ...models import list_models

    return list_models(task="classification")


def check_fraction(name: str, value: float) -> None:
    """``value`` in [0, 1] (thresholds, probabilities); one line otherwise, NaN included."""
    if not 0 <= value <= 1:  # NaN fails too
        raise ValueError(f"{name} must be in [0, 1], found {value}")


def check_input_size(value: int) -> None:
    """A detector input size: a positive multiple of 32 (YOLOv3's stride; the FPN detectors' largest)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 32 or value % 32:
        raise ValueError(f"input_size must be a positive multiple of 32 (YOLOv3's stride), found {value}")


def check_postprocess(score_thresh: float | None = None, nms_thresh: float | None = None,
                      detections_per_img: int | None = None) -> None:
    """The post-processing settings a detector's ``detect`` takes (None: the model's own), checked as
    ``detect train`` checks its thresholds."""
    for name, value in (("score_thresh", score_thresh), ("nms_thresh", nms_thresh)):
        if value is not None:
            check_fraction(name, value)
    if detections_per_img is not None:
        check_range("max_detections (detections per image)", detections_per_img, 1)


def parse_anchors(value: str | list) -> str | list[list[float]]:
    """``coco``/``auto`` unchanged; ``"w,h w,h ..."`` or a list of pairs -> nine [w, h] lists (positive)."""
    if isinstance(value, str) and value in ANCHOR_CHOICES:
        return value
    pairs: list = []
    if isinstance(value, str):
        try:
            pairs = [[float(v) for v in pair.split(",")] for pair in value.replace(";", " ").split()]
        except ValueError:
            pairs = []
    elif isinstance(value, (list, tuple)):
        try:
            pairs = [[float(v) for v in pair] for pair in value]
        except (TypeError, ValueError):
            pairs = []
    ok = len(pairs) == 9 and all(len(p) == 2 and all(math.isfinite(v) and v > 0 for v in p) for p in pairs)
    if not ok:
        raise ValueError(f"anchors must be coco, auto or nine positive 'w,h' pairs (e.g. \"10,13 16,30 ...\"), "
                         f"found {value!r}")
    return pairs


def detect_config_keys() -> list[str]:
    return [f.name for f in fields(DetectConfig)]


def resolve_detect_config(config_file: str | os.PathLike | None = None,
                          overrides: Mapping[str, Any] | None = None) -> DetectConfig:
    """Dataclass defaults, updated by ``config_file``, updated by ``overrides`` (command-line flags win)."""
    return build_config(DetectConfig, config_file, overrides)

"""Published weights by name: a registry of tags in timm's ``model.tag`` style, and what ``pretrained=`` means.

Each entry says where its file is and how to check it (URL, exact size, SHA-256 or the publisher's prefix of
it, SHA-1 where that is what is public: :class:`backbonekit.hub.FileSpec`), the layout the file is in, its
licence, the preprocessing and input size the figures were measured with, its class names, and its published
accuracy with the source of every figure. The backbones' entries are below; the detectors' are in
:mod:`backbonekit.detection.published`. ``backbonekit weights`` lists them.

``create_model(name, pretrained=...)`` takes ``True`` (the model's default tag), a tag (``"resnet50.tv2_in1k"``,
or ``"tv2_in1k"`` for that model), a URL, or a local file as before; a tag or URL is fetched once into torch's
hub cache by :func:`backbonekit.hub.fetch`.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping

from .checkpoint import CheckpointError
from .hub import HASH_IN_NAME, FileSpec, cached_path, fetch, is_url


@dataclass(frozen=True)
class ClassSet:
    """The classes of a weights file in label order: names, and the dataset's own ids where it has them."""

    names: tuple[str, ...]
    category_ids: tuple[int, ...] | None = None  # e.g. COCO's category_id (1..90 with gaps) of each label


@dataclass(frozen=True)
class PublishedWeights:
    """A published weights file for one registered model, and the facts about it."""

    model: str
    tag: str
    file: FileSpec
    layout: str  # how the file is written: torchvision, timm, darknet (read by backbonekit.weights / the detectors)
    license: str
    dataset: str
    classes: str  # a class set (:func:`class_set`); "" for a file without a classifier
    num_classes: int  # the model's classes with these weights (0: backbone only)
    input_size: int
    preprocessing: Mapping[str, Any]
    metrics: Mapping[str, float]  # published figures, e.g. {"top-1": 80.858, "top-5": 95.434}
    evaluated: str  # what the figures were measured on, and how
    source: str  # where the URL, the hash and the figures come from
    size_mib: float | None = None  # the publisher's rounded size, where the exact size is not published
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)  # what the model needs to compute as published
    default: bool = False  # the tag ``pretrained=True`` takes
    notes: str = ""

    @property
    def name(self) -> str:
        return f"{self.model}.{self.tag}"

    @property
    def backbone(self) -> str | None:
        """The backbone a detector's file is for (its other backbones cannot load it)."""
        return self.model_kwargs.get("backbone")


_PUBLISHED: dict[str, PublishedWeights] = {}
_NONE: dict[str, str] = {}  # model -> why it has no published weights
_CLASS_SETS: dict[str, Callable[[], ClassSet]] = {}


def register(*entries: PublishedWeights) -> None:
    """Add entries to the registry (a tag registered twice is an error)."""
    for entry in entries:
        if entry.name in _PUBLISHED:
            raise ValueError(f"published weights {entry.name!r} are already registered")
        _PUBLISHED[entry.name] = entry


def register_none(model: str, reason: str) -> None:
    """Record that ``model`` has no published weights, and why (``pretrained=True`` says so)."""
    _NONE[model] = reason


def register_class_set(name: str, loader: Callable[[], ClassSet]) -> None:
    _CLASS_SETS[name] = loader


def _load() -> None:
    from .models import register_all

    register_all()  # the detectors register theirs on import


def list_published(pattern: str = "*") -> list[PublishedWeights]:
    """Registered entries whose ``model.tag`` or model matches a shell-style ``pattern``, by model then tag
    (numbers in numeric order: resnet18 before resnet101)."""
    _load()
    return [_PUBLISHED[name] for name in sorted(_PUBLISHED, key=_natural) if fnmatch.fnmatch(name, pattern)
            or fnmatch.fnmatch(_PUBLISHED[name].model, pattern)]


def _natural(name: str) -> list[Any]:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


def models_without_weights() -> dict[str, str]:
    """Registered models with no published weights, and why."""
    _load()
    return dict(_NONE)


def get(name: str) -> PublishedWeights:
    """The entry tagged ``name`` (``model.tag``); one KeyError line with close matches otherwise."""
    _load()
    if name not in _PUBLISHED:
        close = difflib.get_close_matches(name, list(_PUBLISHED), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else " (backbonekit weights lists them)"
        raise KeyError(f"no published weights tagged {name!r}{hint}")
    return _PUBLISHED[name]


def default_weights(model: str) -> PublishedWeights:
    """The entry ``pretrained=True`` takes for ``model``; one ValueError line when it has none."""
    _load()
    if model in _NONE:
        raise ValueError(f"{model} has no published weights: {_NONE[model]}; pass pretrained='path/to/file'")
    for entry in _PUBLISHED.values():
        if entry.model == model and entry.default:
            return entry
    raise ValueError(f"{model} has no published weights here; pass pretrained='path/to/file'")


def find(spec: str, model: str | None = None) -> PublishedWeights | None:
    """The entry ``spec`` names: a full tag (``resnet50.tv2_in1k``), a tag of ``model`` (``tv2_in1k``), or one of
    the entries' URLs; None if it names none."""
    _load()
    if spec in _PUBLISHED:
        return _PUBLISHED[spec]
    if model and f"{model}.{spec}" in _PUBLISHED:
        return _PUBLISHED[f"{model}.{spec}"]
    return next((e for e in _PUBLISHED.values() if spec in e.file.urls), None)


def tags_of(model: str) -> list[str]:
    _load()
    return [e.name for e in _PUBLISHED.values() if e.model == model]


def class_set(name: str) -> ClassSet:
    """The classes registered as ``name`` (``imagenet``, ``imagenet-darknet``, ``coco80``, ``voc``, ...)."""
    _load()
    if name not in _CLASS_SETS:
        raise KeyError(f"unknown class set {name!r}: expected one of {', '.join(sorted(_CLASS_SETS))}")
    return _CLASS_SETS[name]()


def fetch_weights(entry: PublishedWeights, *, progress: bool = True) -> Path:
    """The checked local file of ``entry`` (downloaded into torch's hub cache once)."""
    return fetch(entry.file, what=entry.name, progress=progress)


def entry_for(pretrained: Any, model: str) -> PublishedWeights | None:
    """The registry entry ``create_model(model, pretrained=...)`` names, without fetching anything: ``True``
    is the model's default tag (one ValueError line when it has none), a string a tag or an entry's URL;
    None for anything else (a file, a URL of no entry, weights already read)."""
    if pretrained is True:
        return default_weights(model)
    if isinstance(pretrained, (str, os.PathLike)) and not Path(pretrained).exists():
        return find(str(pretrained), model)
    return None


def resolve(pretrained: Any, model: str, *, progress: bool = True) -> Any:
    """What ``create_model(model, pretrained=...)`` loads.

    ``None``/``False``: nothing. ``True``: the model's default tag. A :class:`backbonekit.weights.Weights`: as it
    is. An existing path: that file. A tag (:func:`entry_for`) or a URL: its file, fetched into the cache and
    checked (against its registry entry, or the hash prefix a URL's file name carries). Anything else: one
    line saying what was expected.
    """
    from .weights import Weights

    if pretrained is None or pretrained is False:
        return None
    if isinstance(pretrained, Weights):
        return pretrained
    if pretrained is not True and not isinstance(pretrained, (str, os.PathLike)):
        raise ValueError(f"pretrained expects True, a published tag (backbonekit weights), a URL or the path of a "
                         f"weights file, found {type(pretrained).__name__}")
    entry = entry_for(pretrained, model)
    return fetch_weights(entry, progress=progress) if entry is not None else weights_file(pretrained, model,
                                                                                           progress=progress)


def weights_file(spec: str | os.PathLike, model: str | None = None, *, progress: bool = True) -> Path:
    """A local file for ``spec``: an existing path as it is, a URL or a tag (of ``model``, or any ``model.tag``)
    fetched into the cache. Otherwise one CheckpointError line naming what was looked for."""
    text = str(spec)
    if Path(spec).exists():
        return Path(spec)
    entry = find(text, model)
    if entry is not None:
        return fetch_weights(entry, progress=progress)
    if is_url(text):
        return fetch(FileSpec.from_url(text), progress=progress)
    tags = tags_of(model) if model else []
    known = (f"{model}'s published weights: {', '.join(tags)}" if tags else
             f"{model} has no published weights" if model else "backbonekit weights lists the published tags")
    raise CheckpointError(f"pretrained weights not found: expected a weights file, a URL or a published tag, found "
                          f"{text!r}, which is none of them ({known})")


def cached(entry: PublishedWeights) -> bool:
    """Whether ``entry``'s file is in the cache already (not checked here: :func:`fetch_weights` checks it)."""
    return cached_path(entry.file).is_file()


# -- the backbones' published weights ------------------------------------------------------------------------
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # the one home of ImageNet's statistics
TORCHVISION = "https://download.pytorch.org/models/"
TORCHVISION_LICENSE = "BSD-3-Clause"  # torchvision's; timm's pretrained cfg of its tv_in1k copies records the same
DARKNET_LICENSE = "public domain"  # pjreddie/darknet LICENSE: "YOLO LICENSE Version 2 ... Darknet is public domain"


def torchvision_file(file_name: str) -> FileSpec:
    """A file of download.pytorch.org: its name carries the first 8 hex digits of its SHA-256."""
    found = HASH_IN_NAME.search(file_name)
    return FileSpec((TORCHVISION + file_name,), file_name, sha256=found.group(1) if found else "")


def _torchvision_resnet(depth: int, version: int, file_name: str, top1: float, top5: float, size_mib: float,
                        default: bool = False) -> PublishedWeights:
    resize = 256 if version == 1 else 232
    return PublishedWeights(
        model=f"resnet{depth}", tag="tv_in1k" if version == 1 else "tv2_in1k",
        file=torchvision_file(file_name), layout="torchvision", license=TORCHVISION_LICENSE,
        dataset="ImageNet-1k", classes="imagenet", num_classes=1000, input_size=224,
        preprocessing={"resize": resize, "crop": 224, "interpolation": "bilinear", "mean": IMAGENET_MEAN,
                       "std": IMAGENET_STD},
        metrics={"top-1": top1, "top-5": top5},
        evaluated=f"ImageNet-1k val, resize {resize}, centre crop 224",
        source=f"torchvision 0.29 ResNet{depth}_Weights.IMAGENET1K_V{version}: url, meta _metrics and _file_size",
        size_mib=size_mib, default=default)


register(
    _torchvision_resnet(18, 1, "resnet18-f37072fd.pth", 69.758, 89.078, 44.661, default=True),
    _torchvision_resnet(34, 1, "resnet34-b627a593.pth", 73.314, 91.42, 83.275, default=True),
    _torchvision_resnet(50, 1, "resnet50-0676ba61.pth", 76.13, 92.862, 97.781),
    _torchvision_resnet(50, 2, "resnet50-11ad3fa6.pth", 80.858, 95.434, 97.79, default=True),
    _torchvision_resnet(101, 1, "resnet101-63fe2227.pth", 77.374, 93.546, 170.511),
    _torchvision_resnet(101, 2, "resnet101-cd907fc2.pth", 81.886, 95.78, 170.53, default=True),
    _torchvision_resnet(152, 1, "resnet152-394f9c45.pth", 78.312, 94.046, 230.434),
    _torchvision_resnet(152, 2, "resnet152-f82ba261.pth", 82.284, 96.002, 230.474, default=True),
)

TIMM_DARKNET53_URL = ("https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-tpu-weights/"
                      "darknet53_256_c2ns-3aeff817.pth")
DARKNET_FILES = "https://pjreddie.com/media/files/"
DARKNET_INPUT = {"resize": 256, "crop": 256, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}  # RGB / 255

register(
    PublishedWeights(
        model="darknet53", tag="c2ns_in1k", file=FileSpec.from_url(TIMM_DARKNET53_URL), layout="timm",
        license="Apache-2.0", dataset="ImageNet-1k", classes="imagenet", num_classes=1000,
        input_size=256,
        preprocessing={"crop": 256, "crop_pct": 0.887, "interpolation": "bicubic",
                       "mean": IMAGENET_MEAN, "std": IMAGENET_STD},
        metrics={"top-1": 80.008, "top-5": 95.046},
        evaluated="ImageNet-1k val at 256 (at 288: 80.542 / 95.428)",
        source="timm 1.0 pretrained cfg darknet53.c2ns_in1k (url, hf_hub_id timm/darknet53.c2ns_in1k, license); "
               "figures: timm results/results-imagenet.csv",
        default=True,
        notes="timm's own training, computed with LeakyReLU(0.01) (act_slope is set from the layout)"),
    PublishedWeights(
        model="darknet53", tag="darknet_in1k",
        file=FileSpec((DARKNET_FILES + "darknet53.weights",), "darknet53.weights", size=166_582_580),
        layout="darknet", license=DARKNET_LICENSE, dataset="ImageNet-1k", classes="imagenet-darknet",
        num_classes=1000, input_size=256, preprocessing=DARKNET_INPUT,
        metrics={"top-1": 77.2, "top-5": 93.8}, evaluated="ImageNet-1k, 256x256 single crop",
        source="file: pjreddie.com/darknet/imagenet; figures: YOLOv3 paper (arXiv 1804.02767) Table 2; no public "
               "hash: the size is pinned (a 20-byte header + 41,645,640 float32 values)",
        notes="classes in Darknet's order (data/imagenet.labels.list), not torchvision's"),
    PublishedWeights(
        model="darknet53", tag="darknet_conv74",
        file=FileSpec((DARKNET_FILES + "darknet53.conv.74",), "darknet53.conv.74", size=162_482_580),
        layout="darknet", license=DARKNET_LICENSE, dataset="ImageNet-1k", classes="", num_classes=0,
        input_size=256, preprocessing=DARKNET_INPUT, metrics={}, evaluated="backbone only: no published figure",
        source="file: pjreddie.com/darknet/yolo (YOLOv3's starting weights); no public hash: the size is pinned "
               "(a 20-byte header + 40,620,640 float32 values)",
        notes="the 52 backbone convs; the classifier (and YOLOv3's neck and head) start from scratch"),
)

register_none("detnet59", "the DetNet authors (Li et al., arXiv 1804.06215) released none, and the unofficial "
                          "ports' ImageNet files have layouts and figures of their own that cannot be checked")


def _torchvision_imagenet() -> ClassSet:
    from torchvision.models import ResNet50_Weights

    return ClassSet(tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"]))


def darknet_imagenet_order() -> list[str]:
    """Darknet's ImageNet-1k WordNet ids in its label order (``darknet_imagenet1k.txt``)."""
    text = resources.files(__package__).joinpath("darknet_imagenet1k.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _darknet_imagenet() -> ClassSet:
    """torchvision's names put in Darknet's label order: torchvision's index of a class is the rank of its
    WordNet id in sorted order (ImageNet's own index), Darknet's is its line in imagenet.labels.list."""
    wnids = darknet_imagenet_order()
    standard_index = {wnid: i for i, wnid in enumerate(sorted(wnids))}
    names = _torchvision_imagenet().names
    return ClassSet(tuple(names[standard_index[wnid]] for wnid in wnids))


register_class_set("imagenet", _torchvision_imagenet)
register_class_set("imagenet-darknet", _darknet_imagenet)


def published_rows(pattern: str = "*") -> list[dict[str, Any]]:
    """The registry as plain rows (what ``backbonekit weights`` prints): every entry matching ``pattern``,
    then the matching models that have no published weights, with why."""
    rows: list[dict[str, Any]] = []
    for entry in list_published(pattern):
        rows.append({
            "tag": entry.name, "model": entry.model, "default": entry.default, "urls": list(entry.file.urls),
            "file_name": entry.file.file_name, "size_bytes": entry.file.size, "size_mib": entry.size_mib,
            "sha256": entry.file.sha256 or None, "sha1": entry.file.sha1 or None, "layout": entry.layout,
            "license": entry.license, "dataset": entry.dataset, "classes": entry.classes or None,
            "num_classes": entry.num_classes, "input_size": entry.input_size,
            "preprocessing": dict(entry.preprocessing), "metrics": dict(entry.metrics), "evaluated": entry.evaluated,
            "source": entry.source, "model_kwargs": dict(entry.model_kwargs), "notes": entry.notes,
            "cache_path": str(cached_path(entry.file)), "cached": cached(entry)})
    for model, reason in sorted(models_without_weights().items()):
        if fnmatch.fnmatch(model, pattern):
            rows.append({"tag": model, "model": model, "no_weights": reason})
    return rows

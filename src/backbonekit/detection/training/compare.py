"""``backbonekit detect compare``: (detector, backbone) pairs trained on one dataset under one budget, side by side.

Each pair trains through ``detect train``'s trainer (:func:`.trainer.train`) into its own run folder,
with the same settings for all (dataset, input size, augmentation, optimizer and schedule, seed, and
``epochs`` or a ``time`` budget each); only options that belong to one detector (Faster R-CNN's proposal
counts) are set per detector. Every run's final report evaluates its best.pt on the same validation
split. The comparison then measures, in one process: parameters, MACs at the input size
(:func:`backbonekit.profiler.profile_model`) and inference images/s of every detector side by side
(:func:`backbonekit.bench.run_benchmark`: interleaved rounds, median), and writes::

    OUT/compare.yaml                the plan: pairs, shared settings, per-detector options
    OUT/runs/DETECTOR-BACKBONE/     each run folder (docs/detection-training.md)
    OUT/comparison.csv, .md         one row per pair
    OUT/frontier.png                mAP against inference latency, the Pareto front joined
    OUT/map_curves.png              validation mAP against training minutes, one line per pair
    OUT/report.html                 all of it on one page, linking each run's report

Run again on the same folder (or ``--resume OUT``), a comparison continues where it stopped: a finished run
(its report written) is read, not retrained; a run with a ``last.pt`` resumes; the others start.
Every pair is checked (registered backbone, a detector that can take it, a valid config) before anything
is written.
"""

from __future__ import annotations

import copy
import csv
import functools
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from ..._text import few, first_line
from ...checkpoint import atomic_open, atomic_path
from ...engine.runs import FAILED_START_FILES, LOCK_NAME, claim_run_folder
from .config import DETECTORS, DetectConfig, detect_config_keys

PLAN_FILE = "compare.yaml"
RUNS_FOLDER = "runs"
PER_PAIR_KEYS = ("model", "backbone", "out", "resume", "pretrained")  # set by the comparison, not shared
LOCAL_KEYS = ("device", "workers")  # where the comparison runs: may change when it continues
SPEED_IMAGES, SPEED_REPEATS = 16, 5
COLUMNS = {  # csv column: markdown/HTML heading
    "detector": "detector", "backbone": "backbone", "params_m": "params (M)", "gmacs": "GMACs",
    "images_per_s": "img/s", "latency_ms": "ms/img", "train_s_per_image": "train s/img", "epochs": "epochs",
    "train_min": "train min", "map": "mAP", "map_50": "mAP@.5", "map_75": "mAP@.75", "map_small": "mAP S",
    "map_medium": "mAP M", "map_large": "mAP L", "mar_100": "AR@100",
}
MAP_COLUMNS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100")

# Faster R-CNN's proposals per image on a CPU budget: torchvision keeps 2000 before and after the RPN's NMS in
# training (1000 in evaluation), sized for COCO's 800-1333 px images with up to ~100 objects; photodigits'
# 128 px images hold at most a handful of digits.
CPU_PROPOSALS = {"rpn_pre_nms_top_n_train": 600, "rpn_post_nms_top_n_train": 300,
                 "rpn_pre_nms_top_n_test": 300, "rpn_post_nms_top_n_test": 150}


@dataclass(frozen=True)
class Pair:
    """A detector on a backbone, written ``DETECTOR:BACKBONE`` (``retinanet:detnet59``)."""

    model: str
    backbone: str

    @classmethod
    def parse(cls, text: str) -> "Pair":
        model, sep, backbone = str(text).strip().partition(":")
        if not sep or not model or not backbone:
            raise ValueError(f"expected each pair as DETECTOR:BACKBONE (e.g. retinanet:resnet50), found {text!r}")
        if model not in DETECTORS:
            raise ValueError(f"pair {text}: unknown detector {model!r}, expected one of {', '.join(DETECTORS)}")
        return cls(model, backbone)

    def __str__(self) -> str:
        return f"{self.model}:{self.backbone}"

    @property
    def folder(self) -> str:
        return f"{self.model}-{self.backbone}"


@dataclass
class ComparePlan:
    """What a comparison trains: ``pairs``, the ``detect train`` options every pair shares (``settings``),
    options of one detector only (``model_options``, e.g. ``{"fasterrcnn": CPU_PROPOSALS}``), and the
    inference timing (validation images per round, rounds)."""

    pairs: list[Pair]
    settings: dict[str, Any] = field(default_factory=dict)
    model_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    speed_images: int = SPEED_IMAGES
    speed_repeats: int = SPEED_REPEATS

    def to_dict(self) -> dict[str, Any]:
        return {"pairs": [str(p) for p in self.pairs], "settings": dict(self.settings),
                "model_options": {k: dict(v) for k, v in self.model_options.items()},
                "speed_images": self.speed_images, "speed_repeats": self.speed_repeats}

    def config(self, pair: Pair, out: Path) -> DetectConfig:
        """The ``detect train`` config of ``pair``: shared settings, its detector's options, its run folder."""
        values = {**self.settings, **self.model_options.get(pair.model, {}), "model": pair.model,
                  "backbone": pair.backbone, "out": str(out / RUNS_FOLDER / pair.folder)}
        try:
            return DetectConfig(**values)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"pair {pair}: {first_line(exc, None)}") from None


# The question on 2 CPU cores in about an hour: 7 pairs of 7 minutes each (training and per-epoch
# validation; the final evaluation and the timing come on top), device auto, so a GPU runs it unchanged.
PRESETS: dict[str, ComparePlan] = {
    "cpu-hour": ComparePlan(
        pairs=[Pair.parse(p) for p in ("retinanet:resnet50", "retinanet:detnet59", "yolov3:darknet53",
                                       "yolov3:resnet18", "yolov3:resnet50", "fasterrcnn:resnet50",
                                       "fasterrcnn:detnet59")],
        settings={"dataset": "photodigits", "input_size": 128, "batch_size": 16, "time": "7m", "seed": 0,
                  "device": "auto"},
        model_options={"fasterrcnn": dict(CPU_PROPOSALS)}),
}


@dataclass
class ComparisonResult:
    out: Path
    rows: list[dict[str, Any]]  # one per pair, keys: COLUMNS


# -- the plan ---------------------------------------------------------------------------------------

def make_plan(pairs: Sequence[str] | None = None, *, preset: str | None = None,
              settings: Mapping[str, Any] | None = None, config_file: str | None = None,
              model_options: Mapping[str, Mapping[str, Any]] | None = None, speed_images: int | None = None,
              speed_repeats: int | None = None) -> ComparePlan:
    """A plan from a preset (or nothing), then a ``detect train`` config file of shared options, then
    ``settings``; ``pairs`` replace the preset's. One ValueError line for anything no comparison can run."""
    from ...engine.config import read_config_file, renamed_keys

    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: expected one of {', '.join(PRESETS)}")
    plan = copy.deepcopy(PRESETS[preset]) if preset else ComparePlan([])
    if pairs:
        plan.pairs = [Pair.parse(p) for p in pairs]
    if config_file is not None:
        plan.settings.update(read_config_file(config_file, DetectConfig))
    plan.settings.update(renamed_keys(settings or {}, DetectConfig, "the shared settings"))
    models = {pair.model for pair in plan.pairs}
    for model, options in (model_options or {}).items():
        options = renamed_keys(options, DetectConfig, f"{model}'s options")
        if options and model not in models:
            raise ValueError(f"options of {model} ({', '.join(options)}) given, but no {model} pair among "
                             f"{', '.join(map(str, plan.pairs))}")
        plan.model_options.setdefault(model, {}).update(options)
    # a preset's options for a detector its pairs no longer include have nothing to apply to
    plan.model_options = {k: v for k, v in plan.model_options.items() if v and k in models}
    if speed_images is not None:
        plan.speed_images = speed_images
    if speed_repeats is not None:
        plan.speed_repeats = speed_repeats
    check_plan_fields(plan)
    return plan


def check_plan_fields(plan: ComparePlan) -> None:
    """The plan's shape: pairs, known keys, positive timing counts (each pair is checked by :func:`check_pairs`)."""
    if not plan.pairs:
        raise ValueError(f"expected pairs to compare (--pairs DETECTOR:BACKBONE ...) or a preset "
                         f"({', '.join(PRESETS)}), found none")
    labels = [str(p) for p in plan.pairs]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"each pair once: found {', '.join(repeated)} more than once")
    shareable = set(detect_config_keys()) - set(PER_PAIR_KEYS)
    for where, keys in [("shared settings", plan.settings)] + [(f"{m} options", o) for m, o in plan.model_options.items()]:
        unknown = sorted(set(keys) - shareable)
        if unknown:
            per_pair = [k for k in unknown if k in PER_PAIR_KEYS]
            note = f" ({', '.join(per_pair)}: set per pair by the comparison)" if per_pair else ""
            raise ValueError(f"{where}: expected detect train options other than {', '.join(PER_PAIR_KEYS)}, "
                             f"found {', '.join(unknown)}{note}")
    if plan.settings.get("nproc", 1) != 1:
        raise ValueError(f"nproc: detect compare trains the pairs one at a time in this process; expected 1, "
                         f"found {plan.settings['nproc']!r}")
    unknown_models = sorted(set(plan.model_options) - set(DETECTORS))
    if unknown_models:
        raise ValueError(f"per-detector options for {', '.join(unknown_models)}: expected detectors among "
                         f"{', '.join(DETECTORS)}")
    for name in ("speed_images", "speed_repeats"):
        value = getattr(plan, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, found {value!r}")


def check_pairs(plan: ComparePlan, out: Path) -> list[tuple[Pair, DetectConfig]]:
    """Each pair's config, every pair built once on the meta device (no memory, no weights): an unknown
    backbone or a detector that cannot take it is one ValueError line naming the pair, before any training."""
    configs = [(pair, plan.config(pair, out)) for pair in plan.pairs]
    for pair, cfg in configs:
        try:
            _build_on_meta(cfg)
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"pair {pair}: {first_line(exc, None)}") from None
    return configs


def _build_on_meta(cfg: DetectConfig) -> None:
    from ...models import create_model
    from ...models import model_info

    if model_info(cfg.backbone).task != "classification":  # KeyError with close matches for unknown names
        raise ValueError(f"expected a backbone (backbonekit models), found the detector {cfg.backbone!r}")
    with torch.device("meta"):
        if cfg.model == "yolov3":
            create_model("yolov3", backbone=cfg.backbone, num_classes=1, input_size=cfg.input_size,
                         neck_channels=list(cfg.neck_channels))
        else:
            create_model(cfg.model, backbone=cfg.backbone, num_classes=1, min_size=cfg.input_size,
                         max_size=cfg.input_size, fpn_min_level=cfg.fpn_min_level, **cfg.rpn_proposals)


def read_plan(out: str | Path) -> ComparePlan:
    """The plan a comparison folder was started with (its ``compare.yaml``)."""
    import yaml

    from ...engine.config import renamed_keys

    path = Path(out) / PLAN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no comparison in {out}: expected {path}, written by backbonekit detect compare")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        # a plan saved before a detect train option was renamed: its old names, read silently
        plan = ComparePlan(pairs=[Pair.parse(p) for p in data["pairs"]],
                           settings=renamed_keys(data.get("settings") or {}, DetectConfig),
                           model_options={k: renamed_keys(v, DetectConfig)
                                          for k, v in (data.get("model_options") or {}).items()},
                           speed_images=data.get("speed_images", SPEED_IMAGES),
                           speed_repeats=data.get("speed_repeats", SPEED_REPEATS))
    except (yaml.YAMLError, KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: expected the plan written by backbonekit detect compare "
                         f"({first_line(exc)})") from None
    check_plan_fields(plan)
    return plan


def _plan_difference(saved: ComparePlan, given: ComparePlan) -> str | None:
    """The first difference between two plans, LOCAL_KEYS aside (None when they are the same comparison)."""
    a, b = saved.to_dict(), given.to_dict()
    for plan in (a, b):
        plan["settings"] = {k: v for k, v in plan["settings"].items() if k not in LOCAL_KEYS}
    for key in a:
        if a[key] != b[key]:
            if isinstance(a[key], dict):
                inner = sorted(k for k in set(a[key]) | set(b[key]) if a[key].get(k) != b[key].get(k))
                return f"{key}.{inner[0]} {a[key].get(inner[0])!r} -> {b[key].get(inner[0])!r}"
            return f"{key} {a[key]!r} -> {b[key]!r}"
    return None


# -- running ----------------------------------------------------------------------------------------

def compare(plan: ComparePlan, out: str | Path, *, log: Callable[[str], None] = print) -> ComparisonResult:
    """Train every pair of ``plan`` into ``out`` (or continue the comparison there), then measure and write
    the table, the plots and the report (this module's docstring; docs/detection-compare.md)."""
    from .splits import load_splits

    out = Path(out)
    check_plan_fields(plan)
    configs = check_pairs(plan, out)
    train_set, val_set = load_splits(configs[0][1])  # bad data: one line, before anything is written
    _check_folder(out, plan)
    with claim_run_folder(out, new=False):
        _check_folder(out, plan)  # again, now that no other process can write it
        _write_plan(out, plan)
        for index, (pair, cfg) in enumerate(configs, 1):
            _train_pair(pair, cfg, out, prefix=f"[{index}/{len(configs)}] {pair}: ", log=log)
        rows = measure(configs, train_set, val_set, plan, log=log)
        write_outputs(out, rows, configs, plan)
    log(f"comparison of {len(rows)} pairs: {out / 'comparison.md'}, {out / 'frontier.png'}, {out / 'report.html'}")
    return ComparisonResult(out, rows)


def resume_comparison(out: str | Path, *, device: str | None = None, workers: int | None = None,
                      log: Callable[[str], None] = print) -> ComparisonResult:
    """Continue the comparison in ``out`` with the plan it was started with (``device``/``workers``: here)."""
    plan = read_plan(out)
    local = {k: v for k, v in (("device", device), ("workers", workers)) if v is not None}
    plan.settings.update(local)
    return compare(plan, out, log=log)


def _check_folder(out: Path, plan: ComparePlan) -> None:
    """``out`` is new, empty, or this comparison's folder; never another one's or the user's files."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: expected a folder, found a file")
    if (out / PLAN_FILE).is_file():
        difference = _plan_difference(read_plan(out), plan)
        if difference:
            raise ValueError(f"comparison folder {out} was started with another plan ({difference}): rerun it "
                             f"with the same options (or --resume {out}), or choose another --out")
        return
    found = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME) if out.is_dir() else []
    if found:
        raise ValueError(f"--out {out}: expected a new or empty folder for a comparison (or one started by "
                         f"detect compare, with {PLAN_FILE}), found {len(found)} other file(s) {few(found)}")


def _write_plan(out: Path, plan: ComparePlan) -> None:
    import yaml

    with atomic_open(out / PLAN_FILE) as f:
        f.write(yaml.safe_dump(plan.to_dict(), sort_keys=False).encode("utf-8"))


def run_state(folder: Path) -> str:
    """``done`` (its final report is written), ``partial`` (a last.pt to resume) or ``new``."""
    if all((folder / name).is_file() for name in ("best.pt", "last.pt", "eval.json", "report.html")):
        return "done"
    return "partial" if (folder / "last.pt").is_file() else "new"


def _train_pair(pair: Pair, cfg: DetectConfig, out: Path, prefix: str, log: Callable[[str], None]) -> None:
    from .trainer import train

    folder = Path(cfg.out)
    state = run_state(folder)
    pair_log = lambda line: log(prefix + line)  # noqa: E731
    if state == "done":
        _check_run_is_the_pair(folder, pair)
        pair_log(f"finished earlier, kept ({folder})")
        return
    if state == "partial":
        _check_run_is_the_pair(folder, pair)
        pair_log(f"continuing {folder}")
        train(DetectConfig(resume=str(folder), device=cfg.device, workers=cfg.workers),
              given={"resume", "device", "workers"}, log=pair_log)
        return
    _remove_failed_start(folder)
    pair_log(f"training into {folder}")
    train(cfg, log=pair_log)


def _check_run_is_the_pair(folder: Path, pair: Pair) -> None:
    import yaml

    saved = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8")) \
        if (folder / "config.yaml").is_file() else {}
    if (saved or {}).get("model") != pair.model or saved.get("backbone") != pair.backbone:
        raise ValueError(f"{folder}: expected the run of {pair}, found a run of "
                         f"{(saved or {}).get('model')}:{(saved or {}).get('backbone')}")


def _remove_failed_start(folder: Path) -> None:
    """What a run killed before its first last.pt left (the trainer removes it itself unless killed hard)."""
    if not folder.is_dir():
        return
    found = sorted(p.name for p in folder.iterdir())
    other = [name for name in found if name not in FAILED_START_FILES + (LOCK_NAME,)]
    if other:
        raise ValueError(f"{folder}: expected a run folder of this comparison (or nothing), found {few(other)}")
    for name in FAILED_START_FILES:
        (folder / name).unlink(missing_ok=True)


# -- measuring ----------------------------------------------------------------------------------------

def measure(configs: Sequence[tuple[Pair, DetectConfig]], train_set, val_set, plan: ComparePlan, *,
            log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """One row per pair: its run's figures (eval.json, metrics.csv), parameters and MACs of its best.pt at
    the input size, and inference images/s of all of them timed side by side in this process."""
    from ...bench import Candidate, run_benchmark
    from ...profiler import profile_model
    from ...engine.device import resolve_device
    from ...engine.report import read_metrics
    from ..loading import load_run_checkpoint

    device = resolve_device(configs[0][1].device)
    rows, candidates = [], []
    images = [val_set[i][0].to(device).float().div_(255) for i in range(min(plan.speed_images, len(val_set)))]
    for pair, cfg in configs:
        folder = Path(cfg.out)
        model, _ = load_run_checkpoint(folder / "best.pt", device)
        summary = json.loads((folder / "eval.json").read_text(encoding="utf-8"))["summary"]
        epochs = read_metrics(folder / "metrics.csv")
        train_s = sum(row["time_s"] for row in epochs)
        trained = _trained_images(epochs, _images_per_epoch(len(train_set), cfg.batch_size, cfg.nproc))
        rows.append({"detector": pair.model, "backbone": pair.backbone,
                     "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                     "gmacs": profile_model(model, cfg.input_size).macs / 1e9,
                     "train_s_per_image": train_s / max(1, trained),
                     "epochs": len(epochs), "train_min": train_s / 60,
                     **{k: float(summary[k]) for k in MAP_COLUMNS}})
        candidates.append(Candidate(str(pair), functools.partial(_detect, model, images, cfg), len(images)))
    log(f"timing inference of {len(candidates)} detectors side by side ({len(images)} validation images, "
        f"{plan.speed_repeats} rounds, {device})")
    for row, result in zip(rows, run_benchmark(candidates, len(images), warmup=1, repeats=plan.speed_repeats,
                                               device=device)):
        row["images_per_s"] = result.images_per_s_median
        row["latency_ms"] = 1000.0 / result.images_per_s_median
    return [{key: row[key] for key in COLUMNS} for row in rows]


def _trained_images(epochs: Sequence[Mapping[str, float]], per_epoch: int) -> int:
    """Images the run's epochs trained on: metrics.csv's ``images`` (an epoch a --time budget ended early
    trained on fewer), else ``per_epoch`` each (runs written before that column)."""
    return int(sum(row.get("images", per_epoch) for row in epochs))


def _images_per_epoch(train_images: int, batch_size: int, processes: int) -> int:
    """Images one epoch trains on: each process's share, in whole batches (incomplete ones are dropped)."""
    return (train_images // processes) // batch_size * batch_size * processes


def _detect(model: torch.nn.Module, images: list[torch.Tensor], cfg: DetectConfig) -> Any:
    with torch.inference_mode():
        return model.detect(images, score_thresh=cfg.score_thresh, nms_thresh=cfg.nms_thresh)


# -- writing ------------------------------------------------------------------------------------------

def write_outputs(out: Path, rows: list[dict[str, Any]], configs: Sequence[tuple[Pair, DetectConfig]],
                  plan: ComparePlan) -> None:
    """comparison.csv and .md, frontier.png, map_curves.png and report.html."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(COLUMNS))
    writer.writeheader()
    writer.writerows(rows)
    with atomic_open(out / "comparison.csv") as f:
        f.write(text.getvalue().encode("utf-8"))
    with atomic_open(out / "comparison.md") as f:
        f.write((markdown_table(rows) + "\n").encode("utf-8"))
    from ...engine.device import resolve_device

    device = resolve_device(configs[0][1].device).type
    plot_frontier(rows, out / "frontier.png", f"ms per image, batch {plan.speed_images}, {device}")
    plot_map_curves(configs, out / "map_curves.png")
    write_report(out, rows, configs, plan)


def _cells(row: Mapping[str, Any]) -> list[str]:
    """A row as text: mAPs in percent (``n/a`` where COCO counts nothing: -1, a size class absent)."""
    cells = []
    for key in COLUMNS:
        value = row[key]
        if key in MAP_COLUMNS:
            cells.append("n/a" if value < 0 else f"{100 * value:.1f}")
        elif isinstance(value, str):
            cells.append(value)
        elif key == "epochs":
            cells.append(str(int(value)))
        elif key == "train_s_per_image":
            cells.append(f"{value:.4f}")
        else:
            cells.append(f"{value:.3g}" if value < 100 else f"{value:.0f}")
    return cells


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS.values()) + " |", "|" + "---|" * len(COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(_cells(row)) + " |" for row in rows])


def pareto_front(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The rows no other row beats on both latency and mAP, fastest first."""
    front, best = [], -math.inf
    for row in sorted(rows, key=lambda r: (r["latency_ms"], -r["map"])):
        if row["map"] > best:
            front.append(row)
            best = row["map"]
    return front


def _save(fig, path: Path) -> None:
    from ...engine.report import pyplot

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    pyplot().close(fig)


def plot_frontier(rows: Sequence[Mapping[str, Any]], path: Path, latency_label: str) -> None:
    """mAP@[.5:.95] against inference latency, one colour per pair (in the legend, so close points cannot hide
    each other's labels; the colours of :func:`plot_map_curves`), the Pareto front ringed and joined."""
    from ...engine.report import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for row in rows:
        ax.scatter(row["latency_ms"], 100 * row["map"], s=36, label=f"{row['detector']}:{row['backbone']}")
    front = pareto_front(rows)
    ax.plot([r["latency_ms"] for r in front], [100 * r["map"] for r in front], "--o", color="gray",
            markerfacecolor="none", markersize=11, label="Pareto front (no pair faster and better)")
    ax.set(xlabel=f"inference latency ({latency_label})", ylabel="mAP@[.5:.95] (%)",
           title="Accuracy against speed")
    ax.margins(x=0.1, y=0.1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_map_curves(configs: Sequence[tuple[Pair, DetectConfig]], path: Path) -> None:
    """Validation mAP after each epoch against the training minutes spent, one line per pair."""
    from ...engine.report import pyplot, read_metrics

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for pair, cfg in configs:
        rows = read_metrics(Path(cfg.out) / "metrics.csv")
        minutes = [sum(r["time_s"] for r in rows[:i + 1]) / 60 for i in range(len(rows))]
        ax.plot(minutes, [100 * r["map"] for r in rows], "o-", markersize=3, label=str(pair))
    ax.set(xlabel="training minutes (without validation)", ylabel="validation mAP@[.5:.95] (%)",
           title="mAP per epoch: has it stopped rising?")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def write_report(out: Path, rows: Sequence[Mapping[str, Any]], configs: Sequence[tuple[Pair, DetectConfig]],
                 plan: ComparePlan) -> Path:
    """report.html: the table, both plots, the plan, the machine, and a link to each run's report."""
    import yaml

    from ...bench import environment
    from ...engine.device import resolve_device
    from ...engine.report import html_table, write_page

    links = "".join(f"<li><a href=\"{RUNS_FOLDER}/{pair.folder}/report.html\">{html.escape(str(pair))}</a></li>"
                    for pair, _ in configs)
    env = environment(resolve_device(configs[0][1].device))
    parts = [f"<h1>backbonekit detector comparison: {html.escape(out.name)}</h1>",
             f"<p>{len(rows)} pairs trained on {html.escape(str(plan.settings.get('dataset', 'photodigits')))} with "
             f"the same settings; mAP of each run's best.pt on the validation split (COCO definitions; n/a: no "
             f"object of that size); ms/img: <code>model.detect</code> on {plan.speed_images} validation images, "
             f"median of {plan.speed_repeats} interleaved rounds in one process.</p>",
             html_table(list(COLUMNS.values()), (_cells(row) for row in rows)),
             "<h2>Accuracy against speed</h2><img src=\"frontier.png\" alt=\"mAP against latency\">",
             "<h2>mAP per epoch</h2><img src=\"map_curves.png\" alt=\"mAP against training minutes\">",
             f"<h2>Runs</h2><ul>{links}</ul>",
             f"<h2>Plan ({PLAN_FILE})</h2><pre>{html.escape(yaml.safe_dump(plan.to_dict(), sort_keys=False))}</pre>",
             f"<h2>Machine</h2><pre>{html.escape(json.dumps(env, indent=1))}</pre>"]
    return write_page(out / "report.html", f"backbonekit comparison {out.name}", parts)

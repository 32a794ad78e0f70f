"""Detection report files: per-class AP, PR curves, predictions drawn on images, curves and report.html.

:func:`write_evaluation` writes what one evaluation found (``eval.json``, ``per_class_ap.txt/.json``,
``pr_curves.png``, ``predictions.png``, ``detections.json``); :func:`write_run_report` rebuilds ``curves.png``,
``pr_curves.png`` and ``report.html`` from the files in a run folder alone
(``python -m backbonekit.detection.training.report RUN_DIR``). Plots use matplotlib (Agg).
"""

from __future__ import annotations

import html
import json
import math
import sys
from pathlib import Path
from typing import Sequence

from torch import Tensor

from ...checkpoint import atomic_open
from ...engine.report import pyplot, read_metrics, save_epoch_figure, save_figure, write_run_page
from .metrics import DetectionMetrics, format_table

PRED_STYLE = {"edgecolor": "#e8112d", "linestyle": "-", "linewidth": 1.6}  # predictions: solid red
TRUE_STYLE = {"edgecolor": "#00c853", "linestyle": "--", "linewidth": 1.6}  # ground truth: dashed green
GRID_COLUMNS = 4
MAP_CURVES = (("map", "mAP@[.5:.95]"), ("map_50", "mAP@.5"), ("map_75", "mAP@.75"))
RUN_IMAGES = (("curves.png", "Loss parts and mAP"), ("pr_curves.png", "Precision-recall per class"),
              ("predictions.png", "Validation predictions (red) and ground truth (dashed green)"))
RUN_TEXTS = (("per_class_ap.txt", "COCO summary and AP per class (pycocotools via torchmetrics)"),
             ("config.yaml", "Config (config.yaml: rerun with backbonekit detect train --config)"))


def write_evaluation(out: str | Path, metrics: DetectionMetrics, samples: Sequence[tuple[Tensor, dict, dict]],
                     classes: Sequence[str], title: str, detections: Sequence[dict] | None = None) -> None:
    """eval.json, per_class_ap.txt/.json, pr_curves.png and predictions.png for one evaluation, and
    ``detections`` (:func:`coco_detections`) as detections.json when given.

    ``samples``: (uint8 image (3, H, W), prediction, ground truth) triples to draw.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "per_class_ap.txt").write_text(f"{title}\n\n{format_table(metrics)}\n", encoding="utf-8")
    per_class = {name: {"ap": metrics.per_class_ap[name], "ap50": metrics.per_class_ap50.get(name, -1.0)}
                 for name in metrics.per_class_ap}
    (out / "per_class_ap.json").write_text(json.dumps(per_class, indent=2), encoding="utf-8")
    (out / "eval.json").write_text(json.dumps({"title": title, "summary": metrics.summary, "per_class": per_class,
                                               "notes": metrics.notes(), "pr_curves": metrics.pr_curves}, indent=1),
                                   encoding="utf-8")
    if detections is not None:
        with atomic_open(out / "detections.json") as f:
            f.write(json.dumps(list(detections)).encode("utf-8"))
    plot_pr_curves(metrics.pr_curves, out / "pr_curves.png")
    plot_predictions(samples, classes, out / "predictions.png")


def coco_detections(items: Sequence[tuple[int, dict, dict]], category_ids: Sequence[int] | None) -> list[dict]:
    """An evaluation's detections (:func:`~.engine.evaluate`'s items) in COCO's results format, what
    pycocotools' ``loadRes`` reads: each target's ``image_id`` (a COCO file's own), each label's id in
    ``category_ids`` (the label itself when None), ``bbox`` as [x, y, w, h] converted exactly as
    torchmetrics hands boxes to pycocotools, unrounded, so COCOeval on this file repeats the figures."""
    from torchvision.ops import box_convert

    rows = []
    for _, pred, target in items:
        image_id = int(target["image_id"])
        boxes = box_convert(pred["boxes"].float(), "xyxy", "xywh").tolist()
        for box, score, label in zip(boxes, pred["scores"].float().tolist(), pred["labels"].tolist()):
            category = category_ids[label] if category_ids is not None else label
            rows.append({"image_id": image_id, "category_id": int(category), "bbox": box, "score": score})
    return rows


def plot_pr_curves(curves: dict[str, list[float]], path: Path) -> None:
    """Precision against recall (IoU 0.5, COCO's 101 recall points) for each class, one panel per class."""
    plt = pyplot()
    names = list(curves)
    cols = min(5, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.4 * rows + 0.5), squeeze=False)
    recall = [i / 100 for i in range(101)]
    for ax in axes.flat:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        ax.axis("on")
        precision = curves[name]
        ap50 = sum(precision) / len(precision) if precision else 0.0
        ax.plot(recall, precision, color="#1f77b4")
        ax.fill_between(recall, precision, alpha=0.15)
        ax.set(xlim=(0, 1), ylim=(0, 1.02), title=f"{name}  AP50 {100 * ap50:.1f}")
        ax.title.set_fontsize(9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("Precision-recall per class (IoU 0.5; x: recall, y: precision)", fontsize=10)
    save_figure(fig, path, dpi=100)


def _draw(ax, image: Tensor, pred: dict | None, target: dict | None, classes: Sequence[str]) -> None:
    from matplotlib.patches import Rectangle

    ax.imshow(image.permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
    ax.set_xticks([]), ax.set_yticks([])
    for boxes, labels, scores, style in (
            (target["boxes"], target["labels"], None, TRUE_STYLE) if target is not None else (None,) * 4,
            (pred["boxes"], pred["labels"], pred["scores"], PRED_STYLE) if pred is not None else (None,) * 4):
        if boxes is None:
            continue
        for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, **style))
            label = int(labels[i])
            name = classes[label] if 0 <= label < len(classes) else str(label)
            text = name if scores is None else f"{name} {float(scores[i]):.2f}"
            ax.text(x1, y1 if scores is not None else y2, text, fontsize=7, color="white",
                    va="bottom" if scores is not None else "top",
                    bbox={"facecolor": style["edgecolor"], "alpha": 0.75, "pad": 0.5, "linewidth": 0})


def plot_predictions(samples: Sequence[tuple[Tensor, dict, dict]], classes: Sequence[str], path: Path,
                     min_score: float = 0.25) -> None:
    """Validation images with predictions (solid red, score >= ``min_score``) and ground truth (dashed green)."""
    plt = pyplot()
    rows = max(1, math.ceil(len(samples) / GRID_COLUMNS))
    fig, axes = plt.subplots(rows, GRID_COLUMNS, figsize=(3 * GRID_COLUMNS, 3 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image, pred, target) in zip(axes.flat, samples):
        ax.axis("on")
        keep = pred["scores"] >= min_score
        _draw(ax, image, {k: v[keep] for k, v in pred.items()}, target, classes)
    fig.suptitle(f"Predictions (solid red, score >= {min_score}) and ground truth (dashed green)", fontsize=10)
    save_figure(fig, path, dpi=100)


def draw_detections(image: Tensor, pred: dict, target: dict | None, classes: Sequence[str], path: Path) -> None:
    """One image with its detections (and ground truth, if given) drawn, saved to ``path``."""
    plt = pyplot()
    h, w = image.shape[-2:]
    fig, ax = plt.subplots(figsize=(max(3.0, w / 100), max(3.0, h / 100)))
    _draw(ax, image, pred, target, classes)
    save_figure(fig, path, dpi=100)


def plot_curves(rows: Sequence[dict[str, float]], path: Path) -> None:
    """Each training-loss part and the validation mAPs per epoch."""
    plt = pyplot()
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(12, 4.2))
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], "o-", color="black", label="total")
    parts = [k for k in rows[0] if k.startswith("train_") and k != "train_loss"] if rows else []
    for key in parts:  # each detector's own loss parts (YOLOv3's, or torchvision's names)
        ax_loss.plot(epochs, [r[key] for r in rows], ".-", label=key.removeprefix("train_").removeprefix("loss_"))
    ax_loss.set(title="Training loss per image", xlabel="epoch", ylabel="loss", yscale="log")
    for key, label in MAP_CURVES:
        ax_map.plot(epochs, [100 * r[key] for r in rows], "o-", label=label)
    ax_map.set(title="Validation mAP (COCO)", xlabel="epoch", ylabel="%", ylim=(0, 100))
    save_epoch_figure(fig, (ax_loss, ax_map), path, legend_size=8)


def write_run_report(run_dir: str | Path) -> Path:
    """curves.png, pr_curves.png and report.html from metrics.csv, eval.json and the files present."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / "metrics.csv") if (run_dir / "metrics.csv").is_file() else []
    if rows:
        plot_curves(rows, run_dir / "curves.png")
    return write_run_page(run_dir, "detector run", _final_figures(run_dir), rows, RUN_IMAGES, RUN_TEXTS)


def _final_figures(run_dir: Path) -> str | None:
    """The final mAPs of eval.json (drawing pr_curves.png from it when missing)."""
    if not (run_dir / "eval.json").is_file():
        return None
    ev = json.loads((run_dir / "eval.json").read_text(encoding="utf-8"))
    if not (run_dir / "pr_curves.png").is_file():
        plot_pr_curves(ev.get("pr_curves", {}), run_dir / "pr_curves.png")
    s = ev["summary"]
    return (f"{html.escape(ev['title'])}: mAP@[.5:.95] <b>{100 * s['map']:.1f}</b>, "
            f"mAP@.5 <b>{100 * s['map_50']:.1f}</b>, mAP@.75 {100 * s['map_75']:.1f}.")


if __name__ == "__main__":
    print(write_run_report(sys.argv[1] if len(sys.argv) > 1 else "."))

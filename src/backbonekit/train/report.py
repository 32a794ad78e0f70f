"""Report files in a run folder: scikit-learn classification report, plots (matplotlib, Agg) and report.html.

``write_run_report`` rebuilds curves.png and report.html from the files in the folder alone, so a
report can be regenerated at any time (``python -m backbonekit.train.report RUN_DIR``).
"""

from __future__ import annotations

import html
import json
import sys
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..engine.report import pyplot, read_metrics, save_epoch_figure, save_figure, write_run_page
from .data import DataBundle, Split
from .engine import EvalResult

MAX_ANNOTATED_CLASSES = 20  # beyond this the confusion-matrix counts are unreadable
GRID_COLUMNS, GRID_ROWS = 8, 4
PERCENT_COLUMNS = ("train_acc", "val_top1", "val_top5")  # metrics.csv's accuracies, shown in % in report.html
RUN_IMAGES = (("curves.png", "Loss and accuracy"), ("confusion_matrix.png", "Confusion matrix"),
              ("predictions.png", "Test predictions (mistakes in red)"))
RUN_TEXTS = (("classification_report.txt", "Classification report (scikit-learn)"),
             ("config.yaml", "Config (config.yaml: rerun with backbonekit train --config)"))


def write_evaluation(out: str | Path, ev: EvalResult, data: DataBundle, title: str) -> None:
    """classification_report.txt/.json, confusion_matrix.png, predictions.png and eval.json for ``ev``."""
    from sklearn.metrics import classification_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = list(range(data.num_classes))
    y_true, y_pred = ev.targets.tolist(), ev.preds.tolist()
    text = classification_report(y_true, y_pred, labels=labels, target_names=data.classes, digits=4,
                                 zero_division=0)
    (out / "classification_report.txt").write_text(f"{title}\n\n{text}", encoding="utf-8")
    as_dict = classification_report(y_true, y_pred, labels=labels, target_names=data.classes,
                                    output_dict=True, zero_division=0)
    (out / "classification_report.json").write_text(json.dumps(as_dict, indent=2), encoding="utf-8")
    (out / "eval.json").write_text(json.dumps({"title": title, "count": ev.count, "loss": ev.loss,
                                               **ev.accuracies()}, indent=2), encoding="utf-8")
    plot_confusion_matrix(y_true, y_pred, data.classes, out / "confusion_matrix.png")
    write_predictions_grid(data.val, ev, data.classes, out / "predictions.png")


def write_predictions_grid(split: Split | Dataset, ev: EvalResult, classes: Sequence[str], path: Path) -> None:
    """predictions.png: decodes only the images drawn for the grid, whatever the split's size."""
    positions = torch.tensor(select_for_grid(ev.targets, ev.preds, GRID_COLUMNS * GRID_ROWS), dtype=torch.long)
    plot_predictions(images_at(split, ev.indices[positions]), ev.targets[positions], ev.preds[positions], classes,
                     path, mistakes=int((ev.targets != ev.preds).sum()), total=len(ev.targets))


def images_at(split: Split | Dataset, indices: Tensor) -> Tensor:
    """uint8 (N, 3, H, W) images of a split by dataset index, on the CPU; reads only those indices."""
    if isinstance(split, Split):
        return split.images[indices.to(split.images.device)].cpu()
    if len(indices) == 0:
        return torch.zeros(0, 3, 1, 1, dtype=torch.uint8)
    return torch.stack([split[int(i)][0] for i in indices])


def plot_confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str], path: Path) -> None:
    """Counts with class names (annotated up to 20 classes), scikit-learn's ConfusionMatrixDisplay."""
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = pyplot()
    n = len(classes)
    size = min(max(6.0, 0.55 * n + 2), 30.0)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    ConfusionMatrixDisplay.from_predictions(
        y_true, y_pred, labels=list(range(n)), display_labels=list(classes), cmap="Blues", ax=ax,
        values_format="d", include_values=n <= MAX_ANNOTATED_CLASSES, xticks_rotation=45 if n > 10 else 0,
        colorbar=True)
    ax.set_title(f"Confusion matrix ({len(y_true)} images)")
    save_figure(fig, path)


def select_for_grid(targets: Tensor, preds: Tensor, count: int) -> list[int]:
    """Up to half the grid are mistakes (if any), the rest correct predictions, in dataset order.

    Only the first ``count`` of each kind become Python values: the cost stays flat in the split's size.
    """
    wrong = (targets != preds).nonzero().flatten()[:count].tolist()
    right = (targets == preds).nonzero().flatten()[:count].tolist()
    chosen_wrong = wrong[: count // 2]
    chosen = chosen_wrong + right[: count - len(chosen_wrong)]
    if len(chosen) < count:
        chosen += wrong[len(chosen_wrong): len(chosen_wrong) + count - len(chosen)]
    return sorted(chosen)


def plot_predictions(images: Tensor, targets: Tensor, preds: Tensor, classes: Sequence[str], path: Path, *,
                     mistakes: int | None = None, total: int | None = None) -> None:
    """A grid of the given test images titled with true and predicted labels; mistakes in red with a red frame.

    ``mistakes``/``total``: the figures of the whole evaluation for the title (default: of the images given).
    """
    plt = pyplot()
    positions = range(min(len(images), GRID_COLUMNS * GRID_ROWS))
    rows = max(1, (len(positions) + GRID_COLUMNS - 1) // GRID_COLUMNS)
    fig, axes = plt.subplots(rows, GRID_COLUMNS, figsize=(GRID_COLUMNS * 1.6, rows * 2.3 + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, positions):
        t, p = int(targets[i]), int(preds[i])
        ax.imshow(images[i].permute(1, 2, 0).numpy(), interpolation="nearest")
        wrong = t != p
        ax.set_title(f"true: {classes[t]}\npred: {classes[p]}", fontsize=8, color="red" if wrong else "black", pad=3)
        if wrong:
            ax.axis("on")
            ax.set_xticks([]), ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor("red")
                spine.set_linewidth(3)
    n_wrong = int((targets != preds).sum()) if mistakes is None else mistakes
    n_total = len(targets) if total is None else total
    fig.suptitle(f"Test predictions: {n_wrong} mistakes in {n_total} images (mistakes in red)", fontsize=10)
    save_figure(fig, path)


def plot_curves(rows: Sequence[dict[str, float]], path: Path) -> None:
    """Loss and accuracy per epoch, train and val."""
    plt = pyplot()
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in rows], "s-", label="val")
    ax_loss.set(title="Loss", xlabel="epoch", ylabel="cross-entropy")
    ax_acc.plot(epochs, [100 * r["train_acc"] for r in rows], "o-", label="train")
    ax_acc.plot(epochs, [100 * r["val_top1"] for r in rows], "s-", label="val top-1")
    ax_acc.set(title="Accuracy", xlabel="epoch", ylabel="%")
    save_epoch_figure(fig, (ax_loss, ax_acc), path)


def write_run_report(run_dir: str | Path) -> Path:
    """curves.png and report.html from config.yaml, metrics.csv, eval.json and the report files present."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / "metrics.csv") if (run_dir / "metrics.csv").is_file() else []
    if rows:
        plot_curves(rows, run_dir / "curves.png")
    return write_run_page(run_dir, "run", _final_figures(run_dir), rows, RUN_IMAGES, RUN_TEXTS, PERCENT_COLUMNS)


def _final_figures(run_dir: Path) -> str | None:
    if not (run_dir / "eval.json").is_file():
        return None
    ev = json.loads((run_dir / "eval.json").read_text(encoding="utf-8"))
    top5 = f"top-5 {100 * ev['top5']:.2f}%, " if ev.get("top5") is not None else ""
    return (f"{html.escape(ev['title'])}: top-1 <b>{100 * ev['top1']:.2f}%</b>, {top5}loss {ev['loss']:.4f} "
            f"on {ev['count']} images.")


if __name__ == "__main__":
    print(write_run_report(sys.argv[1] if len(sys.argv) > 1 else "."))

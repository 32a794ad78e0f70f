"""COCO mAP through torchmetrics/pycocotools, cross-checked against a small AP@0.5 written here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("torchmetrics")
pytest.importorskip("pycocotools")

from torchvision.ops import box_iou  # noqa: E402

from backbonekit.detection.training.metrics import DetectionEvaluator, format_table  # noqa: E402


def reference_ap50(preds, targets, label: int) -> float:
    """AP@0.5 with COCO's rules: greedy by score, best unmatched IoU >= 0.5, 101-point interpolation."""
    dets, num_gt = [], 0
    for image, (p, t) in enumerate(zip(preds, targets)):
        num_gt += int((t["labels"] == label).sum())
        keep = p["labels"] == label
        for box, score in zip(p["boxes"][keep], p["scores"][keep]):
            dets.append((float(score), image, box))
    dets.sort(key=lambda d: -d[0])
    matched = {i: set() for i in range(len(targets))}
    hits = []
    for _, image, box in dets:
        gt = targets[image]["boxes"][targets[image]["labels"] == label]
        best, best_iou = None, 0.5
        for g in range(len(gt)):
            iou = float(box_iou(box[None], gt[g][None]))
            if g not in matched[image] and iou >= best_iou:
                best, best_iou = g, iou
        if best is not None:
            matched[image].add(best)
        hits.append(best is not None)
    tp = torch.tensor(hits, dtype=torch.float64).cumsum(0)
    recall = tp / num_gt
    precision = tp / torch.arange(1, len(hits) + 1, dtype=torch.float64)
    for i in range(len(precision) - 2, -1, -1):  # the precision envelope, right to left
        precision[i] = max(precision[i], precision[i + 1])
    total = 0.0
    for r in np.linspace(0.0, 1.0, 101):  # pycocotools' Params.recThrs
        above = (recall >= float(r)).nonzero()
        total += float(precision[above[0, 0]]) if len(above) else 0.0
    return total / 101


def random_case(seed: int, images: int = 6, classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    preds, targets = [], []
    for _ in range(images):
        n = int(torch.randint(1, 5, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * 80
        gt = torch.cat([xy, xy + 10 + torch.rand(n, 2, generator=g) * 30], 1)
        labels = torch.randint(0, classes, (n,), generator=g)
        # detections: jittered copies of some ground truth (hits at various IoUs) plus random boxes
        jitter = gt + torch.randn(n, 4, generator=g) * 4
        noise_xy = torch.rand(3, 2, generator=g) * 80
        noise = torch.cat([noise_xy, noise_xy + 15], 1)
        boxes = torch.cat([jitter, noise])
        det_labels = torch.cat([labels, torch.randint(0, classes, (3,), generator=g)])
        preds.append({"boxes": boxes, "scores": torch.rand(len(boxes), generator=g), "labels": det_labels})
        targets.append({"boxes": gt, "labels": labels})
    return preds, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_class_ap50_matches_independent_reference(seed):
    preds, targets = random_case(seed)
    evaluator = DetectionEvaluator(["a", "b", "c"])
    evaluator.update(preds[:3], targets[:3])  # two updates: state accumulates across batches
    evaluator.update(preds[3:], targets[3:])
    result = evaluator.compute()
    present = sorted({int(l) for t in targets for l in t["labels"]})
    for label in present:
        name = "abc"[label]
        assert result.per_class_ap50[name] == pytest.approx(reference_ap50(preds, targets, label), abs=1e-6)
    assert result.summary["map_50"] == pytest.approx(
        sum(reference_ap50(preds, targets, l) for l in present) / len(present), abs=1e-6)
    assert 0 < result.summary["map"] < result.summary["map_50"] < 1  # jittered hits fail the strict IoUs


def test_perfect_and_empty_predictions():
    _, targets = random_case(3)
    perfect = [{"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"]))} for t in targets]
    evaluator = DetectionEvaluator(["a", "b", "c"])
    evaluator.update(perfect, targets)
    assert evaluator.compute().summary["map"] == pytest.approx(1.0)
    none = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "scores": torch.zeros(0)}
            for _ in targets]
    evaluator = DetectionEvaluator(["a", "b", "c"])
    evaluator.update(none, targets)
    result = evaluator.compute()
    assert result.summary["map"] == 0.0
    assert "mAP@.5" in format_table(result)


def test_bad_input_is_one_line():
    evaluator = DetectionEvaluator(["a"])
    with pytest.raises(ValueError, match="at least one evaluated image"):
        evaluator.compute()
    with pytest.raises(ValueError, match="one prediction per target"):
        evaluator.update([], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}])
    with pytest.raises(ValueError, match="expected keys boxes, scores, labels"):
        evaluator.update([{"boxes": torch.zeros(0, 4)}], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}])

"""k-means anchors (YOLOv2's 1 - IoU distance), best possible recall, and anchors for a dataset."""

import pytest
import torch

from backbonekit.detection.task.anchors import (
    COCO_ANCHORS, anchors_for_dataset, best_possible_recall, dataset_box_shapes, kmeans_anchors,
)


def brute_force_mean_iou(wh, anchors):
    """Mean over boxes of the best corner-aligned IoU, one box and one anchor at a time."""
    total = 0.0
    for w, h in wh.tolist():
        best = 0.0
        for aw, ah in anchors.tolist():
            inter = min(w, aw) * min(h, ah)
            best = max(best, inter / (w * h + aw * ah - inter))
        total += best
    return total / len(wh)


def planted(centres, per_cluster=200, noise=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = torch.tensor(centres, dtype=torch.float64)
    jitter = torch.exp(noise * torch.randn(len(centres), per_cluster, 2, generator=g, dtype=torch.float64))
    return (c[:, None, :] * jitter).reshape(-1, 2)


def test_kmeans_recovers_planted_clusters():
    centres = [(12.0, 30.0), (60.0, 40.0), (150.0, 170.0), (30.0, 90.0)]
    anchors, mean_iou = kmeans_anchors(planted(centres), k=4, seed=1)
    expected = torch.tensor(sorted(centres, key=lambda c: c[0] * c[1]), dtype=torch.float64)
    assert torch.allclose(anchors.double(), expected, rtol=0.03)
    areas = anchors[:, 0] * anchors[:, 1]
    assert bool((areas[1:] >= areas[:-1]).all()), "anchors must be sorted by area"
    assert mean_iou > 0.85


def test_kmeans_mean_iou_matches_brute_force():
    g = torch.Generator().manual_seed(3)
    wh = torch.rand(150, 2, generator=g, dtype=torch.float64) * 100 + 2
    anchors, mean_iou = kmeans_anchors(wh, k=5, seed=0)
    assert mean_iou == pytest.approx(brute_force_mean_iou(wh, anchors.double()), rel=1e-5)


def test_kmeans_is_deterministic_and_beats_a_bad_start():
    g = torch.Generator().manual_seed(4)
    wh = torch.rand(300, 2, generator=g) * 200 + 4
    a1, s1 = kmeans_anchors(wh, k=9, seed=7)
    a2, s2 = kmeans_anchors(wh, k=9, seed=7)
    assert torch.equal(a1, a2) and s1 == s2
    # Darknet's COCO anchors were fit on other data: k-means on this data fits it better
    assert s1 > brute_force_mean_iou(wh.double(), torch.tensor(COCO_ANCHORS, dtype=torch.float64))


def test_best_possible_recall_by_hand():
    anchors = torch.tensor([[10.0, 10.0], [20.0, 40.0]])
    # best IoUs by hand: (10,10)->1 ; (5,10)->50/100=.5 ; (20,20)->400/800=.5 ; (3,3)->9/100=.09
    wh = torch.tensor([[10.0, 10.0], [5.0, 10.0], [20.0, 20.0], [3.0, 3.0]])
    assert best_possible_recall(wh, anchors, 0.5) == pytest.approx(3 / 4)
    assert best_possible_recall(wh, anchors, 0.6) == pytest.approx(1 / 4)
    assert best_possible_recall(wh, anchors, 0.05) == pytest.approx(1.0)


@pytest.mark.parametrize("wh, match", [
    (torch.ones(5, 3), "shape"),
    (torch.tensor([[1.0, 2.0], [0.0, 1.0], [3.0, 3.0]]), "> 0"),
    (torch.tensor([[1.0, 2.0]] * 20), "distinct"),
])
def test_kmeans_rejects_bad_input_in_one_line(wh, match):
    with pytest.raises(ValueError, match=match) as info:
        kmeans_anchors(wh, k=2)
    assert "\n" not in str(info.value)


class _Boxes:
    """A dataset that knows its targets and image sizes (height, width) without decoding images."""

    def __init__(self, targets, sizes):
        self.targets, self.sizes = targets, sizes

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        h, w = self.sizes[i]
        return torch.zeros(3, h, w, dtype=torch.uint8), self.targets[i]


def test_box_shapes_are_scaled_as_the_letterbox_scales_them():
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 50.0, 20.0]]), "labels": torch.tensor([0])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
               {"boxes": torch.tensor([[10.0, 10.0, 20.0, 40.0], [0.0, 0.0, 100.0, 100.0]]),
                "labels": torch.tensor([1, 2])}]
    sizes = [(200, 100), (64, 64), (100, 400)]  # (height, width): long sides 200 and 400
    ds = _Boxes(targets, sizes)
    expected = torch.tensor([[50 * 416 / 200, 20 * 416 / 200], [10 * 416 / 400, 30 * 416 / 400],
                             [100 * 416 / 400, 100 * 416 / 400]], dtype=torch.float64)
    assert torch.allclose(dataset_box_shapes(ds, 416), expected)
    pairs = [ds[i] for i in range(len(ds))]  # a plain list of (image, target): read through the images
    assert torch.allclose(dataset_box_shapes(pairs, 416), expected)


def test_anchors_for_dataset_reports_fit():
    g = torch.Generator().manual_seed(0)
    wh = planted([(10.0, 20.0), (40.0, 30.0), (80.0, 90.0)], per_cluster=30)
    xy = torch.rand(len(wh), 2, generator=g, dtype=torch.float64) * 10
    targets = [{"boxes": torch.cat([xy[i:i + 1], xy[i:i + 1] + wh[i:i + 1]], 1), "labels": torch.tensor([0])}
               for i in range(len(wh))]
    fit = anchors_for_dataset(_Boxes(targets, [(208, 104)] * len(wh)), num=3, input_size=416)
    assert fit.num_boxes == len(wh)
    assert torch.allclose(fit.anchors, torch.tensor([[20.0, 40.0], [80.0, 60.0], [160.0, 180.0]]), rtol=0.05)
    assert fit.recall == pytest.approx(best_possible_recall(wh * 2, fit.anchors, fit.threshold))
    with pytest.raises(ValueError, match="no boxes"):
        anchors_for_dataset(_Boxes([targets[0] | {"boxes": torch.zeros(0, 4)}], [(10, 10)]), num=3)


def test_anchors_command_prints_a_fit_for_photodigits(capsys):
    import json

    from backbonekit.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["anchors", "--num", "6", "--input-size", "256", "--format", "json", "--split", "val"])
    assert args.func(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["anchors"]) == 6 and 0.5 < result["mean_iou"] <= 1 and 0 < result["best_possible_recall"] <= 1
    heights = [h for _, h in result["anchors"]]
    assert 16 * 2 * 0.9 <= min(heights) and max(heights) <= 48 * 2 * 1.1  # 128 px images letterboxed to 256

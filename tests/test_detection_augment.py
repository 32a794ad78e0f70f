"""Box-aware augmentation: every geometric transform keeps boxes on their objects.

Objects are filled rectangles, one per colour channel, on a black image; after a transform, an
object's true box is the tight box of the pixels of its channel that are more than half covered
(value > 127.5), found here independently of the code's box arithmetic.
"""

import colorsys

import pytest
import torch

from backbonekit.detection.data.augment import (
    NO_AUGMENT, AugmentConfig, Mosaic, augment_batch, collate_detection, colour_matrix, hflip, hsv_jitter, mosaic,
    multiscale_size, multiscale_sizes,
)
from backbonekit.detection.data.transforms import Letterbox, letterbox, letterbox_geometry, letterbox_images


def rectangles_image(h, w, boxes):
    """uint8 (3, h, w) black image with box k filled with 255 in channel k; targets in pixel-edge coordinates."""
    image = torch.zeros(3, h, w, dtype=torch.uint8)
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        image[k, y1:y2, x1:x2] = 255
    target = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
              "labels": torch.arange(len(boxes)), "image_id": torch.tensor(0)}
    return image, target


def tight_box(channel, region=None):
    """Tight xyxy box of the pixels > 127.5 of one channel (H, W), optionally inside region (x0, y0, x1, y1)."""
    mask = channel.float() > 127.5
    if region is not None:
        x0, y0, x1, y1 = region
        keep = torch.zeros_like(mask)
        keep[y0:y1, x0:x1] = True
        mask &= keep
    if not mask.any():
        return None
    rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
    return torch.tensor([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=torch.float32)


def assert_boxes_on_objects(image, target, region=None, tol=1.0):
    """Each box (label = channel) is the tight box of its object's pixels within ``tol`` pixels."""
    image = image.float() * (255 if image.is_floating_point() and image.max() <= 1 else 1)
    for box, label in zip(target["boxes"], target["labels"].tolist()):
        truth = tight_box(image[label], region)
        assert truth is not None, f"box {box.tolist()} kept for an object with no pixels left"
        assert torch.allclose(box, truth, atol=tol), f"box {box.tolist()} vs object {truth.tolist()}"


BOXES = [(10, 20, 50, 44), (70, 5, 118, 80), (30, 60, 64, 90)]


def test_letterbox_keeps_boxes_on_objects_and_maps_back():
    image, target = rectangles_image(96, 128, BOXES)
    for size, auto, shape in [(160, False, (160, 160)), (200, True, (160, 224)), ((96, 64), False, (96, 64))]:
        out, box = letterbox(image, size, auto=auto, fill=0.0)
        assert tuple(out.shape[-2:]) == shape
        mapped = box.to_letterbox(target["boxes"])
        assert_boxes_on_objects(out, {"boxes": mapped, "labels": target["labels"]})
        assert torch.allclose(box.to_original(mapped), target["boxes"], atol=1e-4)
    # grey padding where there is no image, centred: 128x96 into 160x160 is scaled 1.25 to 160x120, 20 rows each side
    out, box = letterbox(image, 160)
    assert (box.new_w, box.new_h, box.left, box.top) == (160, 120, 0, 20)
    assert bool((out[:, :20] == 128).all()) and bool((out[:, 140:] == 128).all())
    batch, _ = letterbox(torch.stack([image, image]), 160)
    assert torch.equal(batch[1], out)


def test_letterbox_is_darknets_geometry_by_hand():
    # Darknet's letterbox_image: the side that fills first takes the size, the other is floored, centred
    box = letterbox_geometry(100, 30, 64)  # 30 * 64 // 100 = 19 columns, (64 - 19) // 2 = 22 on the left
    assert (box.new_w, box.new_h, box.left, box.top) == (19, 64, 22, 0)
    box = letterbox_geometry(50, 81, (64, 96))  # 96/81 < 64/50: width fills, 50 * 96 // 81 = 59 rows
    assert (box.new_w, box.new_h, box.left, box.top) == (96, 59, 0, 2)
    # bilinear without antialiasing: a 2x downscale of a column ramp averages each pair of columns exactly
    ramp = torch.arange(64.0).repeat(3, 32, 1) / 64
    out, box = letterbox(ramp, 32)
    assert (box.new_w, box.new_h) == (32, 16)
    assert torch.allclose(out[0, 8, :], (torch.arange(0, 64, 2.0) + 0.5) / 64)
    assert torch.equal(out[:, :8], torch.full((3, 8, 32), 0.5))


def test_letterbox_transform_and_flip():
    image, target = rectangles_image(80, 100, [(10, 20, 50, 44), (60, 5, 98, 70)])
    out, t = Letterbox(128, fill=0.0)(image, target)
    assert_boxes_on_objects(out, t)
    flipped, ft = hflip(image, target)
    assert_boxes_on_objects(flipped, ft, tol=0)
    with pytest.raises(ValueError, match="expected an image"):
        letterbox(torch.zeros(1, 10, 10), 32)


@pytest.mark.parametrize("flip", [0.0, 1.0, 0.5])
def test_augment_batch_keeps_boxes_on_objects(flip):
    g = torch.Generator().manual_seed(int(flip * 10) + 1)
    pairs = []
    for i in range(6):
        x, y = torch.randint(0, 60, (2,), generator=g).tolist()
        pairs.append(rectangles_image(96, 128, [(x, y, x + 30, y + 20), (x + 40, y + 5, x + 60, y + 15),
                                                 (100, 70, 126, 94)]))
    images = torch.stack([p[0] for p in pairs])
    cfg = AugmentConfig(scale=(0.5, 1.5), translate=0.25, hflip=flip, hue=0, saturation=1, value=1, fill=0.0)
    out, targets = augment_batch(images, [p[1] for p in pairs], (128, 160), cfg, g)
    assert out.shape == (6, 3, 128, 160) and out.dtype == torch.float32
    kept = 0
    for image, target in zip(out, targets):
        assert_boxes_on_objects(image * 255, target)
        kept += len(target["boxes"])
        for label in set(range(3)) - set(target["labels"].tolist()):  # dropped: little or nothing of it left
            truth = tight_box(image[label] * 255)
            area = 0 if truth is None else float((truth[2:] - truth[:2]).prod())
            assert area < 0.5 * 600 * 2.25, "a well visible object lost its box"
    assert kept >= 10


def test_augment_batch_without_augmentation_is_a_letterbox():
    image, target = rectangles_image(96, 128, BOXES)
    out, targets = augment_batch(image[None], [target], 160, NO_AUGMENT)
    ref, box = letterbox(image, 160)
    assert torch.allclose(targets[0]["boxes"], box.to_letterbox(target["boxes"]), atol=1e-4)
    assert (out[0] * 255 - ref.float()).abs().mean() < 2.0  # one bilinear resize vs another: nearly equal


def test_training_evaluation_and_deploy_letterbox_the_same_pixels():
    """The training path (dataset letterbox + batched augmentation, off) puts an image on the pixels
    model(images) and the numpy deploy runtime put it on, and its boxes map back exactly."""
    from backbonekit.deploy.runtime import letterbox_input
    from backbonekit.detection.training.engine import TrainBatches

    g = torch.Generator().manual_seed(3)
    image = torch.randint(0, 256, (3, 50, 81), generator=g, dtype=torch.uint8)
    target = {"boxes": torch.tensor([[3.0, 4.5, 40.25, 31.0], [60.0, 10.0, 81.0, 50.0]]),
              "labels": torch.tensor([0, 1])}
    batches = TrainBatches([(image, target)], 1, 64, torch.device("cpu"), seed=0, epoch=0)
    (train_batch, train_targets), = list(batches)
    infer_batch, (box,) = letterbox_images([image.float() / 255], 64)
    deploy, deploy_box = letterbox_input(image.permute(1, 2, 0).numpy(), {"input_size": 64, "letterbox_fill": 0.5})
    assert (box.new_w, box.new_h, box.left, box.top) == (64, 39, 0, 12)  # 50 * 64 // 81 = 39 rows, floored
    assert (deploy_box.new_w, deploy_box.new_h, deploy_box.left, deploy_box.top) == (64, 39, 0, 12)
    assert torch.allclose(infer_batch[0], torch.from_numpy(deploy), atol=1e-5)
    # the training path stores uint8 letterboxed images: equal up to that rounding
    assert (train_batch[0] - infer_batch[0]).abs().max() <= 0.5 / 255 + 1e-5
    assert torch.allclose(train_batch[0, :, :12], torch.full((3, 12, 64), 128 / 255), atol=1e-6)
    assert torch.allclose(box.to_original(train_targets[0]["boxes"]), target["boxes"], atol=1e-4)


def test_hsv_jitter_keeps_boxes_and_greys_and_rotates_hue():
    image, target = rectangles_image(64, 64, BOXES[:1])
    cfg = AugmentConfig(scale=(1, 1), translate=0, hflip=0, fill=0.5)
    out, targets = augment_batch(image[None].repeat(4, 1, 1, 1), [target] * 4, 64, cfg, torch.Generator().manual_seed(0))
    for t in targets:
        assert torch.equal(t["boxes"], target["boxes"])
    grey = torch.full((2, 3, 4, 4), 100, dtype=torch.uint8)
    jittered = hsv_jitter(grey, generator=torch.Generator().manual_seed(1))
    assert bool((jittered[:, 0] == jittered[:, 1]).all() & (jittered[:, 1] == jittered[:, 2]).all())
    assert not torch.equal(jittered, grey)
    # a third of a turn of hue takes pure red to pure green, as colorsys's HSV does
    m = colour_matrix(torch.ones(1), torch.ones(1), torch.tensor([1 / 3]))[0]
    expected = colorsys.hsv_to_rgb(1 / 3, 1.0, 1.0)
    assert torch.allclose(m @ torch.tensor([1.0, 0.0, 0.0]), torch.tensor(expected), atol=1e-5)
    assert torch.allclose(colour_matrix(torch.ones(1), torch.ones(1), torch.zeros(1))[0], torch.eye(3))


def test_mosaic_keeps_boxes_on_objects():
    pairs = [rectangles_image(96, 128, BOXES), rectangles_image(128, 96, [(5, 5, 40, 60), (50, 80, 90, 120)]),
             rectangles_image(64, 64, [(0, 0, 64, 32)]), rectangles_image(100, 100, [(20, 20, 80, 80), (0, 90, 100, 100)])]
    size, (xc, yc) = 160, (70, 90)
    out, target = mosaic([p[0] for p in pairs], [p[1] for p in pairs], size, center=(xc, yc), fill=0.0,
                         tile_scale=0.75)
    assert out.shape == (3, 160, 160) and out.dtype == torch.uint8
    quadrants = [(0, 0, xc, yc), (xc, 0, size, yc), (0, yc, xc, size), (xc, yc, size, size)]
    kept_per_tile = []
    for region in quadrants:  # tiles never overlap: within its quadrant, each channel holds one object
        inside = ((target["boxes"][:, :2] >= torch.tensor(region[:2])).all(1)
                  & (target["boxes"][:, 2:] <= torch.tensor(region[2:])).all(1))
        kept_per_tile.append(int(inside.sum()))
        assert_boxes_on_objects(out, {"boxes": target["boxes"][inside], "labels": target["labels"][inside]}, region)
    assert sum(kept_per_tile) == len(target["boxes"]) >= 4


def test_mosaic_dataset_and_collate():
    pairs = [rectangles_image(96, 128, BOXES), rectangles_image(64, 64, [(0, 0, 64, 32)])]
    torch.manual_seed(0)
    ds = Mosaic(pairs, 128, p=0.5)
    items = [ds[i % 2] for i in range(6)]
    assert all(img.shape == (3, 128, 128) for img, _ in items)
    batch, targets = collate_detection([pairs[0], pairs[1]])
    assert batch.shape == (2, 3, 96, 128)
    assert torch.equal(batch[1, :, :64, :64], pairs[1][0]) and bool((batch[1, :, 64:] == 128).all())
    assert targets[1] is pairs[1][1]
    odd, _ = collate_detection([(torch.zeros(3, 33, 65), pairs[0][1])])
    assert odd.shape == (1, 3, 64, 96)
    with pytest.raises(ValueError, match="4 images"):
        mosaic([pairs[0][0]], [pairs[0][1]], 64)


def test_multiscale_sizes_follow_darknet():
    assert multiscale_sizes(416) == list(range(320, 609, 32))  # Darknet: (rand() % 10 + 10) * 32
    sizes = [multiscale_size(step, 416, every=10, seed=3) for step in range(0, 400)]
    assert all(s % 32 == 0 and 320 <= s <= 608 for s in sizes)
    assert all(len(set(sizes[i:i + 10])) == 1 for i in range(0, 400, 10)), "one size per block of 10 steps"
    assert len(set(sizes)) >= 6
    assert sizes == [multiscale_size(step, 416, every=10, seed=3) for step in range(0, 400)]  # resumable


def test_the_list_letterbox_keeps_the_paths_the_docs_show():
    """``letterbox`` names the one-image letterbox in transforms; the older list paths stay aliases of letterbox_images."""
    import backbonekit.detection as detection
    from backbonekit.detection.models import yolov3

    assert yolov3.letterbox is letterbox_images and detection.letterbox is letterbox_images

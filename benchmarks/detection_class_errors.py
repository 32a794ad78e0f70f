"""How often a trained YOLOv3's best guess for an object has the wrong class: for every ground-truth
box of a photodigits split, the prediction (before NMS) with the highest score (objectness x class
probability) among those whose decoded box overlaps it with IoU > 0.5, and whether its class is right.
Also the class accuracy of the slot of each box's best anchor (photodigits' digits never share a slot).

    PYTHONPATH=src python benchmarks/detection_class_errors.py runs/yolov3-photodigits [--split train]

Used in docs/detection-loss.md to show why ``detect train`` assigns a box to several anchors.
"""

from __future__ import annotations

import argparse

import torch
from torchvision.ops import box_convert, box_iou

from backbonekit.detection.task.assigner import assign_targets, flatten_targets
from backbonekit.detection.task.coder import split_level
from backbonekit.detection.loading import load_detector
from backbonekit.detection.data.photodigits import photodigits


def class_errors(run: str, split: str = "val", batch: int = 50) -> dict[str, float]:
    model, _ = load_detector(run)
    if not hasattr(model, "forward_levels"):
        raise SystemExit(f"expected a YOLOv3 run (its anchors and head outputs are read), found {type(model).__name__}")
    data = photodigits(split)
    if model.input_size != data.images.shape[-1]:
        raise SystemExit(f"expected a detector with input size {data.images.shape[-1]} (photodigits' images are "
                         f"fed as they are), found {model.input_size}")
    found = right = assigned = assigned_right = 0
    for start in range(0, len(data), batch):
        items = [data[i] for i in range(start, min(start + batch, len(data)))]
        images = torch.stack([image for image, _ in items]).float() / 255
        targets = [target for _, target in items]
        with torch.no_grad():
            levels = model.forward_levels(images)
        decoded = model.decode(levels)
        for pred, target in zip(decoded, targets):
            boxes = box_convert(pred[:, :4], "cxcywh", "xyxy")
            scores = pred[:, 4:5] * pred[:, 5:]
            for box, label in zip(target["boxes"].float(), target["labels"].tolist()):
                near = box_iou(box[None], boxes)[0] > 0.5
                if near.any():
                    found += 1
                    right += int(scores[near].max(0).values.argmax()) == label
        flat = flatten_targets(targets, model.num_classes, images.device)
        grids = [tuple(level.shape[-2:]) for level in levels]
        for level, mask, slots in zip(levels, model.masks, assign_targets(
                flat, model.anchors, model.masks, model.strides, grids, tuple(images.shape[-2:]), model.num_classes)):
            logits = split_level(level, len(mask))[slots.batch, slots.anchor, slots.row, slots.col, 5:]
            assigned += len(logits)
            assigned_right += int((logits.argmax(1) == slots.classes.argmax(1)).sum())
    return {"objects found (IoU > 0.5)": found, "top-scoring class right": right / max(found, 1),
            "best-anchor slots": assigned, "best-anchor slot class right": assigned_right / max(assigned, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a detect train run folder or checkpoint")
    parser.add_argument("--split", default="val", choices=("train", "val"))
    args = parser.parse_args()
    for key, value in class_errors(args.run, args.split).items():
        print(f"{key:32s} {value:.3f}" if isinstance(value, float) else f"{key:32s} {value}")


if __name__ == "__main__":
    main()

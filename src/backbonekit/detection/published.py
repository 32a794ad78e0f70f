"""The detectors' published weights (see :mod:`backbonekit.pretrained`) and their class sets: COCO's 80 in
YOLOv3's order with COCO's category ids, torchvision's 91-slot COCO label space, Pascal VOC's 20.

Darknet's author published ``yolov3.weights`` (COCO) but no YOLOv3 VOC file (``yolov3-voc.cfg`` is for
training; ``pjreddie.com/media/files/yolov3-voc.weights`` answers 404: leggedrobotics/darknet_ros#90, #168),
so VOC is a class set here, for files of one's own, not a tag.
"""

from __future__ import annotations

from ..hub import FileSpec
from ..pretrained import (DARKNET_FILES, DARKNET_LICENSE, IMAGENET_MEAN, IMAGENET_STD, TORCHVISION_LICENSE, ClassSet,
                          PublishedWeights, register, register_class_set, torchvision_file)

# Darknet's data/voc.names (pjreddie/darknet), the order of every Darknet VOC file
VOC_NAMES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
             "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")


def _coco80() -> ClassSet:
    from .predict import coco_categories

    ids, names = zip(*coco_categories())
    return ClassSet(tuple(names), tuple(ids))


def _torchvision_coco(first: int) -> ClassSet:
    """torchvision's COCO label space: label i is COCO category id i, 0 is background, unused ids are "N/A".
    Faster R-CNN's labels here start at torchvision's 1 (``first``), its background slot being internal."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    names = FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    return ClassSet(tuple(names[first:]), tuple(range(first, len(names))))


register_class_set("coco80", _coco80)
register_class_set("coco91-torchvision", lambda: _torchvision_coco(0))
register_class_set("coco90-torchvision", lambda: _torchvision_coco(1))
register_class_set("voc", lambda: ClassSet(VOC_NAMES))

DETECTOR_INPUT = {"min_size": 800, "max_size": 1333, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}


def _torchvision_detector(kind: str, file_name: str, box_ap: float, size_mib: float, enum: str,
                          eps_zero: bool) -> PublishedWeights:
    # torchvision's COCO_V1 Faster R-CNN and RetinaNet builders set the frozen BatchNorms' eps to 0 (overwrite_eps)
    kwargs = {"backbone": "resnet50", **({"bn_eps": 0.0} if eps_zero else {})}
    return PublishedWeights(
        model=kind, tag="tv_coco", file=torchvision_file(file_name), layout="torchvision", license=TORCHVISION_LICENSE,
        dataset="COCO train2017", classes="coco90-torchvision" if kind == "fasterrcnn" else "coco91-torchvision",
        num_classes=90 if kind == "fasterrcnn" else 91, input_size=800, preprocessing=DETECTOR_INPUT,
        metrics={"box AP": box_ap}, evaluated="COCO val2017, short side 800 (max 1333)",
        source=f"torchvision 0.29 {enum}.COCO_V1: url, meta _metrics and _file_size", size_mib=size_mib,
        model_kwargs=kwargs, default=True,
        notes="ResNet-50 FPN; labels are COCO category ids (torchvision's label space)")


register(
    PublishedWeights(
        model="yolov3", tag="darknet_coco",
        file=FileSpec((DARKNET_FILES + "yolov3.weights",), "yolov3.weights",
                      sha1="520878f12e97cf820529daea502acca380f1cb8e", size=248_007_048),
        layout="darknet", license=DARKNET_LICENSE, dataset="COCO trainval", classes="coco80", num_classes=80,
        input_size=416, preprocessing={"letterbox": 416, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)},
        metrics={"AP50": 55.3, "AP": 31.0}, evaluated="COCO test-dev at 416x416",
        source="file: pjreddie.com/darknet/yolo; AP 31.0 and AP50 55.3: YOLOv3 paper (arXiv 1804.02767) Fig. 1 and 3 "
               "(YOLOv3-416; AP50 also on that page); "
               "SHA-1: opencv/opencv_extra testdata/dnn/download_models.py (no public SHA-256); size: a 20-byte "
               "header + 62,001,757 float32 values (AlexeyAB/darknet#1910)",
        model_kwargs={"backbone": "darknet53"}, default=True),
    _torchvision_detector("fasterrcnn", "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth", 37.0, 159.743,
                          "FasterRCNN_ResNet50_FPN_Weights", eps_zero=True),
    _torchvision_detector("retinanet", "retinanet_resnet50_fpn_coco-eeacb38b.pth", 36.4, 130.267,
                          "RetinaNet_ResNet50_FPN_Weights", eps_zero=True),
    _torchvision_detector("fcos", "fcos_resnet50_fpn_coco-99b0c9b7.pth", 39.2, 123.608,
                          "FCOS_ResNet50_FPN_Weights", eps_zero=False),
)

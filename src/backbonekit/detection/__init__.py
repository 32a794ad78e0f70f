"""Detection: detectors built on this package's backbones, and what trains and evaluates them.

The files read like a detection paper's sections: ``fpn`` (feature pyramids for torchvision's
detectors, DetNet's pyramid and its RoI pooler), ``torchvision_detectors`` (Faster R-CNN,
RetinaNet and FCOS from torchvision's classes), ``neck``, ``head``, ``coder``, ``yolov3`` (the detector), ``weights`` (pretrained files, their normalisation),
and, as they land, ``assigner``, ``loss``, ``data``,
``augment``, ``anchors``, ``metrics``.
"""

from .models.fpn import BackboneWithFPN, LevelRoIAlign, detector_pyramid, fpn_backbone
from .models.yolov3 import YOLOv3, letterbox, yolov3
from .models.torchvision_detectors import FCOS, FasterRCNN, RetinaNet, create_detector  # registers fasterrcnn, retinanet, fcos
from . import published  # noqa: F401  (registers the detectors' published weights)

__all__ = ["BackboneWithFPN", "FCOS", "FasterRCNN", "LevelRoIAlign", "RetinaNet", "YOLOv3", "create_detector",
           "detector_pyramid", "fpn_backbone", "letterbox", "yolov3"]

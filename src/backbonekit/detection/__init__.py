"""Detection: detectors built on this package's backbones, and what trains and evaluates them.

The files read like a detection paper's sections: ``fpn`` (feature pyramids for torchvision's
detectors), ``neck``, ``head``, ``coder``, ``yolov3`` (the detector), ``yolov3_weights`` (Darknet files),
and, as they land, ``assigner``, ``loss``, ``data``,
``augment``, ``anchors``, ``metrics``.
"""

from .fpn import BackboneWithFPN, fpn_backbone
from .yolov3 import YOLOv3, letterbox, yolov3

__all__ = ["BackboneWithFPN", "YOLOv3", "fpn_backbone", "letterbox", "yolov3"]

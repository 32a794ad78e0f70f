"""Detection: detectors built on this package's backbones, and what trains, evaluates and ships them.

``models/`` the detectors (``yolov3`` with its ``neck`` and ``head``; Faster R-CNN, RetinaNet and FCOS in
``torchvision_detectors`` on the pyramids of ``fpn``); ``task/`` what turns boxes into training signal
(``anchors``, ``assigner``, ``coder``, ``loss``); ``data/`` datasets (one module per format, ``photodigits``),
the shared ``transforms`` (letterbox) and the training ``augment``ations; ``training/`` ``detect train``
(config, engine, trainer, metrics, report, evaluate). Beside them: ``export``/``fpn_export`` and
``onnx_eval`` (ONNX), ``predict`` (image files in, detections out), ``loading``, ``weights`` (every
pretrained file and its normalisation rule) and ``published`` (published weights).
"""

from .models.fpn import BackboneWithFPN, LevelRoIAlign, detector_pyramid, fpn_backbone
from .models.yolov3 import YOLOv3, letterbox, yolov3
from .models.torchvision_detectors import FCOS, FasterRCNN, RetinaNet, create_detector  # registers fasterrcnn, retinanet, fcos
from . import published  # noqa: F401  (registers the detectors' published weights)

__all__ = ["BackboneWithFPN", "FCOS", "FasterRCNN", "LevelRoIAlign", "RetinaNet", "YOLOv3", "create_detector",
           "detector_pyramid", "fpn_backbone", "letterbox", "yolov3"]

"""The detectors as networks: YOLOv3 (:mod:`.yolov3` with its :mod:`.neck` and :mod:`.head`) and torchvision's
Faster R-CNN, RetinaNet and FCOS (:mod:`.torchvision_detectors`) on this package's backbones through the
feature pyramids of :mod:`.fpn` (DetNet-59's included)."""

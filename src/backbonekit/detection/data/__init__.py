"""Detection data: one module per format (:mod:`.yolo`, :mod:`.coco`, :mod:`.voc`), the built-in
:mod:`.photodigits`, what every dataset shares (:mod:`.datasets`), the letterbox and box bookkeeping that
model, training and export share (:mod:`.transforms`) and the training augmentations (:mod:`.augment`).

``load_detection_dataset(spec)`` reads any of them (``docs/detection-data.md``).
"""

from .coco import read_coco
from .datasets import DetectionDataset, InMemoryDetection, make_target, training_target
from .formats import FORMATS, load_detection_dataset
from .photodigits import photodigits
from .voc import read_voc
from .yolo import YoloLayout, read_yolo, yolo_label_path, yolo_layout

__all__ = ["FORMATS", "DetectionDataset", "InMemoryDetection", "YoloLayout", "load_detection_dataset",
           "make_target", "photodigits", "read_coco", "read_voc", "read_yolo", "training_target", "yolo_label_path",
           "yolo_layout"]

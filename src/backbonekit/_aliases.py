"""Old module paths kept for one release after the 0.3 re-layout (``docs/architecture.md``).

``import backbonekit.detection.trainer`` still works: it gives the module now at
``backbonekit.detection.training.trainer`` (the same object, so patching either name patches both) and
a DeprecationWarning naming the new path.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings

MOVED = {  # old path: new path (relative to the package)
    "detection.yolov3": "detection.models.yolov3",
    "detection.neck": "detection.models.neck",
    "detection.head": "detection.models.head",
    "detection.torchvision_detectors": "detection.models.torchvision_detectors",
    "detection.fpn": "detection.models.fpn",
    "detection.anchors": "detection.task.anchors",
    "detection.assigner": "detection.task.assigner",
    "detection.coder": "detection.task.coder",
    "detection.loss": "detection.task.loss",
    "detection.synthetic": "detection.data.photodigits",
    "detection.augment": "detection.data.augment",
    "detection.config": "detection.training.config",
    "detection.engine": "detection.training.engine",
    "detection.trainer": "detection.training.trainer",
    "detection.metrics": "detection.training.metrics",
    "detection.report": "detection.training.report",
    "detection.launch": "detection.training.launch",
    "detection.compare": "detection.training.compare",
    "detection.yolov3_weights": "detection.weights",  # its Darknet format: backbonekit.darknet_yolov3
    "train.runs": "engine.runs",
    "train.budget": "engine.budget",
    "train.dist": "engine.dist",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec):
        return importlib.import_module(self.new)

    def exec_module(self, module) -> None:
        pass


class _AliasFinder(importlib.abc.MetaPathFinder):
    def __init__(self, package: str) -> None:
        self.prefix = package + "."
        self.moved = {self.prefix + old: self.prefix + new for old, new in MOVED.items()}

    def find_spec(self, fullname, path=None, target=None):
        new = self.moved.get(fullname)
        if new is None:
            return None
        warnings.warn(f"{fullname} moved to {new}; the old path goes in the next release", DeprecationWarning,
                      stacklevel=2)
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(new))


def install(package: str) -> None:
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder(package))

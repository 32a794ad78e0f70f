"""Run exported backbonekit models with only onnxruntime, numpy and Pillow (``pip install backbonekit[deploy]``).

    from backbonekit.deploy import load
    model = load("resnet18-digits-int8.onnx")      # preprocessing comes from the file's metadata
    print(model.predict(["digit.png"], topk=3))   # [[("7", 0.98), ("1", 0.01), ...]]

torch is never imported here (tests hide it and run a prediction).
"""

from .metadata import classifier_metadata, detector_metadata, from_props, to_props
from .runtime import Classifier, Detector, LetterboxBox, load

__all__ = ["Classifier", "Detector", "LetterboxBox", "classifier_metadata", "detector_metadata", "from_props",
           "load", "to_props"]

"""Model families. Importing this package registers every model."""

from . import darknet, detnet, resnet  # noqa: F401  (registration side effects)
from ._base import Backbone, FeatureInfo
from ._registry import ModelInfo, list_models, model_entrypoint, model_info, register_model

__all__ = ["Backbone", "FeatureInfo", "ModelInfo", "list_models", "model_entrypoint", "model_info", "register_model"]

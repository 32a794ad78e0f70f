"""Model families (importing this package registers the backbones), the registry and the builder."""

from . import darknet, detnet, resnet  # noqa: F401  (registration side effects)
from ._base import Backbone, FeatureInfo
from ._builder import create_model, register_all
from ._registry import ModelInfo, list_models, model_entrypoint, model_info, register_model

__all__ = ["Backbone", "FeatureInfo", "ModelInfo", "create_model", "list_models", "model_entrypoint", "model_info", "register_all", "register_model"]

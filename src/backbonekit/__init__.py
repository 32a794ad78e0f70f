"""backbonekit: Darknet-53, ResNet and DetNet-59 backbones for classification and detection."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from . import _aliases

_aliases.install(__name__)

# The model API (models._builder's create_model, models._registry's listing) is imported on first use,
# so that ``import backbonekit.deploy`` works without torch installed.
_BUILDER_NAMES = ("Backbone", "FeatureInfo", "create_model", "list_models", "model_entrypoint", "model_info")

if TYPE_CHECKING:
    from .models import Backbone, FeatureInfo, create_model, list_models, model_entrypoint, model_info


def __getattr__(name: str) -> Any:
    if name != "models" and name not in _BUILDER_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from .models import register_all  # importing it also sets this package's ``models`` (always loaded before)

    models = globals()["models"]
    if name == "models":
        return models
    register_all()  # the root's listing names every model, the detectors included
    value = getattr(models, name)
    globals()[name] = value
    return value


def optimize_for_inference(model: Backbone, **kwargs: Any) -> Backbone:
    """Fold BatchNorms, channels_last, optional ``torch.compile``: see :func:`backbonekit.optimize.optimize_for_inference`."""
    from .optimize import optimize_for_inference as _optimize

    return _optimize(model, **kwargs)


__all__ = ["Backbone", "FeatureInfo", "create_model", "list_models", "model_info", "optimize_for_inference",
           "__version__"]

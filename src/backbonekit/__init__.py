"""backbonekit: Darknet-53, ResNet and DetNet-59 backbones for classification and detection."""

from __future__ import annotations

import importlib
import os
import warnings
from typing import Any, Sequence

__version__ = "0.1.0"

# Imported on first use, so that ``import backbonekit.deploy`` works without torch installed.
_LAZY = {"Backbone": ".models", "FeatureInfo": ".models", "list_models": ".models", "model_entrypoint": ".models",
         "model_info": ".models"}


def __getattr__(name: str) -> Any:
    if name == "models":  # was always loaded by ``import backbonekit``
        return importlib.import_module(".models", __name__)
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    in_chans: int = 3,
    pretrained: str | os.PathLike | None = None,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    output_stride: int | None = None,
    fuse: bool = False,
    **kwargs: Any,
) -> Backbone:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models` (``KeyError`` with close matches otherwise).
        num_classes: classifier outputs; 0 drops the classifier (``forward`` returns pooled features).
        in_chans: input channels.
        pretrained: a local weights file: a backbonekit checkpoint, a torchvision or timm state_dict
            (layout detected from its keys), a ``.safetensors`` file, or a Darknet weights file
            (``darknet53.weights``; ``darknet53.conv.74`` leaves the classifier initialised), loaded
            strictly. The classifier is left initialised when its number of classes differs from ``num_classes``.
        features_only: return a multi-scale feature extractor whose forward returns a list of maps.
        out_indices: levels to return with ``features_only`` (0 = stem, 1.. = stages; default: last three).
        output_stride: 32, 16 or 8; strides beyond it become dilation. ``None``: the model's native stride.
        fuse: return an inference model: BatchNorms folded into their convs, eval mode, channels_last
            where faster (:func:`backbonekit.optimize.optimize_for_inference`; not for training).
        **kwargs: architecture options: ``frozen_stages``, ``norm_eval``, ``zero_init_residual``,
            ``act_slope`` (darknet).
    """
    from . import weights
    from .models import model_entrypoint

    builder = model_entrypoint(name)
    _check_count("num_classes", num_classes, minimum=0)
    _check_count("in_chans", in_chans, minimum=1)
    if output_stride is not None:
        kwargs["output_stride"] = output_stride
    if out_indices is not None and not features_only:
        raise ValueError("out_indices only applies with features_only=True, found features_only=False")
    state, layout = None, None
    if pretrained is not None:
        state, meta = weights.read_weights(pretrained)
        if meta.get("model") and meta["model"] != name:
            raise weights.CheckpointError(f"{pretrained} holds weights for {meta['model']}, found {name}")
        layout = weights.detect_layout(state)
        for key, value in {**meta.get("model_kwargs", {}), **weights.architecture_overrides(layout)}.items():
            kwargs.setdefault(key, value)  # what the checkpoint was trained with, unless overridden here
    model = builder(num_classes=num_classes, in_chans=in_chans, **kwargs)
    if state is not None:
        skipped = weights.load_into(model, weights.to_backbonekit(state, layout), source=f"weights file {pretrained}",
                                    allow_missing_head=bool(meta.get("backbone_only")))
        if skipped:
            warnings.warn(f"classifier left initialised: {pretrained} has a classifier of another shape "
                          f"({', '.join(skipped)})", stacklevel=2)
    if features_only:
        model.as_features(out_indices)
    if fuse:
        from .optimize import optimize_for_inference

        optimize_for_inference(model)
    return model


def _check_count(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, found {value!r}")


def optimize_for_inference(model: Backbone, **kwargs: Any) -> Backbone:
    """Fold BatchNorms, channels_last, optional ``torch.compile``: see :func:`backbonekit.optimize.optimize_for_inference`."""
    from .optimize import optimize_for_inference as _optimize

    return _optimize(model, **kwargs)


__all__ = ["Backbone", "FeatureInfo", "create_model", "list_models", "model_info", "optimize_for_inference",
           "__version__"]

"""``create_model``: the one builder of every registered model, backbones and detectors (timm's ``_builder``).

The backbone families register on import of :mod:`backbonekit.models`; the detectors register on import of
:mod:`backbonekit.detection`, which :func:`register_all` imports explicitly.
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Any, Sequence

from ._base import Backbone
from ._registry import model_entrypoint, model_info


def register_all() -> None:
    """Make the registry know every model, the detectors included."""
    # detection sits above models (it builds on the backbones), so models cannot import it at the top
    from .. import detection  # noqa: F401  (registers yolov3, fasterrcnn, retinanet, fcos and their weights)


if TYPE_CHECKING:
    from ..weights import Weights


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    in_chans: int = 3,
    pretrained: str | os.PathLike | Weights | None = None,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    output_stride: int | None = None,
    fuse: bool = False,
    **kwargs: Any,
) -> Backbone:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models` (``KeyError`` with close matches otherwise).
        num_classes: classifier outputs (default 1000); 0 drops the classifier (``forward`` returns pooled
            features). Detectors (``list_models(task="detection")``): object classes, default the weights
            file's, else 80.
        in_chans: input channels.
        pretrained: ``True`` (the model's default published weights), a published tag
            (``"resnet50.tv2_in1k"``, or ``"tv2_in1k"`` for this model; ``backbonekit weights`` lists them),
            a URL, or a local weights file: a backbonekit checkpoint, a torchvision or timm state_dict
            (layout detected from its keys), a ``.safetensors`` file, or a Darknet weights file
            (``darknet53.weights``; ``darknet53.conv.74`` leaves the classifier initialised), loaded
            strictly. Tags and URLs are fetched once into ``torch.hub.get_dir()/checkpoints`` and checked
            against their published size and hash (:mod:`backbonekit.pretrained`); a model built from a tag
            carries its ``class_names`` (detectors: and ``category_ids``). The classifier is left
            initialised when its number of classes differs from ``num_classes``.
            A :class:`backbonekit.weights.Weights` already read (:func:`backbonekit.weights.read_weights`) is
            used as it is, so a caller that needs the file's contents too reads it once.
            BatchNorm ``num_batches_tracked`` counters absent from the file (files written before PyTorch
            0.4.1) are set to 0, as ``BatchNorm2d.load_state_dict`` does. ``False`` is the same as ``None``.
        features_only: return a multi-scale feature extractor whose forward returns a list of maps.
        out_indices: levels to return with ``features_only`` (0 = stem, 1.. = stages; default: last three),
            in the order given (``forward``, ``feature_info`` and ``out_channels`` follow it).
        output_stride: 32, 16 or 8; strides beyond it become dilation. ``None``: the model's native stride.
        fuse: return an inference model: BatchNorms folded into their convs, eval mode, channels_last
            where faster (:func:`backbonekit.optimize.optimize_for_inference`; not for training).
        **kwargs: architecture options: ``frozen_stages``, ``norm_eval``, ``zero_init_residual``,
            ``act_slope`` (darknet: the LeakyReLU slope), and for every family:

            - ``norm_layer``: ``"batchnorm"`` (default, ``nn.BatchNorm2d``), ``"frozen_batchnorm"``
              (torchvision's ``FrozenBatchNorm2d``, as its detectors use: fixed statistics and affine,
              no parameters), ``"groupnorm"`` (32 groups), or a callable taking the number of channels
              and returning a module. Norms keep BatchNorm's module names, so BatchNorm and
              FrozenBatchNorm2d models load the same files (their keys differ only by BatchNorm's
              ``num_batches_tracked`` counters, which the loader fills or drops).
            - ``act_layer``: ``"relu"``, ``"leaky_relu"``, ``"silu"``, ``"mish"``, ``"gelu"``, ``"hardswish"``
              or a callable returning a module; default: the family's own (ReLU; Darknet's LeakyReLU
              with ``act_slope``).
    """
    from .. import weights

    register_all()

    builder = model_entrypoint(name)
    if model_info(name).task == "detection":
        pretrained, published = _resolve_pretrained(name, pretrained, kwargs)
        model = _create_detector(name, builder, num_classes, in_chans, pretrained, features_only, out_indices,
                                 output_stride, fuse, kwargs)
        return _with_classes(model, published, model.num_classes)
    num_classes = 1000 if num_classes is None else num_classes
    _check_count("num_classes", num_classes, minimum=0)
    _check_count("in_chans", in_chans, minimum=1)
    if output_stride is not None:
        kwargs["output_stride"] = output_stride
    if out_indices is not None and not features_only:
        raise ValueError("out_indices only applies with features_only=True, found features_only=False")
    pretrained, published = _resolve_pretrained(name, pretrained, kwargs)  # after the cheap checks: it may download
    state = None
    if pretrained is not None:
        state, meta = pretrained if isinstance(pretrained, weights.Weights) else weights.read_weights(pretrained)
        source = meta.get("path", pretrained)
        if meta.get("model") and meta["model"] != name:
            raise weights.CheckpointError(f"{source} holds weights for {meta['model']}, found {name}")
        for key, value in weights.architecture_kwargs(state, meta).items():
            kwargs.setdefault(key, value)  # what the checkpoint was trained with, unless overridden here
    model = builder(num_classes=num_classes, in_chans=in_chans, **kwargs)
    if state is not None:
        skipped = weights.load_into(model, weights.to_backbonekit(state, weights.detect_layout(state)),
                                    source=f"weights file {source}", allow_missing_head=bool(meta.get("backbone_only")))
        if skipped:
            warnings.warn(f"classifier left initialised: {source} has a classifier of another shape "
                          f"({', '.join(skipped)})", stacklevel=2)
    if features_only:
        model.as_features(out_indices)
    if fuse:
        from ..optimize import optimize_for_inference

        optimize_for_inference(model)
    return _with_classes(model, published, 0 if features_only else num_classes)


def _create_detector(name: str, builder: Any, num_classes: int | None, in_chans: int, pretrained: Any,
                     features_only: bool, out_indices: Any, output_stride: int | None, fuse: bool,
                     kwargs: dict[str, Any]) -> Any:
    """Detectors read their own weights files (``pretrained`` goes to the builder)."""
    if features_only or out_indices is not None or output_stride is not None:
        raise ValueError(f"features_only, out_indices and output_stride apply to backbones, not the detector {name}")
    model = builder(num_classes=num_classes, in_chans=in_chans, pretrained=pretrained, **kwargs)
    if fuse:
        from ..optimize import optimize_for_inference

        optimize_for_inference(model)
    return model


def _resolve_pretrained(name: str, pretrained: object, kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """``pretrained`` as something to load (a path, or weights already read) and its registry entry, if it
    names one (:func:`backbonekit.pretrained.entry_for`); the entry's architecture arguments join ``kwargs``
    (the caller's win). A classifier takes only its own tags; a detector also takes a backbone's."""
    from ..pretrained import entry_for, resolve

    published = entry_for(pretrained, name)  # checked before anything is downloaded
    if published is not None and published.model != name:
        if model_info(name).task != "detection":
            raise ValueError(f"{published.name} holds weights for {published.model}, found {name}")
        published = None  # a backbone's weights under a detector: its classes do not apply
    if published is not None:
        wanted = published.backbone
        if wanted is not None and kwargs.get("backbone", wanted) != wanted:
            raise ValueError(f"{published.name} holds {name} on {wanted}, found backbone={kwargs['backbone']!r} "
                             f"(drop backbone=, or pass a file of your own)")
        for key, value in published.model_kwargs.items():
            kwargs.setdefault(key, value)
    return resolve(pretrained, name), published


def _with_classes(model: Any, published: Any, num_classes: int | None) -> Any:
    """A model built from registry weights knows its classes: ``class_names`` (and, for detectors, the
    dataset's ``category_ids``), unless its classifier was re-sized or dropped."""
    if published is not None and published.classes and num_classes == published.num_classes:
        from ..pretrained import class_set

        classes = class_set(published.classes)
        model.class_names = list(classes.names)
        if classes.category_ids is not None:
            model.category_ids = list(classes.category_ids)
    return model


def _check_count(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, found {value!r}")

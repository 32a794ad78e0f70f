"""The interface every backbone shares: stages, feature maps, classifier head, freezing.

A model is a stem followed by stages. ``feature_info`` describes the output of the stem
(index 0) and of every stage (indices 1..N): channels and stride. Classification runs them
all and applies the head; ``features_only`` keeps the stages up to the deepest requested
index, drops the head, and returns the requested maps as a list in the order of ``out_indices``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn


@dataclass(frozen=True)
class FeatureInfo:
    index: int  # 0 = stem, i = i-th stage
    module: str  # module path whose output this is
    channels: int
    stride: int  # total stride (reduction) relative to the input


class Backbone(nn.Module):
    """Base class. Subclasses build their modules, then call :meth:`_finish_init`.

    Subclasses implement ``stem_modules``, ``stage_modules``, ``forward_stem`` and
    ``forward_head`` and set ``feature_info`` (all levels), ``num_features`` and ``in_chans``.
    """

    feature_info: list[FeatureInfo]
    num_features: int
    in_chans: int

    def _finish_init(self, frozen_stages: int = -1, norm_eval: bool = False) -> None:
        num_levels = len(self.feature_info)
        if not -1 <= frozen_stages < num_levels:
            raise ValueError(
                f"frozen_stages must be in [-1, {num_levels - 1}] (0 = stem only), found {frozen_stages}"
            )
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.features_only = False
        self.out_indices: tuple[int, ...] = (num_levels - 1,)
        self._freeze()

    # -- hooks for subclasses ---------------------------------------------------------
    def stem_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def stage_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def forward_stem(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        raise NotImplementedError

    def reset_classifier(self, num_classes: int) -> None:
        raise NotImplementedError

    # -- shared behaviour --------------------------------------------------------------
    @property
    def stride(self) -> int:
        """Total stride of the deepest output this model computes."""
        return self._all_feature_info[max(self.out_indices)].stride if self.features_only else (
            self.feature_info[-1].stride
        )

    @property
    def out_channels(self) -> list[int]:
        """Channels of each output map (features_only) or of the final feature map."""
        return [info.channels for info in self.feature_info] if self.features_only else [self.num_features]

    def check_input(self, x: Tensor) -> None:
        """Raise a one-line ValueError for input the network cannot take, before any conv runs."""
        if not isinstance(x, Tensor):
            raise ValueError(f"expected a torch.Tensor of shape (N, C, H, W), found {type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"expected a floating-point input (float32, float16 or bfloat16), found {x.dtype}: "
                             f"convert images first, e.g. x.float() / 255 and then normalise")
        if x.dim() != 4:
            raise ValueError(f"expected a 4-D input (N, C, H, W), found shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"expected {self.in_chans} input channels, found {x.shape[1]} (input shape {tuple(x.shape)})"
            )
        stride = self.stride
        if x.shape[2] < stride or x.shape[3] < stride:
            raise ValueError(
                f"input {x.shape[2]}x{x.shape[3]} is smaller than the network's total stride {stride}: "
                f"expected height and width >= {stride}"
            )

    def enter_stage(self, index: int, x: Tensor) -> Tensor:
        """Work between two stages that belongs to no stage (ResNet's maxpool before layer1)."""
        return x

    def forward_levels(self, x: Tensor, indices: tuple[int, ...] | None = None) -> list[Tensor]:
        """Outputs of the stem (index 0) and of every kept stage, shallow to deep; only ``indices``, in
        their order, if given (the other maps are freed as soon as the next stage has run)."""
        x = self.forward_stem(x)
        outputs = {0: x} if indices is None or 0 in indices else {}
        for i, stage in enumerate(self.stage_modules()):
            x = self.enter_stage(i, x)
            x = stage(x)
            if indices is None or i + 1 in indices:
                outputs[i + 1] = x
        return list(outputs.values()) if indices is None else [outputs[i] for i in indices]

    def forward_features(self, x: Tensor) -> Tensor:
        """The last stage's feature map (what the classifier head pools)."""
        x = self.forward_stem(x)
        for i, stage in enumerate(self.stage_modules()):
            x = self.enter_stage(i, x)  # rebinding x lets the stem output be freed before the stage runs
            x = stage(x)
        return x

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        self.check_input(x)
        if self.features_only:
            return self.forward_levels(x, self.out_indices)
        return self.forward_head(self.forward_features(x))

    def as_features(self, out_indices: tuple[int, ...] | list[int] | None = None) -> "Backbone":
        """Turn this model (in place) into a multi-scale feature extractor and return it.

        ``out_indices`` (0 = stem, i = i-th stage; default: the last three) are kept in the order given:
        ``forward``, ``feature_info`` and ``out_channels`` follow it (timm keeps the order in its
        ``feature_info`` too, but returns the maps shallow to deep). Stages deeper than the deepest
        requested index and the classifier head are removed, so the module holds exactly the
        parameters it uses (what DDP and profilers expect).
        """
        if self.features_only:
            raise ValueError("as_features expects a classification model, found one that is already features_only")
        num_levels = len(self.feature_info)
        if out_indices is None:
            out_indices = tuple(range(num_levels - 3, num_levels))
        if not isinstance(out_indices, (tuple, list)) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in out_indices):
            raise ValueError(f"out_indices must be a sequence of integers, found {out_indices!r}")
        out_indices = tuple(out_indices)
        bad = [i for i in out_indices if not 0 <= i < num_levels]
        if not out_indices or bad or len(set(out_indices)) != len(out_indices):
            raise ValueError(
                f"out_indices must be distinct integers in [0, {num_levels - 1}] "
                f"(0 = stem, {num_levels - 1} = last stage), found {out_indices}"
            )
        self._all_feature_info = list(self.feature_info)
        self._drop_stages_after(max(out_indices))
        self._drop_head()
        self.features_only = True
        self.out_indices = out_indices
        self.feature_info = [self._all_feature_info[i] for i in out_indices]
        return self

    def _drop_stages_after(self, last_index: int) -> None:
        raise NotImplementedError

    def _drop_head(self) -> None:
        raise NotImplementedError

    # -- freezing (mmdetection's backbone contract) -------------------------------------
    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return self.stem_modules() + self.stage_modules()[: self.frozen_stages]

    def _freeze(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "Backbone":
        super().train(mode)
        if mode:
            for module in self._frozen_modules():
                module.eval()
            if self.norm_eval:
                for module in self.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()
        return self


def check_num_classes(num_classes: object) -> None:
    """One ValueError line unless ``num_classes`` is an integer >= 0 (0: no classifier)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be an integer >= 0 (0 = no classifier), found {num_classes!r}")


def init_weights(model: nn.Module, zero_init_residual_bn: list[nn.Module] | None = None) -> None:
    """He (fan_out) init for convs, unit BatchNorm, and optionally zero the last norm of each residual."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for bn in zero_init_residual_bn or []:
        nn.init.zeros_(bn.weight)


def dilation_schedule(strides: list[int], output_stride: int, base_stride: int) -> list[tuple[int, int, int]]:
    """Per stage (stride, first_dilation, dilation) when strides beyond ``output_stride`` become dilation.

    ``base_stride`` is the stride before the first stage. ``first_dilation`` is the previous stage's
    dilation: the first block of a stage gives it to its first conv with a receptive field (a
    Bottleneck's 3x3 conv, a BasicBlock's first 3x3 conv, Darknet's downsampling conv), and every
    later conv of the stage, the BasicBlock's second conv included, takes ``dilation``. This is timm's
    ``make_blocks`` (``first_dilation=prev_dilation``) and torchvision's ``replace_stride_with_dilation``.
    """
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, found {output_stride}")
    current, dilation, plan = base_stride, 1, []
    for stride in strides:
        previous = dilation
        if current * stride > output_stride:
            dilation *= stride
            stride = 1
        current *= stride
        plan.append((stride, previous, dilation))
    return plan

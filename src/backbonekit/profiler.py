"""Parameters, MACs and FLOPs of a model, per module and in total (``backbonekit profile``).

Counting is PyTorch's own :class:`torch.utils.flop_counter.FlopCounterMode`: it sees every
convolution, ``mm``/``addmm``/``bmm`` (linear layers, matmuls) and attention kernel at the
dispatcher level, so functional calls are counted too, and it counts 2 FLOPs per multiply-add.
We report ``macs = flops / 2``. BatchNorm, activations, residual adds, pooling and biases are
not counted (see ``docs/profiling.md`` for why thop, fvcore and ptflops print other totals).

Forward pre/post hooks on every module attribute the running FLOP total to the module that was
executing (inclusive of its children) and record output shapes; a second dispatch mode tracks the
bytes of live tensors the forward creates, which gives the peak activation memory. All hooks are
removed and every module's train/eval flag is restored, whatever happens during the forward.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import io
import json
import re
import weakref
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from ._text import first_line

DEFAULT_INPUT_SIZE = 224  # for models that do not say which resolution they were made for
FORMATS = ("table", "json", "csv", "markdown")
MIB = 2**20
GIB = 2**30

Shape = Any  # list[int] for a tensor, a list of those for a list/tuple/dict of tensors, None otherwise


@dataclass(frozen=True)
class LayerProfile:
    """One module: its path, type, weight shape, last output shape, parameters and MACs.

    ``macs`` includes the module's children and every call of the module during the forward.
    """

    name: str
    type: str
    depth: int  # 1 for a direct child of the model, 2 for a grandchild, ...
    kernel_shape: list[int] | None  # shape of the module's own ``weight`` parameter
    output_shape: Shape
    params: int
    macs: int
    calls: int


@dataclass(frozen=True)
class ProfileResult:
    """What :func:`profile_model` measured for one model, input size and batch size."""

    model: str
    input_size: tuple[int, int]  # (height, width)
    batch_size: int
    in_chans: int
    params: int  # unique parameters (a shared parameter counts once)
    trainable_params: int
    macs: int  # conv + linear + matmul multiply-adds of one forward of the whole batch
    weight_bytes: int  # bytes of the unique parameters in their dtype
    peak_activation_bytes: int  # most bytes of forward-created tensors alive at one time
    output_shape: Shape
    layers: list[LayerProfile] = field(default_factory=list)

    @property
    def flops(self) -> int:
        """Floating-point operations: 2 per multiply-add (a multiply and an add)."""
        return 2 * self.macs

    @property
    def weight_mib(self) -> float:
        return self.weight_bytes / MIB

    @property
    def peak_activation_mib(self) -> float:
        return self.peak_activation_bytes / MIB

    def layers_to(self, depth: int | None) -> list[LayerProfile]:
        """The modules at most ``depth`` levels below the model (all of them for ``None``)."""
        return [layer for layer in self.layers if depth is None or layer.depth <= depth]

    def to_dict(self, depth: int | None = None) -> dict[str, Any]:
        """A JSON-ready dict: integers throughout (MiB figures are derived from the byte counts)."""
        return {
            "model": self.model,
            "input_size": list(self.input_size),
            "batch_size": self.batch_size,
            "in_chans": self.in_chans,
            "params": self.params,
            "trainable_params": self.trainable_params,
            "macs": self.macs,
            "flops": self.flops,
            "weight_bytes": self.weight_bytes,
            "peak_activation_bytes": self.peak_activation_bytes,
            "output_shape": self.output_shape,
            "layers": [asdict(layer) for layer in self.layers_to(depth)],
        }


# -- model resolution ------------------------------------------------------------------------
def resolve_model(spec: str, *, num_classes: int | None = None, features_only: bool = False,
                  backbone: str | None = None) -> tuple[nn.Module, int | None]:
    """Build the model a MODEL argument names; return it with its native input size (or None).

    ``spec`` is a registered name (``darknet53``), ``torchvision:NAME``, ``timm:NAME`` or
    ``module.path:callable`` (called without arguments; must return an ``nn.Module``).
    ``backbone``: the backbone of a registered detector (``fasterrcnn`` on ``detnet59``, ...).
    Unknown names raise ``KeyError``, everything else that cannot be built ``ValueError``.
    """
    prefix, sep, rest = spec.partition(":")
    if not sep:
        return _registered_model(spec, num_classes, features_only, backbone)
    if backbone is not None:
        raise ValueError(f"--backbone goes with a registered detector (yolov3, fasterrcnn, retinanet, fcos), found {spec!r}")
    if not prefix or not rest:
        raise ValueError(f"expected MODEL as NAME, torchvision:NAME, timm:NAME or module.path:callable, found {spec!r}")
    if prefix == "torchvision":
        return _torchvision_model(rest, num_classes, features_only)
    if prefix == "timm":
        return _timm_model(rest, num_classes, features_only)
    return _callable_model(prefix, rest, num_classes, features_only)


def _registered_model(name: str, num_classes: int | None, features_only: bool,
                      backbone: str | None = None) -> tuple[nn.Module, int]:
    from . import create_model
    from .models import model_info

    info = model_info(name)  # KeyError with close matches for unknown names
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if backbone is not None:
        if info.task != "detection":
            raise ValueError(f"--backbone goes with a detector (yolov3, fasterrcnn, retinanet, fcos), found the "
                             f"{info.task} model {name!r}")
        kwargs["backbone"] = backbone
    return create_model(name, features_only=features_only, **kwargs), info.input_size


def _torchvision_model(name: str, num_classes: int | None, features_only: bool) -> tuple[nn.Module, None]:
    import torchvision

    if features_only:
        raise ValueError("--features-only applies to registered and timm models, not torchvision:NAME")
    if name not in torchvision.models.list_models():
        raise KeyError(f"unknown torchvision model {name!r}: see torchvision.models.list_models()")
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    return torchvision.models.get_model(name, weights=None, **kwargs), None


def _timm_model(name: str, num_classes: int | None, features_only: bool) -> tuple[nn.Module, int | None]:
    try:
        import timm
    except ImportError as exc:
        raise ValueError(f"timm:{name} needs the timm package, which is not installed") from exc
    if not timm.is_model(name):
        raise KeyError(f"unknown timm model {name!r}: see timm.list_models()")
    kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    model = timm.create_model(name, pretrained=False, features_only=features_only, **kwargs)
    input_size = getattr(model, "pretrained_cfg", {}).get("input_size")
    return model, (input_size[-1] if input_size else None)


def _callable_model(module_path: str, attr: str, num_classes: int | None,
                    features_only: bool) -> tuple[nn.Module, None]:
    if num_classes is not None or features_only:
        raise ValueError("--num-classes and --features-only do not apply to module.path:callable models")
    try:
        module = importlib.import_module(module_path)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_path!r} for {module_path}:{attr}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"expected a callable {attr!r} in module {module_path!r}, found {type(factory).__name__}")
    model = factory()
    if not isinstance(model, nn.Module):
        raise ValueError(f"{module_path}:{attr}() must return a torch.nn.Module, found {type(model).__name__}")
    return model, None


def parse_input_size(values: Sequence[str | int] | str | int | None, default: int | None) -> tuple[int, int]:
    """``416`` / ``"416"`` -> (416, 416); ``["416", "320"]`` or ``"416x320"`` -> (416, 320) as (H, W)."""
    if values is None:
        size = default or DEFAULT_INPUT_SIZE
        return size, size
    if isinstance(values, (str, int)):
        values = [str(values)]
    parts = [p for v in values for p in re.split(r"[x,\s]+", str(v).strip().lower()) if p]
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"expected --input-size as one or two positive integers (SIZE or H W), "
                         f"found {' '.join(map(str, values))!r}")
    height, width = int(parts[0]), int(parts[-1])
    return height, width


# -- measuring -------------------------------------------------------------------------------
class _LiveTensorBytes(TorchDispatchMode):
    """Track the bytes of storages created by ops while active; remember the peak.

    Each new storage is counted once (views and in-place results share it) and uncounted when
    PyTorch frees it, so the peak is the largest set of forward-created tensors alive together:
    layer outputs, intermediates and whatever the model keeps for later (skip connections).
    The input, parameters and buffers are not included; neither are kernels' private workspaces.
    """

    def __init__(self, exclude: Sequence[Tensor]) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: set[int] = {t.untyped_storage()._cdata for t in exclude}

    def _release(self, key: int, nbytes: int) -> None:
        self.current -= nbytes
        self._live.discard(key)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, Tensor):
                self._track(tensor.untyped_storage())
        return out

    def _track(self, storage: torch.UntypedStorage) -> None:
        key, nbytes = storage._cdata, storage.nbytes()  # the storage's own address: meta storages have no data_ptr
        if nbytes == 0 or key in self._live:
            return
        self._live.add(key)
        self.current += nbytes
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._release, key, nbytes)


def _shape_of(output: Any) -> Shape:
    if isinstance(output, Tensor):
        return list(output.shape)
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        shapes = [_shape_of(o) for o in output]
        return shapes if any(s is not None for s in shapes) else None
    return None


class _ModuleRecorder:
    """Forward hooks that give each module its share of the running MAC count and its output shape."""

    def __init__(self, model: nn.Module, counter: FlopCounterMode) -> None:
        self.counter = counter
        self.names = {module: name for name, module in model.named_modules()}
        self.flops = {module: 0 for module in self.names}
        self.calls = {module: 0 for module in self.names}
        self.shapes: dict[nn.Module, Shape] = {}
        self._starts: dict[nn.Module, list[int]] = {module: [] for module in self.names}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> "_ModuleRecorder":
        try:
            for module in self.names:
                self._handles.append(module.register_forward_pre_hook(self._before))
                self._handles.append(module.register_forward_hook(self._after))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _before(self, module: nn.Module, inputs: Any) -> None:
        self._starts[module].append(self.counter.get_total_flops())

    def _after(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self.flops[module] += self.counter.get_total_flops() - self._starts[module].pop()
        self.calls[module] += 1
        self.shapes[module] = _shape_of(output)

    def layers(self) -> list[LayerProfile]:
        return [self._layer(module, name) for module, name in self.names.items() if name]

    def _macs(self, module: nn.Module) -> int:
        # a container that is never called itself (the model loops over its children) gets its children's sum
        if self.calls[module] or not self.names.get(module):
            return self.flops[module] // 2
        return sum(self._macs(child) for child in module.children() if child in self.names)

    def _layer(self, module: nn.Module, name: str) -> LayerProfile:
        weight = module._parameters.get("weight")
        return LayerProfile(
            name=name,
            type=type(module).__name__,
            depth=name.count(".") + 1,
            kernel_shape=list(weight.shape) if weight is not None else None,
            output_shape=self.shapes.get(module),
            params=sum(p.numel() for p in module.parameters()),
            macs=self._macs(module),
            calls=self.calls[module],
        )


def _check_input(model: nn.Module, shape: tuple[int, int, int, int]) -> None:
    """The model's own one-line input check (``Backbone.check_input``: dims, channels, stride), on a
    meta tensor of ``shape`` so nothing is allocated."""
    check = getattr(model, "check_input", None)
    if callable(check):
        check(torch.empty(shape, device="meta"))


def available_memory(device: torch.device) -> int | None:
    """Bytes a new allocation can take on ``device`` now: CUDA's free memory, the CPU's ``MemAvailable``
    (``/proc/meminfo``); ``None`` where unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the file counts kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def estimate_forward_bytes(model: nn.Module, shape: tuple[int, int, int, int], dtype: torch.dtype) -> int | None:
    """Bytes of the input plus the peak of forward-created tensors, from a forward on the meta device.

    Meta tensors carry shapes and sizes but no data, so this allocates nothing and takes milliseconds
    whatever the input size; the peak is tracked exactly as :func:`profile_model` tracks the real one.
    ``None`` when the model cannot run on meta tensors (data-dependent code, tensors held outside its
    parameters and buffers).
    """
    from torch.func import functional_call

    x = torch.empty(shape, device="meta", dtype=dtype)
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    meta = {name: torch.empty_like(t, device="meta") for name, t in tensors.items()}
    memory = _LiveTensorBytes(exclude=[x, *meta.values()])
    try:
        with torch.no_grad(), memory, _kept_tensor_attributes(model):
            functional_call(model, meta, (x,))
    except Exception:  # anything the meta device cannot run: the real forward reports its own errors
        return None
    return x.nbytes + memory.peak


def _is_tensors(value: Any) -> bool:
    return isinstance(value, Tensor) or (isinstance(value, (list, tuple)) and len(value) > 0
                                         and all(isinstance(v, Tensor) for v in value))


@contextlib.contextmanager
def _kept_tensor_attributes(model: nn.Module) -> Iterator[None]:
    """Put back every module's plain tensor attributes (not parameters or buffers) after the block.

    A forward on the meta device may move caches held outside the state: torchvision's ``AnchorGenerator``
    moves its ``cell_anchors`` list to the input's device, and left on ``meta`` it breaks every later
    real forward ("Cannot copy out of meta tensor")."""
    saved = [(module, name, value) for module in model.modules()
             for name, value in vars(module).items() if not name.startswith("_") and _is_tensors(value)]
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def _check_fits_in_memory(model: nn.Module, shape: tuple[int, int, int, int], dtype: torch.dtype,
                          device: torch.device) -> None:
    available = available_memory(device)
    if available is None:
        return
    needed = estimate_forward_bytes(model, shape, dtype)
    if needed is None:
        needed = _numel(shape) * dtype.itemsize  # at least the input itself
    if needed > available:
        raise ValueError(f"input {'x'.join(map(str, shape))} cannot be profiled on {device.type}: expected at most "
                         f"{_gib(available)} (the memory available), found an estimated {_gib(needed)} for the "
                         f"input and activations; use a smaller --input-size or --batch-size")


def _gib(nbytes: int) -> str:
    value = nbytes / GIB
    return f"{value:.1f} GiB" if value >= 10 else f"{value:.3g} GiB"


def _numel(shape: Sequence[int]) -> int:
    count = 1
    for n in shape:
        count *= n
    return count


def _infer_in_chans(model: nn.Module) -> int:
    in_chans = getattr(model, "in_chans", None)
    if isinstance(in_chans, int):
        return in_chans
    first_conv = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    return first_conv.in_channels if first_conv is not None else 3


def _run_forward(model: nn.Module, x: Tensor) -> Any:
    try:
        return model(x)
    except RuntimeError as exc:
        raise ValueError(f"forward failed on an input of shape {tuple(x.shape)} (too small for the model's "
                         f"stride, or wrong channels?): {first_line(exc)}") from exc


def profile_model(model: nn.Module, input_size: int | tuple[int, int] = DEFAULT_INPUT_SIZE, *, batch_size: int = 1,
                  in_chans: int | None = None, name: str | None = None) -> ProfileResult:
    """Count parameters, MACs (conv + linear + matmul multiply-adds) and peak activation memory.

    Runs one forward pass in eval mode under ``torch.no_grad()`` on a random input of shape
    ``(batch_size, in_chans, H, W)`` on the model's device and dtype. The model is left as it was:
    hooks removed, each module's train/eval flag restored, parameters and buffers untouched.

    Args:
        model: any ``nn.Module`` taking one image tensor; a list/tuple/dict output is fine.
        input_size: ``S`` for S x S, or ``(H, W)``.
        batch_size: images per forward; MACs and activation memory scale with it.
        in_chans: input channels (default: the model's ``in_chans`` or its first conv's).
        name: the label stored in the result (default: the model's class name).
    """
    height, width = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if min(height, width, batch_size) < 1:
        raise ValueError(f"expected positive input size and batch size, found {height}x{width}, batch {batch_size}")
    reference = next(model.parameters(), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
    in_chans = in_chans or _infer_in_chans(model)
    shape = (batch_size, in_chans, height, width)
    _check_input(model, shape)
    _check_fits_in_memory(model, shape, dtype, device)  # one line instead of an allocation failure

    modes = {module: module.training for module in model.modules()}
    counter = FlopCounterMode(display=False)
    try:
        model.eval()
        # some torch releases' FlopCounterMode counts nothing under inference_mode (pytorch#126268)
        with torch.inference_mode(False), torch.no_grad(), _ModuleRecorder(model, counter) as recorder:
            x = torch.randn(batch_size, in_chans, height, width, device=device, dtype=dtype)
            memory = _LiveTensorBytes(exclude=[x, *model.parameters(), *model.buffers()])
            with counter, memory:
                output = _run_forward(model, x)
                output_shape = _shape_of(output)
                del output
    finally:
        for module, training in modes.items():
            module.training = training

    params = list(model.parameters())  # unique: a parameter shared by two modules appears once
    return ProfileResult(
        model=name or type(model).__name__,
        input_size=(height, width),
        batch_size=batch_size,
        in_chans=in_chans,
        params=sum(p.numel() for p in params),
        trainable_params=sum(p.numel() for p in params if p.requires_grad),
        macs=counter.get_total_flops() // 2,
        weight_bytes=sum(p.numel() * p.element_size() for p in params),
        peak_activation_bytes=memory.peak,
        output_shape=output_shape,
        layers=recorder.layers(),
    )


def profile(spec: str, input_size: int | tuple[int, int] | Sequence[str] | str | None = None, *, batch_size: int = 1,
            features_only: bool = False, num_classes: int | None = None, backbone: str | None = None) -> ProfileResult:
    """Resolve a MODEL string (see :func:`resolve_model`) and profile it at its native size by default."""
    if input_size is not None:
        parse_input_size(input_size, None)  # refuse a bad size before building the model
    model, native_size = resolve_model(spec, num_classes=num_classes, features_only=features_only, backbone=backbone)
    size = parse_input_size(input_size, native_size)
    return profile_model(model, size, batch_size=batch_size, name=spec)


# -- formatting ------------------------------------------------------------------------------
def _dims(shape: Shape) -> str:
    """``[1, 32, 416, 416]`` -> ``1x32x416x416``; a list of shapes -> ``[1x256x52x52, ...]``."""
    if shape is None:
        return "-"
    if any(isinstance(s, list) or s is None for s in shape):
        return "[" + ", ".join(_dims(s) for s in shape) + "]"
    return "x".join(str(d) for d in shape) or "scalar"


def _share(macs: int, total: int) -> str:
    return f"{100 * macs / total:.1f}%" if total else "-"


def _layer_cells(layer: LayerProfile, total_macs: int) -> list[str]:
    return [layer.name, layer.type, _dims(layer.kernel_shape), _dims(layer.output_shape),
            f"{layer.params:,}", f"{layer.macs / 1e6:,.1f}", _share(layer.macs, total_macs)]


LAYER_HEADER = ["layer", "type", "kernel", "output", "params", "MMACs", "share"]


def _total_lines(result: ProfileResult) -> list[tuple[str, str]]:
    height, width = result.input_size
    return [
        ("input", f"{result.batch_size}x{result.in_chans}x{height}x{width}"),
        ("params", f"{result.params:,} ({result.params / 1e6:.2f} M)"),
        ("trainable params", f"{result.trainable_params:,}"),
        ("MACs", f"{result.macs:,} ({result.macs / 1e9:.3f} G)"),
        ("FLOPs (2 x MACs)", f"{result.flops:,} ({result.flops / 1e9:.3f} G)"),
        ("weight size", f"{result.weight_mib:.2f} MiB"),
        ("peak activations", f"{result.peak_activation_mib:.2f} MiB (forward, batch {result.batch_size})"),
    ]


def _aligned_rows(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    numeric = {4, 5, 6}  # params, MMACs, share: right-aligned
    return ["  ".join(cell.rjust(w) if i in numeric else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
            .rstrip() for row in rows]


def format_table(result: ProfileResult, depth: int | None) -> str:
    """One row per module down to ``depth``, then the totals."""
    layers = result.layers_to(depth)
    lines = _aligned_rows([LAYER_HEADER] + [_layer_cells(layer, result.macs) for layer in layers]) if layers else []
    if lines:
        lines.insert(1, "-" * len(lines[0]))
        lines.append("")
    label_width = max(len(label) for label, _ in _total_lines(result))
    lines += [f"{result.model}"] + [f"  {label:<{label_width}}  {value}" for label, value in _total_lines(result)]
    return "\n".join(lines)


def format_markdown(result: ProfileResult, depth: int | None) -> str:
    def row(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    lines = []
    layers = result.layers_to(depth)
    if layers:
        lines += [row(LAYER_HEADER), row(["---"] * 4 + ["---:"] * 3)]
        lines += [row(_layer_cells(layer, result.macs)) for layer in layers]
        lines.append("")
    lines += [row([result.model, ""]), row(["---", "---:"])] + [row(pair) for pair in _total_lines(result)]
    return "\n".join(lines)


def format_csv(result: ProfileResult, depth: int | None) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["name", "type", "depth", "kernel_shape", "output_shape", "params", "macs", "calls"])
    for layer in result.layers_to(depth):
        writer.writerow([layer.name, layer.type, layer.depth, _dims(layer.kernel_shape), _dims(layer.output_shape),
                         layer.params, layer.macs, layer.calls])
    return buffer.getvalue().rstrip("\n")


FORMATTERS: dict[str, Callable[[ProfileResult, int | None], str]] = {
    "table": format_table,
    "markdown": format_markdown,
    "csv": format_csv,
    "json": lambda result, depth: json.dumps(result.to_dict(depth), indent=2),
}

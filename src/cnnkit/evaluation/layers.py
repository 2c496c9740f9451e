"""Where a CNN's feature maps come from: its conv stages, layer names and map geometry.

Layers are named as in ``model.named_modules()`` (``features.3``, ``backbone.blocks.2``).
The trunk (``features`` of cnnkit's own architectures, ``backbone`` of timm/torchvision
ones) is traced once on the meta device: shapes only, nothing computed, no weights
touched. Its *units* are its children with plain ``nn.Sequential``/``nn.ModuleList``
containers opened up (a ResNet's ``layer1.0``, a timm EfficientNet's ``blocks.2.1``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from cnnkit.errors import UsageError
from cnnkit.models import BackboneClassifier

# Layers that pass maps through unchanged at inference: never a stage of their own.
_PASS_THROUGH = (nn.Identity, nn.modules.dropout._DropoutNd)
_GLOBAL_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_LOCAL_POOLS = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)
# Layers whose window arithmetic is known exactly (subclasses such as timm's Conv2dSame pad
# on the fly and are treated like any other block).
_WINDOWED = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The first ``nn.Conv2d`` of the model (registration order: the stem) and its name."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise UsageError(f"{type(model).__name__} has no nn.Conv2d layer")


@dataclass
class _Call:
    name: str
    module: nn.Module
    in_shape: torch.Size  # input shape without the batch dimension
    shape: torch.Size  # output shape without the batch dimension


def _trunk(model: nn.Module) -> tuple[str, nn.Module]:
    """(name, module) of the conv trunk: ``backbone`` or ``features``, else the model itself."""
    if isinstance(model, BackboneClassifier):
        return "backbone", model.backbone
    features = getattr(model, "features", None)
    if isinstance(features, nn.Module):
        return "features", features
    return "", model


def _is_plain_container(module: nn.Module) -> bool:
    """Sequential/ModuleList whose forward is the library's: its children run in order."""
    if isinstance(module, nn.ModuleList):
        return True
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _units(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    """The trunk's children, with plain containers opened up (timm ``blocks.2.1``)."""
    out = []
    for name, child in module.named_children():
        full = f"{prefix}.{name}" if prefix else name
        out += _units(child, full) if _is_plain_container(child) else [(full, child)]
    return out


def _trace(model: nn.Module, input_size: tuple[int, int]) -> list[_Call]:
    """The trunk's units in execution order with their input and output shapes."""
    prefix, trunk = _trunk(model)
    calls: list[_Call] = []
    seen: set[str] = set()

    def recorder(name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            if name not in seen and isinstance(output, torch.Tensor):
                seen.add(name)
                shape_in = (
                    inputs[0].shape[1:]
                    if inputs and isinstance(inputs[0], torch.Tensor)
                    else output.shape[1:]
                )
                calls.append(_Call(name, module, shape_in, output.shape[1:]))

        return hook

    handles = [m.register_forward_hook(recorder(n)) for n, m in _units(trunk, prefix)]
    try:
        _shapes_only(trunk, first_conv(model)[1].in_channels, input_size)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _spatial_calls(calls: list[_Call]) -> list[_Call]:
    """4-D outputs before global pooling, pass-through layers left out."""
    out = []
    for call in calls:
        if len(call.shape) != 3 or _is_global_pool(call.module):
            break
        if not isinstance(call.module, _PASS_THROUGH):
            out.append(call)
    return out


def _is_global_pool(module: nn.Module) -> bool:
    if isinstance(module, _GLOBAL_POOLS):
        return True
    try:
        from timm.layers import SelectAdaptivePool2d
    except ImportError:  # timm missing: no timm backbones either
        return False
    return isinstance(module, SelectAdaptivePool2d)


def _stage_names(model: nn.Module, calls: list[_Call]) -> list[str]:
    """Names of the calls that end a stage (see :func:`conv_stages`)."""
    ends = []
    for call, after in zip(calls, calls[1:] + [None], strict=True):
        if after is None or isinstance(after.module, nn.Conv2d):
            ends.append(call.name)
        elif after.shape[1:] != call.shape[1:] and not isinstance(after.module, _LOCAL_POOLS):
            ends.append(call.name)  # a strided block follows; a plain pool joins this stage
    return _name_by_container(model, ends, _trunk(model)[0])


def _name_by_container(model: nn.Module, names: list[str], root: str) -> list[str]:
    """Name a stage by the plain Sequential it ends when that Sequential holds no other
    stage: ``layer1.1`` -> ``layer1`` (ResNet), ``blocks.6.0`` -> ``blocks.6`` (timm)."""
    names = list(names)
    changed = True
    while changed:
        changed = False
        for i, name in enumerate(names):
            parent, _, last = name.rpartition(".")
            if not parent or parent == root or not parent.startswith(f"{root}." if root else ""):
                continue
            container = model.get_submodule(parent)
            if not (isinstance(container, nn.Sequential) and _is_plain_container(container)):
                continue
            others = [n for n in names if n != name and n.startswith(f"{parent}.")]
            if last == list(container._modules)[-1] and not others:
                names[i], changed = parent, True
    return names


def conv_stages(model: nn.Module, input_size: tuple[int, int] = (224, 224)) -> list[str]:
    """Names of the layers that end a conv stage, in execution order.

    A stage ends right before the next ``nn.Conv2d`` or strided block (a plain max/avg
    pool stays with the stage before it) and at the last feature map before global
    pooling: for LeNet ``features.2`` and ``features.5`` (conv-ReLU-pool blocks); for
    backbones the stage outputs (``backbone.layer1``... in a ResNet, ``backbone.blocks.1``...
    in a timm EfficientNet). The last stage is Grad-CAM's default layer for backbones.

    Args:
        model: a cnnkit classifier (or any module with conv layers).
        input_size: (height, width) to trace with; only shapes are computed (meta device).
    """
    return _stage_names(model, _spatial_calls(_trace(model, input_size)))


def default_gradcam_layer(model: nn.Module, input_size: tuple[int, int] = (224, 224)) -> str:
    """Grad-CAM's default layer: the last feature map before pooling.

    For a backbone, its last 4-D output before global pooling (the last conv stage);
    for cnnkit's own architectures, the last ``nn.Conv2d`` of ``features``.
    """
    root, trunk = _trunk(model)
    if not isinstance(model, BackboneClassifier):
        convs = [name for name, m in trunk.named_modules() if isinstance(m, nn.Conv2d)]
        if convs:
            return f"{root}.{convs[-1]}" if root else convs[-1]
    stages = conv_stages(model, input_size)
    if not stages:
        raise UsageError(f"{type(model).__name__} has no 4-D feature map to explain")
    return stages[-1]


def get_layer(model: nn.Module, name: str, input_size: tuple[int, int] = (224, 224)) -> nn.Module:
    """The module called ``name``; unknown names list the conv stages.

    Raises:
        UsageError: no module has that name.
    """
    try:
        return model.get_submodule(name) if name else model
    except AttributeError:
        stages = conv_stages(model, input_size)
        raise UsageError(
            f"unknown layer {name!r}; conv stages: {', '.join(stages)} "
            "(any name from model.named_modules() with a 4-D output works too)"
        ) from None


# ----------------------------------------------------------------------------- geometry


def map_centres(
    model: nn.Module, layer: str, input_size: tuple[int, int]
) -> tuple[tuple[float, float], ...]:
    """Where a layer's map cells sit on the input: per axis (y, x), ``(start, step)``.

    The centre of map cell ``j`` lies on input pixel ``start + step * j`` (pixel centres
    at 0, 1, ...). Unpadded convs shrink the map towards the middle: LeNet's last conv
    (8x8 at 28x28) covers pixels 6.5 to 20.5, so stretching it over the whole image
    would push heat off the digit. Exact for ``nn.Conv2d``/``MaxPool2d``/``AvgPool2d``;
    any other unit that changes the size is assumed centred (as a plain resize is).
    A layer that is not a unit of the trunk is assumed centred on the whole input.
    """
    calls = _trace(model, input_size)
    inside = [i for i, c in enumerate(calls) if c.name == layer or c.name.startswith(f"{layer}.")]
    if not inside:
        shape = get_layer_output_shape(model, layer, input_size)
        return tuple(
            _centred(0.0, 1.0, size, out) for size, out in zip(input_size, shape[-2:], strict=True)
        )
    axes = []
    for axis in (0, 1):
        start, step = 0.0, 1.0
        for call in calls[: inside[-1] + 1]:
            start, step = _through(call, axis, start, step)
        axes.append((start, step))
    return tuple(axes)


def _through(call: _Call, axis: int, start: float, step: float) -> tuple[float, float]:
    """``(start, step)`` after one unit (receptive-field arithmetic)."""
    size_in, size_out = call.in_shape[-2 + axis], call.shape[-2 + axis]
    module = call.module
    if type(module) in _WINDOWED:
        keys = ("kernel_size", "stride", "padding", "dilation")  # AvgPool2d has no dilation: 1
        kernel, stride, pad, dilation = (_pair(getattr(module, key, 1))[axis] for key in keys)
        span = dilation * (kernel - 1) + 1
        pad = (span - 1) / 2 if pad == "same" else 0 if pad == "valid" else pad
        return start + ((span - 1) / 2 - pad) * step, step * stride
    return _centred(start, step, size_in, size_out)


def _centred(start: float, step: float, size_in: int, size_out: int) -> tuple[float, float]:
    if size_in == size_out or size_out == 0:
        return start, step
    ratio = size_in / size_out
    return start + (ratio - 1) / 2 * step, step * ratio


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def get_layer_output_shape(model: nn.Module, layer: str, input_size: tuple[int, int]) -> torch.Size:
    """A layer's output shape ``[C, H, W]`` for one image.

    Raises:
        UsageError: unknown layer, or one without a ``[C, H, W]`` output (lists the stages).
    """
    module = get_layer(model, layer, input_size)
    shapes: list[torch.Size] = []

    def hook(module: nn.Module, inputs, output) -> None:
        if not shapes and isinstance(output, torch.Tensor):
            shapes.append(output.shape[1:])

    handle = module.register_forward_hook(hook)
    try:
        _shapes_only(model, first_conv(model)[1].in_channels, input_size)
    finally:
        handle.remove()
    if not shapes or len(shapes[0]) != 3:
        stages = ", ".join(conv_stages(model, input_size))
        raise UsageError(f"layer {layer!r} gives no feature maps [C, H, W]; conv stages: {stages}")
    return shapes[0]


def _shapes_only(module: nn.Module, in_chans: int, input_size: tuple[int, int]) -> None:
    """Run ``module`` on one blank image for its hooks' sake, in eval mode.

    On the meta device (shapes only, no arithmetic; the module's own tensors untouched),
    or on real zeros without autograd for the rare layer that has no meta kernel.
    """
    state = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    was_training = module.training
    module.eval()
    try:
        meta = {key: torch.empty_like(t, device="meta") for key, t in state.items()}
        try:
            functional_call(module, meta, (torch.empty(1, in_chans, *input_size, device="meta"),))
        except NotImplementedError:  # an op without a meta kernel
            device = next(iter(state.values())).device if state else torch.device("cpu")
            with torch.no_grad():
                module(torch.zeros(1, in_chans, *input_size, device=device))
    finally:
        module.train(was_training)

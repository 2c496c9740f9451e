"""One registry and one factory: ``@register_model`` fills a dict, ``create_model`` builds.

Every registered builder takes ``num_classes``, ``in_chans`` and ``input_size`` (height,
width) plus its own keyword arguments, and returns an ``nn.Module`` with
``forward_features``, ``forward_head`` and ``reset_head(num_classes)``. Mistakes a user can
make (unknown name, unknown argument, too small an image) raise :class:`UsageError`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from cnnkit.errors import UsageError, unknown_name
from cnnkit.models.base import InputTooSmallError

_BUILD_ARGS = ("num_classes", "in_chans", "input_size")


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one model.

    Attributes:
        name: registry name (``"vgg16_bn"``).
        fn: builder ``fn(num_classes, in_chans, input_size, **kwargs) -> nn.Module``.
        default_input_size: (height, width) the architecture was designed for.
        default_in_chans: image channels it was designed for (1 grey, 3 RGB).
        description: one line for ``cnnkit`` listings.
    """

    name: str
    fn: Callable[..., nn.Module]
    default_input_size: tuple[int, int]
    default_in_chans: int
    description: str


_MODELS: dict[str, ModelInfo] = {}
# "source:arch" names (timm:resnet18, tv:vgg16) are resolved by the source's info function.
_SOURCES: dict[str, Callable[[str, str], ModelInfo]] = {}


def register_model(
    name: str, *, default_input_size: tuple[int, int], default_in_chans: int, description: str
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that registers a model builder (a function or class) under ``name``.

    Raises:
        ValueError: ``name`` is already registered (a programming error).
    """

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        size = (int(default_input_size[0]), int(default_input_size[1]))
        _MODELS[name] = ModelInfo(name, fn, size, default_in_chans, description)
        return fn

    return decorator


def register_source(prefix: str, info: Callable[[str, str], ModelInfo]) -> None:
    """Resolve names ``prefix:ARCH`` with ``info(prefix, arch)`` (outside model libraries)."""
    _SOURCES[prefix] = info


def list_sources() -> list[str]:
    """Prefixes of outside model libraries (``timm``, ``tv``)."""
    return sorted(_SOURCES)


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_MODELS)


def model_info(name: str) -> ModelInfo:
    """The registry entry for ``name``.

    Raises:
        UsageError: unknown name (the message lists the valid ones).
    """
    prefix, colon, arch = name.partition(":")
    if colon and prefix in _SOURCES and arch:
        return _SOURCES[prefix](prefix, arch)
    if name not in _MODELS:
        valid = list_models() + [f"{p}:ARCH" for p in list_sources()]
        raise unknown_name("model", name, valid)
    return _MODELS[name]


def create_model(
    name: str,
    num_classes: int = 10,
    in_chans: int | None = None,
    input_size: int | tuple[int, int] | None = None,
    **kwargs: object,
) -> nn.Module:
    """Build a registered model with freshly initialised weights.

    Args:
        name: a name from :func:`list_models`.
        num_classes: number of logits.
        in_chans: image channels (None: the model's default).
        input_size: side of a square image, or (height, width) (None: the model's default).
            Layer sizes inside the head are computed from it.
        **kwargs: the model's own arguments (e.g. ``dropout`` for VGG).

    Raises:
        UsageError: unknown name, an argument the model does not accept, a non-positive
            size or count, or an input too small for the architecture (the message gives
            the smallest square size that works).
    """
    info = model_info(name)
    _check_kwargs(info, kwargs)
    chans = info.default_in_chans if in_chans is None else _positive("in_chans", in_chans)
    size = info.default_input_size if input_size is None else _as_size(input_size)
    _positive("num_classes", num_classes)
    try:
        return info.fn(num_classes=num_classes, in_chans=chans, input_size=size, **kwargs)
    except InputTooSmallError as err:
        smallest = smallest_input_size(name, chans, **kwargs)
        raise UsageError(
            f"model {name!r} needs inputs of at least {smallest}x{smallest} pixels, "
            f"got {size[0]}x{size[1]}; use --image-size {smallest} or larger"
        ) from err


def smallest_input_size(name: str, in_chans: int | None = None, **kwargs: object) -> int:
    """Smallest side ``s`` such that an ``s x s`` image passes through the model's trunk.

    Binary search over forward passes of a meta-device copy (shapes only, so it is cheap);
    valid because conv and pool output sizes never shrink as the input grows.

    Raises:
        UsageError: unknown name or argument.
    """
    info = model_info(name)
    _check_kwargs(info, kwargs)
    chans = info.default_in_chans if in_chans is None else in_chans
    with torch.device("meta"):
        model = info.fn(
            num_classes=1, in_chans=chans, input_size=info.default_input_size, **kwargs
        ).eval()  # eval: BatchNorm skips its (meta) running-stat updates
    lo, hi = 1, min(info.default_input_size)  # the default size is known to work
    while lo < hi:
        mid = (lo + hi) // 2
        if _trunk_accepts(model, chans, mid):
            hi = mid
        else:
            lo = mid + 1
    return hi


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter values in ``model`` (only those with ``requires_grad`` if asked)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _trunk_accepts(model: nn.Module, in_chans: int, side: int) -> bool:
    """Whether a meta-device ``model`` turns ``side x side`` images into non-empty features."""
    x = torch.empty(2, in_chans, side, side, device="meta")
    try:
        return model.forward_features(x).numel() > 0
    except RuntimeError:  # conv/pool shape checks
        return False


def _check_kwargs(info: ModelInfo, kwargs: dict[str, object]) -> None:
    """Raise UsageError naming the accepted arguments if ``kwargs`` has any others."""
    params = inspect.signature(info.fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [p for p in params if p not in _BUILD_ARGS]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise UsageError(
            f"model {info.name!r} got unknown argument(s) {', '.join(map(repr, unknown))}; "
            f"accepted arguments: {', '.join(accepted) or 'none'}"
        )


def _positive(what: str, value: int) -> int:
    if not isinstance(value, int) or value < 1:
        raise UsageError(f"{what} must be a positive integer, got {value!r}")
    return value


def _as_size(input_size: int | tuple[int, int]) -> tuple[int, int]:
    """``32`` or ``(32, 32)`` -> ``(32, 32)``; raise UsageError on anything else."""
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    if len(input_size) != 2:
        raise UsageError(f"input_size must be an int or (height, width), got {input_size!r}")
    return (_positive("input height", input_size[0]), _positive("input width", input_size[1]))

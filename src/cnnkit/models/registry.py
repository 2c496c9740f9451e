"""One registry and one factory: ``@register_model`` fills a dict, ``create_model`` builds.

Every cnnkit builder takes ``num_classes``, ``in_chans`` and ``input_size`` (height,
width) plus its own keyword arguments, and returns an ``nn.Module`` with
``forward_features``, ``forward_head`` and ``reset_head(num_classes)``. Mistakes a user can
make (unknown name, unknown argument, too small an image) raise :class:`UsageError`.

Your own models are relaxed in two ways: a builder receives only those of
``num_classes``/``in_chans``/``input_size`` its signature names (a plain
``MyNet(num_classes=10)`` works), and a plain ``nn.Module`` whose ``forward`` returns
logits ``[B, num_classes]`` is enough: without ``forward_features`` the whole model counts
as the trunk (Grad-CAM takes its last conv; ``reset_head``, feature caching and
``--freeze`` are for models that have them). Your own code comes in two ways: registered
with ``@register_model`` in Python, or named as ``FILE.py:NAME`` / ``package.module:NAME``
(see :mod:`cnnkit.usercode`, which decides when such code may be imported). Either way,
cnnkit runs one forward pass at build time to check the logits' shape.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from cnnkit import usercode
from cnnkit.errors import CnnkitError, UsageError, unknown_name
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
    name: str,
    *,
    default_input_size: tuple[int, int] | None = None,
    default_in_chans: int | None = None,
    description: str | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that registers a model builder (a function or class) under ``name``.

    Example (your own model, then ``cnnkit.train(model="tiny")``)::

        @cnnkit.register_model("tiny")
        class Tiny(nn.Module):
            def __init__(self, num_classes=10, in_chans=1): ...

    The builder is called with the keyword arguments its signature names among
    ``num_classes``, ``in_chans`` and ``input_size`` (height, width), plus the model's own
    (``--model-kwargs``). Defaults left out come from the builder's own ``input_size`` and
    ``in_chans`` defaults (else 224x224 and 3) and its docstring's first line. The
    checkpoint records the module and file that registered it: loading it in another
    process needs that module imported first, or ``--trust-code FILE_OR_MODULE``.

    Raises:
        ValueError: ``name`` is already registered (a programming error).
    """

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = _info_for(name, fn, default_input_size, default_in_chans, description)
        return fn

    return decorator


def _info_for(name: str, fn: Callable[..., nn.Module], input_size: tuple[int, int] | int | None,
              in_chans: int | None, description: str | None) -> ModelInfo:  # fmt: skip
    """A :class:`ModelInfo`, filling what is not given from the builder's own defaults."""
    defaults = _signature_defaults(fn)
    size = input_size if input_size is not None else defaults.get("input_size", (224, 224))
    size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    chans = int(in_chans if in_chans is not None else defaults.get("in_chans", 3))
    if description is None:
        doc = inspect.getdoc(getattr(fn, "func", fn)) or ""
        description = doc.splitlines()[0] if doc else f"your model {getattr(fn, '__name__', name)}"
    return ModelInfo(name, fn, size, chans, description)


def _signature_defaults(fn: Callable[..., object]) -> dict[str, object]:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}
    return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}


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
    if usercode.parse_ref(name, list_sources()) is not None:
        return _user_info(name)
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
            size or count, an input too small for the architecture (the message gives
            the smallest square size that works), or an argument value the builder refuses
            with ValueError/TypeError (e.g. ``dropout=1.5``; the message names the options).
    """
    info = model_info(name)
    _check_kwargs(info, kwargs)
    chans = info.default_in_chans if in_chans is None else _positive("in_chans", in_chans)
    size = info.default_input_size if input_size is None else _as_size(input_size)
    _positive("num_classes", num_classes)
    try:
        model = _build(info, num_classes, chans, size, kwargs)
        if usercode.is_user_code(info.fn):
            _check_logits(model, name, num_classes, chans, size)
        return model
    except InputTooSmallError as err:
        smallest = smallest_input_size(name, chans, **kwargs)
        raise UsageError(
            f"model {name!r} needs inputs of at least {smallest}x{smallest} pixels, "
            f"got {size[0]}x{size[1]}; use --image-size {smallest} or larger"
        ) from err
    except (ValueError, TypeError) as err:
        if not kwargs:  # no option of the user's to blame: a bug, keep its traceback
            raise
        options = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise UsageError(f"model {name!r} refuses its options ({options}): {str(err).splitlines()[0]}") from None


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
        # eval: BatchNorm skips its (meta) running-stat updates
        model = _build(info, 1, chans, info.default_input_size, kwargs).eval()
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


def _build(
    info: ModelInfo, num_classes: int, chans: int, size: tuple[int, int], kwargs: dict[str, object]
) -> nn.Module:
    """Call the builder with the build arguments its signature names and ``kwargs``.

    Raises:
        UsageError: a required argument is missing (the message shows the signature).
        CnnkitError: your builder returned something other than an ``nn.Module``.
    """
    build = {"num_classes": num_classes, "in_chans": chans, "input_size": size}
    args = {k: v for k, v in build.items() if usercode.accepts(info.fn, k)} | kwargs
    model = usercode.call(info.fn, args, name=f"model {info.name!r}", supplied=_BUILD_ARGS, flag="--model-kwargs")
    if not isinstance(model, nn.Module):
        raise CnnkitError(f"model {info.name!r} returned {type(model).__name__}, not a torch nn.Module")
    return model


def _check_logits(model: nn.Module, name: str, num_classes: int, chans: int, size: tuple[int, int]) -> None:
    """One forward pass of 2 blank images: your model must return logits ``[2, num_classes]``."""
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, chans, *size))
    except Exception as err:  # your model's own shape checks: anything can come out
        raise CnnkitError(
            f"model {name!r} fails on {chans}x{size[0]}x{size[1]} images (the data's input): "
            f"{usercode.describe_exception(err)}; build it for this input (cnnkit passes in_chans and "
            f"input_size to a constructor that names them) or change --image-size/--channels"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = f"shape {list(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise CnnkitError(
            f"model {name!r} returns {got} for 2 images, but logits [2, {num_classes}] are needed "
            f"({num_classes} classes); give its constructor a num_classes argument (cnnkit passes it) "
            "and return one tensor of logits from forward"
        )


def _user_info(name: str) -> ModelInfo:
    """The registry entry of a ``FILE.py:NAME`` / ``module:NAME`` model (imported or trusted)."""
    fn = usercode.get(name, "model", list_sources())
    if not callable(fn):
        raise UsageError(f"{name} is a {type(fn).__name__}, not a class or function that builds a model")
    size = getattr(fn, "default_input_size", None)
    chans = getattr(fn, "default_in_chans", None)
    return _info_for(name, fn, size, chans, None)


def load_model_code(name: str) -> None:
    """Import the code a ``FILE.py:NAME`` / ``module:NAME`` model name refers to, now.

    For a name the user gave to build a new model (``cnnkit train --model``); names that
    come from checkpoints go through :func:`require_model_code`. Other names: no-op.
    """
    if usercode.parse_ref(name, list_sources()) is not None:
        usercode.load(name, list_sources())


def model_code(name: str) -> dict[str, object] | None:
    """Where the code of a user's model came from, for the checkpoint (None: cnnkit's own)."""
    if usercode.parse_ref(name, list_sources()) is not None:
        return usercode.record(name, list_sources())
    info = _MODELS.get(name)
    if info is not None and usercode.is_user_code(info.fn):
        return usercode.record_registered(name, info.fn)
    return None


def require_model_code(desc: dict[str, object], trust: object = None) -> None:
    """Make a checkpoint's model buildable: import its recorded code only if trusted.

    Args:
        desc: the checkpoint's ``model`` entry (``name``, ``code``...).
        trust: extra trusted files/modules (``trust_code=``), besides ``cnnkit.trust_code``
            blocks and ``$CNNKIT_TRUST_CODE``.

    Raises:
        UsageError: the model is user code that is not trusted (the message says what to pass).
    """
    name = str(desc["name"])
    record = desc.get("code")
    if record is None and usercode.parse_ref(name, list_sources()) is not None:
        record = usercode.record(name, list_sources())  # a checkpoint without the record
    usercode.bind_record(record, "model", trust=trust, registered=lambda: name in _MODELS)  # type: ignore[arg-type]


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
            + ("; stochastic depth (--drop-path) needs residual blocks: use a timm:/tv: backbone such as "
               "timm:resnet18 or tv:efficientnet_b0" if "drop_path" in unknown else "")  # fmt: skip
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

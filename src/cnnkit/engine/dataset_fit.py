"""``cnnkit.fit``: train any model on any torch ``Dataset`` pair you wrote (as in the seeds).

The keyword options are checked as a run's config is (:func:`cnnkit.config.validate`), and
the checkpoints written describe themselves when they can: a model made by
:func:`cnnkit.create_model` (with its default options) on images whose preprocessing is
known (PIL images or arrays, or ``preprocess=``) loads with :class:`~cnnkit.inference.Predictor`,
``cnnkit predict`` and ``cnnkit export`` like a ``cnnkit train`` run. Any other
``nn.Module`` cannot be rebuilt from a description: its checkpoints hold its weights for
``model.load_state_dict``, and the loaders say so.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from cnnkit._version import __version__
from cnnkit.checkpoint import Checkpoint, ModelDesc
from cnnkit.config import DataConfig, RunConfig, TrainConfig, apply_overrides, validate
from cnnkit.data import loader_from_dataset
from cnnkit.data.spec import Preprocess
from cnnkit.engine.loop import FitHooks, FitResult
from cnnkit.engine.loop import fit as fit_loaders
from cnnkit.engine.run_state import RunSaver
from cnnkit.errors import UsageError
from cnnkit.models import create_model, list_models
from cnnkit.models.registry import model_code, model_info
from cnnkit.runfolder import RunFolder

DATA_OPTIONS = ("batch_size", "workers")  # DataConfig fields cnnkit.fit takes besides TrainConfig's
NOT_REBUILDABLE = ("note: the checkpoints in {where} hold weights only ({why}); load them into your model with "
                   "model.load_state_dict(Checkpoint.load(path).state_dict)")  # fmt: skip


def fit(
    model: nn.Module,
    train_dataset: Dataset,
    val_dataset: Dataset,
    *,
    class_names: list[str] | None = None,
    run_dir: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    **options: Any,
) -> FitResult:
    """Train ``model`` on any torch ``Dataset`` pair (e.g. a custom class as in the seeds).

    Each dataset item is ``(image, label)``: a float tensor ``[C, H, W]`` (normalised by
    your own transform), a PIL image or an array. ``options`` are
    :class:`~cnnkit.config.TrainConfig` fields (``epochs``, ``lr``, ``optimizer``...),
    ``batch_size`` (64) and ``workers`` (0), and ``preprocess``: a
    :class:`~cnnkit.data.spec.Preprocess` saying how an image file becomes your tensors (for
    tensor datasets; without it their checkpoints hold weights only). With ``run_dir``,
    ``metrics.csv`` and ``checkpoints/`` are written there.

    Raises:
        UsageError: an unknown option, a value :func:`~cnnkit.config.validate` refuses
            (``--lr must be > 0, got -1``), ``lr="auto"``, or no way to tell the number of classes.
    """
    preprocess = options.pop("preprocess", None)
    cfg = _config(options)
    num_classes = len(class_names) if class_names else _count_classes(train_dataset, model)
    loaders = (
        loader_from_dataset(train_dataset, cfg.data.batch_size, shuffle=True, workers=cfg.data.workers,
                            seed=cfg.train.seed),  # fmt: skip
        loader_from_dataset(val_dataset, max(256, 2 * cfg.data.batch_size), shuffle=False, workers=cfg.data.workers),
    )
    saver = None
    if run_dir is not None:
        describe, why = _describe(model, train_dataset, num_classes, class_names, cfg, preprocess)
        if why:
            log(NOT_REBUILDABLE.format(where=run_dir, why=why))
        saver = RunSaver(RunFolder(run_dir), describe)
    return fit_loaders(model, loaders, cfg.train, num_classes=num_classes, saver=saver,
                       hooks=FitHooks(log=log, progress=progress))  # fmt: skip


def _config(options: dict[str, Any]) -> RunConfig:
    """The run config of ``options`` (TrainConfig fields and :data:`DATA_OPTIONS`), checked by
    :func:`validate` like any run's.

    Raises:
        UsageError: an unknown option, a value of the wrong type or out of range, or ``lr="auto"``.
    """
    cfg = RunConfig(data=DataConfig(batch_size=64, workers=0))
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    dotted = {}
    for name, value in options.items():
        if name in DATA_OPTIONS:
            dotted[f"data.{name}"] = value
        elif name in train_fields:
            dotted[f"train.{name}"] = value
        else:
            valid = ", ".join([*DATA_OPTIONS, "preprocess", *TrainConfig.__dataclass_fields__])
            raise UsageError(f"unknown training option {name!r}; valid: {valid}")
    apply_overrides(cfg, dotted)
    validate(cfg)
    if cfg.train.lr_find:
        raise UsageError("cnnkit.fit does not run the learning-rate range test (lr='auto'); give lr a number "
                         "(cnnkit.lr_find suggests one)")  # fmt: skip
    return cfg


def _describe(model: nn.Module, dataset: Dataset, num_classes: int, class_names: list[str] | None, cfg: RunConfig,
              preprocess: Preprocess | None) -> tuple[Checkpoint, str]:  # fmt: skip
    """What makes the checkpoints self-describing, and why they cannot be ("": they can).

    The model description is written only when it rebuilds ``model`` (same registry model, same
    weight shapes) and the preprocessing is known: otherwise a loader would build another
    network, or feed it differently scaled images, without a word.
    """
    first = dataset[0][0]
    preprocess = preprocess or _preprocess_of(first)
    channels, size = _image_shape(first) if preprocess is None else (preprocess.channels, preprocess.input_size)
    desc = _model_desc(model, num_classes, channels, size)
    why = "" if desc is not None else f"{type(model).__name__} is not a cnnkit.create_model model with default options"
    if desc is not None and preprocess is None:
        why = ("its images are tensors from your own transform: pass preprocess=cnnkit.Preprocess(...)"
               if isinstance(first, torch.Tensor) else "its images are neither grey nor RGB")
    config = copy.deepcopy(cfg)
    config.data.name = type(dataset).__name__  # not cnnkit's default dataset: this run never used it
    names = list(class_names or getattr(dataset, "classes", None) or [str(k) for k in range(num_classes)])
    describe = Checkpoint(None if why else desc, {}, names, preprocess, config,
                          cnnkit_version=__version__)  # fmt: skip
    return describe, why


def _image_shape(image: Any) -> tuple[int, tuple[int, int]]:
    """(channels, (height, width)) of one dataset image: a tensor ``[C, H, W]``, a PIL image or an array."""
    if isinstance(image, torch.Tensor):
        return int(image.shape[0]), (int(image.shape[-2]), int(image.shape[-1]))
    if isinstance(image, Image.Image):
        return len(image.getbands()), (image.height, image.width)
    array = np.asarray(image)
    return (1 if array.ndim == 2 else int(array.shape[2])), (int(array.shape[0]), int(array.shape[1]))


def _preprocess_of(image: Any) -> Preprocess | None:
    """The preprocessing of a PIL image or array item: resized to its size, scaled to [0, 1], no
    normalisation (what :func:`~cnnkit.data.loader_from_dataset` does to it); None for a tensor (the
    user's transform made it) or an image neither grey nor RGB."""
    if isinstance(image, torch.Tensor):
        return None
    channels, size = _image_shape(image)
    if channels not in (1, 3):
        return None
    return Preprocess(channels, size, (0.0,) * channels, (1.0,) * channels)


def _model_desc(model: nn.Module, num_classes: int, in_chans: int, input_size: tuple[int, int]) -> ModelDesc | None:
    """The registry entry that rebuilds ``model``: a registered model of its class whose fresh
    copy (on the meta device, no memory) has the same weight names and shapes; None if none does."""
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    for name in list_models():
        builder = model_info(name).fn
        if type(model) not in (builder, getattr(builder, "func", None)):
            continue
        try:
            with torch.device("meta"):
                twin = create_model(name, num_classes=num_classes, in_chans=in_chans, input_size=input_size)
        except Exception:  # any failure means: this entry does not rebuild it
            continue
        if {key: tuple(value.shape) for key, value in twin.state_dict().items()} == shapes:
            return ModelDesc(name, {}, num_classes, in_chans, list(input_size), code=model_code(name))
    return None


def _count_classes(dataset: Dataset, model: nn.Module) -> int:
    classes = getattr(dataset, "classes", None)
    if classes is not None:
        return len(classes)
    out = getattr(model, "num_classes", None)
    if out is None:
        raise UsageError(
            "cannot tell the number of classes: pass class_names=[...] or give the dataset a 'classes' attribute"
        )
    return int(out)

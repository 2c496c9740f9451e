"""``cnnkit.fit``: train any model on any torch ``Dataset`` pair you wrote (as in the seeds)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from cnnkit.config import TrainConfig
from cnnkit.data import loader_from_dataset
from cnnkit.engine.loop import FitResult
from cnnkit.engine.loop import fit as fit_loaders
from cnnkit.errors import UsageError


def fit(
    model: nn.Module,
    train_dataset: Dataset,
    val_dataset: Dataset,
    *,
    class_names: list[str] | None = None,
    batch_size: int = 64,
    workers: int = 0,
    run_dir: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    **train_options: Any,
) -> FitResult:
    """Train ``model`` on any torch ``Dataset`` pair (e.g. a custom class as in the seeds).

    Each dataset item is ``(image, label)``: a float tensor ``[C, H, W]`` (normalised by
    your own transform), a PIL image or an array. ``train_options`` are
    :class:`~cnnkit.config.TrainConfig` fields (``epochs``, ``lr``, ``optimizer``...).

    Raises:
        UsageError: an unknown training option, or no way to tell the number of classes.
    """
    cfg = TrainConfig()
    for key, value in train_options.items():
        if not hasattr(cfg, key):
            raise UsageError(f"unknown training option {key!r}; valid: {', '.join(TrainConfig.__dataclass_fields__)}")
        setattr(cfg, key, value)
    num_classes = len(class_names) if class_names else _count_classes(train_dataset, model)
    loaders = (
        loader_from_dataset(train_dataset, batch_size, shuffle=True, workers=workers, seed=cfg.seed),
        loader_from_dataset(val_dataset, max(256, 2 * batch_size), shuffle=False, workers=workers),
    )
    return fit_loaders(model, loaders, cfg, num_classes=num_classes, run_dir=run_dir, log=log, progress=progress)


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

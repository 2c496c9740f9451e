"""Training in phases: a frozen backbone's head first (on cached features when possible),
then all layers, as ``--freeze`` and ``--fine-tune E1,E2`` ask.

A model without a backbone trains in one phase; :func:`fit_phases` is then one call of
:func:`cnnkit.engine.fit`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnkit.checkpoint import Checkpoint
from cnnkit.config import RunConfig, TrainConfig
from cnnkit.data import DataSpec, build
from cnnkit.data.builder import shard_loaders
from cnnkit.data.datasets import cache_dir
from cnnkit.data.tensor_data import Part
from cnnkit.data.transforms import config_augment
from cnnkit.device import data_device, resolve_device
from cnnkit.engine import distributed
from cnnkit.engine.features import (
    FeatureLoader,
    HeadOnly,
    cache_key,
    cached_features,
    extract_features,
    read_cached_features,
    state_digest,
)
from cnnkit.engine.loop import FitHooks, FitResult, FitStart, fit
from cnnkit.engine.run_state import RunSaver
from cnnkit.models import BackboneClassifier
from cnnkit.scoring import Scores, ScoringSettings, score

EVAL_FEATURE_BATCH = 1024  # feature vectors per evaluation batch (memory, not results, depends on it)


def phases(train: TrainConfig) -> list[tuple[int, bool]]:
    """(epochs, backbone frozen) per training phase, leaving out empty ones."""
    if train.fine_tune:
        planned = [(train.fine_tune[0], True), (train.fine_tune[1], False)]
    else:
        planned = [(train.epochs, train.freeze)]
    return [(epochs, frozen) for epochs, frozen in planned if epochs > 0]


def total_epochs(train: TrainConfig) -> int:
    return sum(epochs for epochs, _ in phases(train))


@dataclass
class PhaseHooks(FitHooks):
    """:class:`~cnnkit.engine.loop.FitHooks` of a whole run, and its trackers.

    Attributes:
        trackers: a :class:`cnnkit.tracking.RunLoggers` (TensorBoard, MLflow, W&B): each phase's
            training loader hands it a copy of its first images and each epoch's metrics row goes to
            its ``log_epoch`` (then ``on_epoch_end`` is unused); None: no trackers.
    """

    trackers: Any = None


def fit_phases(model: nn.Module, loaders: Any, cfg: RunConfig, spec: DataSpec, *, saver: RunSaver | None = None,
               resume: Checkpoint | None = None, hooks: PhaseHooks | None = None,
               class_weights: torch.Tensor | None = None) -> FitResult:  # fmt: skip
    """Train ``model`` through each phase of ``cfg.train`` on ``cfg.train.device``; returns the last
    phase's result.

    A resumed run skips the phases its checkpoint has finished and resumes inside the one
    it was in. ``saver``, ``hooks`` and ``class_weights`` go to each :func:`~cnnkit.engine.fit`
    (see there).
    """
    hooks = hooks or PhaseHooks()
    trackers = hooks.trackers
    fit_hooks = FitHooks(hooks.log, hooks.progress, trackers.log_epoch if trackers is not None else hooks.on_epoch_end,
                         hooks.should_stop)  # fmt: skip
    device = resolve_device(cfg.train.device)  # where fit trains
    run_dir = saver.folder.path if saver is not None else None
    planned = phases(cfg.train)
    total = sum(epochs for epochs, _ in planned)
    result, begun = None, 0
    for epochs, frozen in planned:
        begun, phase_start = begun + epochs, begun
        if resume is not None and resume.training.epoch >= begun:
            continue  # finished before the interruption; its history comes back with the checkpoint
        result, resume = _resumed_result(result, resume, phase_start, run_dir)
        phase_cfg = phase_train_config(cfg, model, epochs)
        if isinstance(model, BackboneClassifier):
            _enter_phase(model, phase_cfg, frozen, len(planned) > 1, hooks.log)
        phase_model, phase_loaders = trained_inputs(model, loaders, cfg, spec, device, frozen, hooks.log,
                                                    hooks.progress)  # fmt: skip
        if trackers is not None:
            phase_loaders = trackers.watch(phase_loaders, spec.preprocess.mean, spec.preprocess.std)
        hooks.log(optimizer_line(phase_model, phase_cfg))
        result = fit(phase_model, phase_loaders, phase_cfg, num_classes=spec.num_classes, class_weights=class_weights,
                     saver=saver, hooks=fit_hooks, start=FitStart(result, total, resume))  # fmt: skip
        resume = None
        if result.stopped_early:
            break
    return result


def phase_train_config(cfg: RunConfig, model: nn.Module, epochs: int) -> TrainConfig:
    """The training config of one phase: its epochs, and ``backbone_lr_scale`` only where it
    means something: a pretrained backbone (``--pretrained`` or ``--weights``) being
    fine-tuned. A ``tv:resnet18`` trained from scratch trains every layer at ``lr``."""
    fine_tuning = isinstance(model, BackboneClassifier) and bool(cfg.model.pretrained or cfg.model.weights)
    scale = cfg.train.backbone_lr_scale if fine_tuning else 1.0
    return dataclasses.replace(cfg.train, epochs=epochs, backbone_lr_scale=scale)


def optimizer_line(model: nn.Module, train: TrainConfig) -> str:
    """``optimizer: adam, lr 0.001 (1,234 params), 0.0001 (backbone, 5,678 params)``: every group's lr."""
    from cnnkit.engine.optim import param_groups

    inner = model.module if isinstance(model, HeadOnly) else model
    backbone = {id(p) for p in getattr(inner, "backbone", nn.Module()).parameters()}
    parts = []
    for group in param_groups(model, train):
        count = sum(p.numel() for p in group["params"])
        where = "backbone, " if all(id(p) in backbone for p in group["params"]) and backbone else ""
        decay = f", decay {group['weight_decay']:g}" if group["weight_decay"] else ""
        parts.append(f"lr {group['lr']:g} ({where}{count:,} params{decay})")
    return f"optimizer: {train.optimizer}, " + ("; ".join(parts) if parts else "no trainable parameters")


def _resumed_result(result: FitResult | None, resume: Checkpoint | None, phase_start: int,
                    run_dir: Path | None) -> tuple[FitResult | None, Checkpoint | None]:  # fmt: skip
    """The history a resumed phase continues from, and the resume state it still needs."""
    if resume is None:
        return result, None
    state = resume.training
    if state.epoch == phase_start and not state.in_epoch:
        # stopped between two phases: this one starts afresh (as it did uninterrupted) from the saved weights
        restored = FitResult(history=[dict(r) for r in state.history], best_metric=state.best_metric,
                             best_epoch=state.best_epoch, run_dir=run_dir, steps=state.step)  # fmt: skip
        return restored, None
    return FitResult(history=[dict(r) for r in state.history[:phase_start]], run_dir=run_dir), resume


def _enter_phase(model: BackboneClassifier, phase_cfg: TrainConfig, frozen: bool, several: bool,
                 log: Callable[[str], None]) -> None:  # fmt: skip
    """Freeze (or unfreeze) the backbone for a phase, and name the phase when the run has several."""
    model.freeze_backbone(frozen)
    if several:
        backbone_lr = phase_cfg.lr * phase_cfg.backbone_lr_scale
        lr = f"lr {phase_cfg.lr:g}" + ("" if frozen else f", backbone lr {backbone_lr:g}")
        log(f"phase: {'head only (backbone frozen)' if frozen else 'all layers'}, {phase_cfg.epochs} epochs, {lr}")


def trained_inputs(model: nn.Module, loaders: Any, cfg: RunConfig, spec: DataSpec, device: torch.device,
                   frozen: bool, log: Callable[[str], None], progress: bool) -> tuple[nn.Module, Any]:  # fmt: skip
    """What a phase with the backbone ``frozen`` (or not) trains, and on which loaders: the
    head alone (:class:`HeadOnly`) on cached backbone features when the backbone is frozen
    and :func:`use_feature_cache`, else ``model`` on ``loaders``. The caller has frozen the
    backbone already."""
    if frozen and isinstance(model, BackboneClassifier) and use_feature_cache(cfg):
        return HeadOnly(model), feature_loaders(model, cfg, spec, device, log, progress)
    return model, loaders


def first_phase_inputs(model: nn.Module, loaders: Any, cfg: RunConfig, spec: DataSpec, device: torch.device,
                       log: Callable[[str], None], progress: bool) -> tuple[nn.Module, Any]:  # fmt: skip
    """The model and training loader of the run's first phase, as :func:`fit_phases` will
    train them: the ``--lr auto`` sweep must see the same steps the training takes (a frozen
    backbone's head sweeps on the cached features in milliseconds a step; sweeping the images
    would run the whole backbone every step). Freezes the backbone as that phase does.
    The features computed here stay in the cache, so the phase reads them back."""
    if not isinstance(model, BackboneClassifier):
        return model, loaders.train
    planned = phases(cfg.train)
    frozen = planned[0][1] if planned else bool(cfg.train.freeze)
    model.freeze_backbone(frozen)
    trained, phase_loaders = trained_inputs(model, loaders, cfg, spec, device, frozen, log, progress)
    return trained, phase_loaders[0]  # Loaders and the feature loaders' tuple both start with train


def use_feature_cache(cfg: RunConfig) -> bool:
    mode = cfg.train.cache_features
    return mode == "on" or (mode == "auto" and config_augment(cfg.data).is_identity)


def feature_loaders(model: nn.Module, cfg: RunConfig, spec: DataSpec, device: torch.device,
                    log: Callable[[str], None], progress: bool) -> tuple:  # fmt: skip
    """Train/val loaders of backbone features, computed once and cached on disk.

    The images come from the same split, un-augmented and in order; the cache key holds
    everything the features depend on (data, split members, preprocessing, backbone weights).
    The images are only decoded when a cache entry is missing: a warm cache builds no
    image loader and runs no backbone.
    """
    model.to(device)
    dtype = ScoringSettings.for_run(cfg, device).dtype  # the run's scoring precision: cached_head_scores' key
    backbone = state_digest(model.backbone)
    eval_loaders: list[Any] = []  # built on first need: a warm cache needs no image at all

    def images(name: str) -> Any:
        if not eval_loaders:
            built, _ = build(cfg.data, seed=cfg.train.seed, device=data_device(device), split=spec.split,
                             training=False)  # fmt: skip
            eval_loaders.append(built)
        return getattr(eval_loaders[0], name)

    out = []
    for name in ("train", "val"):
        path = feature_cache_path(cfg, spec, name, backbone, dtype)
        feats, labels, seconds = cached_features(path, lambda name=name: extract_features(
            model, images(name), device=device, dtype=dtype, progress=progress, desc=f"{name} features"))  # fmt: skip
        rate = len(labels) / max(seconds or 0.0, 1e-9)
        how = "from the cache" if seconds is None else f"computed in {seconds:.1f}s ({rate:.0f} img/s)"
        log(f"features: {name} {len(labels):,} x {feats.shape[1]:,} {how}; cached in {path.parent}")
        out.append(FeatureLoader(feats, labels, cfg.data.batch_size if name == "train" else EVAL_FEATURE_BATCH,
                                 shuffle=name == "train" and cfg.data.shuffle, drop_last=name == "train",
                                 seed=cfg.train.seed))  # fmt: skip
    ranks = distributed.current()
    shard_loaders(out, Part(ranks.rank, ranks.world))  # torchrun: this process's share, as for the images
    return tuple(out)


def feature_cache_path(cfg: RunConfig, spec: DataSpec, split: str, backbone: str, dtype: torch.dtype | None) -> Path:
    """The cache file of one split's features: its name hashes everything they depend on
    (data fingerprint, split members, preprocessing, model name, ``backbone`` digest from
    :func:`~cnnkit.engine.features.state_digest`, precision)."""
    members = spec.split.get("indices") or spec.split.get("files")
    key = cache_key(data=spec.fingerprint, split=split,
                    members=hashlib.sha1(json.dumps(members[split]).encode()).hexdigest(),
                    preprocess=spec.preprocess.to_dict(), model=cfg.model.name, backbone=backbone,
                    dtype=str(dtype))  # fmt: skip
    return cache_dir() / "features" / f"{key}.pt"


def cached_head_scores(model: nn.Module, cfg: RunConfig, spec: DataSpec, device: torch.device,
                       split: str = "val") -> Scores | None:  # fmt: skip
    """The scores of ``split`` from its cached backbone features through the model's head,
    with no backbone pass: what the run's own evaluation of that split computed.

    Given only when they equal what :func:`cnnkit.scoring.score` of the trained
    model would give up to the features' float16 rounding: a backbone model whose features
    this run caches, no test-time augmentation (its views need the pixels), one process,
    and a cache file for the backbone's current weights (a fine-tuned backbone has none).
    None otherwise: the caller scores the images.
    """
    found = cached_head_inputs(model, cfg, spec, device, split)
    if found is None:
        return None
    head, loader = found
    return score(head, loader, ScoringSettings.for_run(cfg, device))


def cached_head_inputs(model: nn.Module, cfg: RunConfig, spec: DataSpec, device: torch.device,
                       split: str = "val") -> tuple[nn.Module, FeatureLoader] | None:  # fmt: skip
    """The model's head (:class:`HeadOnly`) and a loader of ``split``'s cached backbone
    features, unshuffled, under the conditions of :func:`cached_head_scores`; else None."""
    if not isinstance(model, BackboneClassifier) or not use_feature_cache(cfg) or cfg.train.tta != "none":
        return None
    if distributed.current().world > 1 or split not in (spec.split.get("indices") or spec.split.get("files") or {}):
        return None
    dtype = ScoringSettings.for_run(cfg, device).dtype
    found = read_cached_features(feature_cache_path(cfg, spec, split, state_digest(model.backbone), dtype))
    if found is None:
        return None
    feats, labels = found
    return HeadOnly(model), FeatureLoader(feats, labels, EVAL_FEATURE_BATCH)

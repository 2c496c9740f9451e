"""Optimizers and learning-rate schedules, built from a TrainConfig.

Schedules are stepped once per optimizer step (not per epoch), so warm-up and cosine
decay are smooth even for runs of one or two epochs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cnnkit.config import TrainConfig
from cnnkit.engine.checkpoint import unwrap
from cnnkit.engine.tta import check_tta
from cnnkit.errors import UsageError, unknown_name

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "step", "cosine", "onecycle")
CACHE_MODES = ("auto", "on", "off")


def check_train_config(cfg: TrainConfig) -> None:
    """Fail fast on bad names, before any data is loaded or a run folder is made."""
    from cnnkit.engine.device import AMP_MODES
    from cnnkit.engine.loop import SELECT_METRICS

    for kind, value, valid in (
        ("optimizer", cfg.optimizer, OPTIMIZERS),
        ("scheduler", cfg.scheduler, SCHEDULERS),
        ("amp mode", cfg.amp, AMP_MODES),
        ("select metric", cfg.select_metric, SELECT_METRICS),
    ):
        if value not in valid:
            raise unknown_name(kind, value, valid)
    if cfg.epochs < 1:
        raise UsageError(f"--epochs must be at least 1, got {cfg.epochs}")
    check_tta(cfg.tta)
    if cfg.cache_features not in CACHE_MODES:
        raise unknown_name("--cache-features mode", cfg.cache_features, CACHE_MODES)
    if cfg.fine_tune is not None and (len(cfg.fine_tune) != 2 or min(cfg.fine_tune) < 0 or sum(cfg.fine_tune) < 1):
        raise UsageError(f"--fine-tune expects E1,E2 (head-only epochs, then all-layer epochs), got {cfg.fine_tune}")
    if not 0 < cfg.backbone_lr_scale <= 10:
        raise UsageError(f"--backbone-lr-scale must be in (0, 10], got {cfg.backbone_lr_scale}")


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov), Adam or AdamW over the trainable parameters.

    A model with a trainable ``backbone`` (a pretrained one being fine-tuned) gets two
    parameter groups: the backbone at ``cfg.backbone_lr_scale * lr``, the rest at ``lr``
    (discriminative learning rates: pretrained layers need smaller steps than a new head).
    """
    params = _param_groups(model, cfg)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )  # fmt: skip
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise unknown_name("optimizer", cfg.optimizer, OPTIMIZERS)


def _param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    inner = unwrap(model)
    backbone = getattr(inner, "backbone", None)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not isinstance(backbone, nn.Module) or cfg.backbone_lr_scale == 1.0:
        return [{"params": trainable}]
    in_backbone = {id(p) for p in backbone.parameters() if p.requires_grad}
    groups = [
        {"params": [p for p in trainable if id(p) in in_backbone], "lr": cfg.lr * cfg.backbone_lr_scale},
        {"params": [p for p in trainable if id(p) not in in_backbone]},
    ]
    return [g for g in groups if g["params"]]


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step schedule: linear warm-up, then constant, step decay, cosine or one-cycle."""
    if cfg.scheduler not in SCHEDULERS:
        raise unknown_name("scheduler", cfg.scheduler, SCHEDULERS)
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[group["lr"] for group in optimizer.param_groups], total_steps=total,
            pct_start=max(warmup / total, 0.01) if warmup else 0.25,
        )  # fmt: skip

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.scheduler == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if cfg.scheduler == "step":
            return cfg.gamma ** (step // max(1, cfg.step_size * steps_per_epoch))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

"""Optimizers and learning-rate schedules, built from a TrainConfig.

Schedules are stepped once per optimizer step (not per epoch), so warm-up and cosine
decay are smooth even for runs of one or two epochs. Optimizers use PyTorch's fused
kernels where it has them (CUDA, and the CPU since torch 2.4) and its multi-tensor
``foreach`` path elsewhere; parameters are grouped by learning rate and weight decay
(backbone, norm layers, biases). timm's factory builds the optimizer and its rule picks the
parameters without weight decay; the groups by learning rate are cnnkit's. Lookahead is
airbench's, not timm's ``Lookahead`` (Zhang et al.: a fixed ``alpha`` every ``k`` steps):
its averaging weight grows with the cube of training progress, it averages the BatchNorm
statistics too and the last step takes the average. It is a step hook on the optimizer,
so the loop knows nothing of it and its state travels in ``optimizer.state_dict()``.
"""

from __future__ import annotations

import functools
import inspect
import math

import torch
from torch import nn

from cnnkit.checkpoint import unwrap
from cnnkit.config import OPTIMIZERS, SCHEDULERS, RunConfig, TrainConfig, validate
from cnnkit.errors import unknown_name

# Normalisation layers: their parameters are a "norm" group (own lr scale, optionally no decay).
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def check_train_config(cfg: TrainConfig) -> None:
    """Fail fast on bad training values, before any data is loaded or a run folder is made.

    A thin wrapper kept for its callers: the rules are :func:`cnnkit.config.validate`'s.
    """
    validate(RunConfig(train=cfg))


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov), Adam or AdamW over the trainable parameters, built by timm's
    optimizer factory (``timm.optim.create_optimizer_v2``).

    Parameters are grouped (see :func:`param_groups`): a trainable ``backbone`` (a
    pretrained one being fine-tuned) at ``cfg.backbone_lr_scale * lr`` (discriminative
    learning rates: pretrained layers need smaller steps than a new head); normalisation
    layers at ``cfg.norm_lr_scale * lr``; with ``cfg.no_decay_norm_bias`` no weight decay
    on normalisation parameters and biases. The fused implementation runs where this
    PyTorch has one for the parameters' device, elsewhere the multi-tensor (foreach) one.
    With ``cfg.lookahead`` the optimizer carries airbench's lookahead (:class:`Lookahead`).
    """
    from timm.optim import create_optimizer_v2, get_optimizer_class

    params = param_groups(model, cfg)
    if cfg.optimizer not in OPTIMIZERS:
        raise unknown_name("optimizer", cfg.optimizer, OPTIMIZERS)
    name = _timm_name(cfg)
    how = _implementation(get_optimizer_class(name, bind_defaults=False), params)
    optimizer = create_optimizer_v2(params, opt=name, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                    momentum=cfg.momentum, **how)  # fmt: skip
    if cfg.lookahead:
        Lookahead(model).attach(optimizer)
    return optimizer


def _timm_name(cfg: TrainConfig) -> str:
    """timm's name of the optimizer: its ``sgd`` is Nesterov's, ``momentum`` the classical one."""
    if cfg.optimizer == "sgd":
        return "sgd" if cfg.nesterov and cfg.momentum > 0 else "momentum"
    return cfg.optimizer


def _implementation(klass: type, groups: list[dict]) -> dict[str, bool]:
    """``fused=True`` when ``klass`` has a fused kernel for the device all the parameters are
    on (CUDA; the CPU since torch 2.4: one pass over each tensor per step; see
    bench/optimizer_step.py for what it gains over foreach); otherwise ``foreach=True``
    (one multi-tensor op per step instead of one per parameter)."""
    tensors = [p for g in groups for p in g["params"]]
    if not tensors:
        return {}
    devices = {p.device for p in tensors}
    floats = all(p.is_floating_point() for p in tensors)
    if len(devices) == 1 and floats and _has_fused_kernel(klass, devices.pop()):
        return {"fused": True}
    return {"foreach": True}


@functools.cache
def _has_fused_kernel(klass: type, device: torch.device) -> bool:
    """Whether this torch builds ``klass(fused=True)`` for parameters on ``device`` (it raises where not)."""
    if "fused" not in inspect.signature(klass).parameters:
        return False
    try:
        klass([torch.zeros(1, device=device, requires_grad=True)], lr=0.1, fused=True)
    except (RuntimeError, ValueError):
        return False
    return True


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """The trainable parameters in groups of equal learning rate and weight decay.

    Each parameter's lr is ``cfg.lr`` times ``backbone_lr_scale`` (in a trainable
    ``backbone``, when that scale is not 1) and times ``norm_lr_scale`` (in a
    normalisation layer, whose decay is divided by the same factor). With
    ``no_decay_norm_bias`` the parameters that timm exempts from weight decay
    (``timm.optim.param_groups_weight_decay``: biases and every 1-d tensor, which covers
    normalisation layers' scales and shifts) get none. Groups keep the model's parameter
    order: backbone first, then the rest.
    """
    inner = unwrap(model)
    backbone = getattr(inner, "backbone", None)
    in_backbone: set[int] = set()
    if isinstance(backbone, nn.Module) and cfg.backbone_lr_scale != 1.0:
        in_backbone = {id(p) for p in backbone.parameters()}
    in_norm = {id(p) for m in inner.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)}
    no_decay = _no_decay(model) if cfg.no_decay_norm_bias else set()
    groups: dict[tuple[bool, bool, bool], dict] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        backbone_p, norm_p = id(p) in in_backbone, id(p) in in_norm and cfg.norm_lr_scale != 1.0
        key = (not backbone_p, norm_p, id(p) in no_decay)  # backbone groups sort first
        if key not in groups:
            lr = cfg.lr * (cfg.backbone_lr_scale if backbone_p else 1.0) * (cfg.norm_lr_scale if norm_p else 1.0)
            decay = 0.0 if key[2] else cfg.weight_decay / (cfg.norm_lr_scale if norm_p else 1.0)
            groups[key] = {"params": [], "lr": lr, "weight_decay": decay}
        groups[key]["params"].append(p)
    return [groups[key] for key in sorted(groups)]


def _no_decay(model: nn.Module) -> set[int]:
    """Ids of the parameters timm's rule exempts from weight decay."""
    from timm.optim import param_groups_weight_decay

    groups = param_groups_weight_decay(model, weight_decay=1.0)  # any non-zero decay: only the split matters
    return {id(p) for group in groups if group["weight_decay"] == 0 for p in group["params"]}


class Lookahead:
    """airbench's lookahead: every ``every`` steps, ``average += (1 - decay) * (weights -
    average)`` and the weights are set to the average; at the last step they take it.

    ``decay`` grows as ``0.95**5 * (step / total)**3``: no averaging early on, when the
    weights move fast, and up to 0.77 at the end, where averaging the last few hundred
    steps gives flatter, better weights (hlb-cifar10, airbench). Floating-point buffers
    (BatchNorm statistics) are averaged too, so they match the averaged weights.

    It runs as a step post-hook of the optimizer; :func:`build_scheduler` tells it the
    total number of steps, and its state is saved in the optimizer's ``state_dict``.
    """

    def __init__(self, model: nn.Module, every: int = 5, peak_decay: float = 0.95**5) -> None:
        inner = unwrap(model)
        self.tensors = [p for p in inner.parameters()] + [b for b in inner.buffers() if b.is_floating_point()]
        self.every, self.peak_decay = every, peak_decay
        self.average = [t.detach().clone() for t in self.tensors]
        self.step, self.total = 0, 0

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.lookahead = self  # type: ignore[attr-defined]  (build_scheduler sets .total)
        optimizer.register_step_post_hook(lambda opt, args, kwargs: self.after_step())
        optimizer.register_state_dict_post_hook(self._save)
        optimizer.register_load_state_dict_pre_hook(self._load)

    @torch.no_grad()
    def after_step(self) -> None:
        self.step += 1
        if self.total and self.step >= self.total:  # the last step: keep the average
            torch._foreach_copy_(self.tensors, self.average)
        elif self.step % self.every == 0:
            decay = self.peak_decay * (self.step / self.total) ** 3 if self.total else 0.0
            torch._foreach_lerp_(self.average, self.tensors, 1 - decay)
            torch._foreach_copy_(self.tensors, self.average)

    def _save(self, optimizer: torch.optim.Optimizer, state: dict) -> dict:
        state["lookahead"] = {"step": self.step, "average": [t.clone() for t in self.average]}
        return state

    def _load(self, optimizer: torch.optim.Optimizer, state: dict) -> dict:
        state = dict(state)
        saved = state.pop("lookahead", None)
        if saved is not None:
            self.step = int(saved["step"])
            for mine, theirs in zip(self.average, saved["average"], strict=True):
                mine.copy_(theirs)
        return state


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step schedule: linear warm-up, then constant, step decay, cosine or one-cycle;
    or ``triangle`` (airbench): linear from ``lr_start_factor * lr`` up to lr at the end
    of warm-up, then linear down to ``lr_end_factor * lr`` at the last step."""
    if cfg.scheduler not in SCHEDULERS:
        raise unknown_name("scheduler", cfg.scheduler, SCHEDULERS)
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    if getattr(optimizer, "lookahead", None) is not None:
        optimizer.lookahead.total = total  # type: ignore[attr-defined]
    if cfg.scheduler == "triangle":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _triangle(step, warmup, total, cfg))
    if cfg.scheduler == "onecycle":
        return _one_cycle(optimizer, total, max(warmup / total, 0.01) if warmup else 0.25)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.scheduler == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            end = cfg.lr_end_factor
            return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if cfg.scheduler == "step":
            return cfg.gamma ** (step // max(1, cfg.step_size * steps_per_epoch))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _one_cycle(optimizer: torch.optim.Optimizer, total: int, pct_start: float) -> torch.optim.lr_scheduler.LRScheduler:
    """PyTorch's one-cycle schedule, for any number of steps.

    ``OneCycleLR`` divides by the length of its rising and falling phases
    (``pct_start * total - 1`` and the rest), so a short run (a small folder: 4 optimizer
    steps) raised ZeroDivisionError. Below :data:`ONE_CYCLE_MIN_STEPS` steps the same shape
    (a linear rise from lr/25 over the first step(s), then a cosine fall) is a ``LambdaLR``.
    """
    if total >= ONE_CYCLE_MIN_STEPS:
        pct_start = min(max(pct_start, 2 / total), 1 - 2 / total)  # each phase at least 2 steps
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[group["lr"] for group in optimizer.param_groups],
                                                   total_steps=total, pct_start=pct_start)  # fmt: skip
    rise = max(1, round(pct_start * total))

    def factor(step: int) -> float:
        if step < rise:
            return 1 / 25 + (1 - 1 / 25) * step / rise
        progress = (step - rise) / max(1, total - rise)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# Fewer optimizer steps than this: one-cycle runs as a LambdaLR (see _one_cycle).
ONE_CYCLE_MIN_STEPS = 10


def _triangle(step: int, warmup: int, total: int, cfg: TrainConfig) -> float:
    """lr factor of the triangle schedule at ``step`` (0-based; ``total`` steps in all)."""
    if step < warmup:
        return cfg.lr_start_factor + (1 - cfg.lr_start_factor) * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 1 + (cfg.lr_end_factor - 1) * progress

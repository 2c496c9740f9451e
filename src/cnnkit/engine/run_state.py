"""What a training run has built up, and how it goes into a checkpoint and comes back.

:class:`TrainState` is what the steps change (model, optimizer, schedule, scaler, EMA),
:class:`FitResult` the record of the epochs (history, best epoch, steps).
:func:`run_checkpoint` writes both into a :class:`~cnnkit.checkpoint.Checkpoint`
and :func:`restore` loads a ``last.pt`` back into them, so a resumed run continues
exactly where the interrupted one stopped.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnkit.checkpoint import (
    Checkpoint,
    TrainingState,
    clean_state_dict,
    rng_state,
    set_rng_state,
    unwrap,
)
from cnnkit.engine.epoch import EpochProgress
from cnnkit.engine.regularize import WeightEma
from cnnkit.errors import CnnkitError


@dataclass
class FitResult:
    """What :func:`~cnnkit.engine.loop.fit` returns: one metrics row per epoch and where the best one was."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_metric: float | None = None
    best_epoch: int | None = None
    stopped_early: bool = False
    run_dir: Path | None = None
    steps: int = 0

    @property
    def last(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


@dataclass
class TrainState:
    """Everything a training step changes, which a checkpoint saves and resume restores.

    Attributes:
        model: the model being trained (possibly wrapped: compile, DDP).
        optimizer: its optimizer.
        scheduler: the per-step learning-rate schedule, or None.
        scaler: the fp16 gradient scaler, or None.
        ema: an average of the weights (``--ema``), or None; when present it is what is
            evaluated and what checkpoints hold as ``state_dict``.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    scaler: torch.amp.GradScaler | None = None
    ema: WeightEma | None = None

    @property
    def evaluated(self) -> nn.Module:
        """The weights to validate and keep: the average when there is one."""
        return self.ema.module if self.ema is not None else self.model


def run_description(meta: Checkpoint | dict[str, Any] | None) -> Checkpoint:
    """The self-describing part of every checkpoint of this run (its weights are filled in per save)."""
    if isinstance(meta, Checkpoint):
        return dataclasses.replace(meta, state_dict={}, training=None)
    return Checkpoint.from_payload({"format": 2, **(meta or {}), "state_dict": {}}, "meta")


def run_checkpoint(state: TrainState, epoch, step, row, result: FitResult, describe: Checkpoint, stale,
                   in_epoch: EpochProgress | None = None, lr: float | None = None) -> Checkpoint:  # fmt: skip
    """The run's checkpoint now. ``epoch`` counts completed epochs; ``in_epoch`` says how far
    the next one got when written mid-epoch (None at an epoch's end). With an EMA,
    ``state_dict`` holds the averaged weights (what predict/export use) and
    ``training.raw_state_dict`` the trained ones (what resume continues from)."""
    ema = state.ema
    training = TrainingState(
        epoch=epoch,
        step=step,
        optimizer=state.optimizer.state_dict(),
        scheduler=state.scheduler.state_dict() if state.scheduler is not None else None,
        scaler=state.scaler.state_dict() if state.scaler is not None else None,
        raw_state_dict=clean_state_dict(unwrap(state.model).state_dict()) if ema is not None else None,
        ema_updates=ema.updates if ema is not None else None,
        rng=rng_state(),
        history=[dict(r) for r in result.history],
        best_metric=result.best_metric,
        best_epoch=result.best_epoch,
        stale=stale,
        in_epoch=in_epoch,
        in_epoch_lr=lr,
    )
    return dataclasses.replace(describe, state_dict=clean_state_dict(unwrap(state.evaluated).state_dict()),
                               metrics=row if row is not None else (result.history[-1] if result.history else None),
                               training=training)  # fmt: skip


def restore(ckpt: Checkpoint, state: TrainState, result: FitResult) -> tuple[int, int, EpochProgress | None]:
    """Load a ``last.pt`` checkpoint into the training state and the record; returns (first
    epoch to run, epochs without improvement, progress into that epoch or None).

    Raises:
        CnnkitError: a checkpoint without the training state (``best.pt``).
    """
    saved = ckpt.training
    if saved is None or not saved.resumable:
        where = ckpt.path or "the checkpoint"
        raise CnnkitError(f"{where} holds weights only, not the training state; resume from the run's last.pt")
    raw = saved.raw_state_dict  # set when the run keeps an EMA: state_dict is the average
    unwrap(state.model).load_state_dict(raw if raw is not None else ckpt.state_dict)
    if state.ema is not None and raw is not None:
        state.ema.load(ckpt.state_dict, saved.ema_updates or 0)
    elif state.ema is not None:  # an EMA switched on when resuming: start it from the weights
        state.ema.update(state.model)
    state.optimizer.load_state_dict(saved.optimizer)
    if state.scheduler is not None and saved.scheduler is not None:
        state.scheduler.load_state_dict(saved.scheduler)
    if state.scaler is not None and saved.scaler is not None:
        state.scaler.load_state_dict(saved.scaler)
    result.history = [dict(row) for row in saved.history]
    result.best_metric, result.best_epoch = saved.best_metric, saved.best_epoch
    result.steps = saved.step - (saved.in_epoch.batches if saved.in_epoch else 0)
    if saved.in_epoch:
        return saved.epoch + 1, saved.stale, dataclasses.replace(saved.in_epoch)  # a copy the epoch advances
    set_rng_state(saved.rng)  # the state the next epoch started with in the uninterrupted run
    return saved.epoch + 1, saved.stale, None

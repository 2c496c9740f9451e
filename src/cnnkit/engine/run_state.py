"""What a training run has built up, and how it goes into a checkpoint and comes back.

:class:`TrainState` is what the steps change (model, optimizer, schedule, scaler, EMA),
:class:`FitResult` the record of the epochs (history, best epoch, steps) and
:class:`EpochProgress` how far an interrupted epoch got. :func:`run_checkpoint` writes
them into a :class:`~cnnkit.checkpoint.Checkpoint`, :class:`RunSaver` puts its files into
the run's :class:`~cnnkit.runfolder.RunFolder` (timm's ``CheckpointSaver``), and
:func:`restore` loads a ``last.pt`` back, so a resumed run continues exactly where the
interrupted one stopped. The progress becomes plain values only here, at the checkpoint's
boundary (``TrainingState.in_epoch``).
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
    EpochProgress,
    TrainingState,
    clean_state_dict,
    rng_state,
    set_rng_state,
    unwrap,
)
from cnnkit.confidence import OpenSet
from cnnkit.engine.regularize import WeightEma
from cnnkit.errors import CnnkitError
from cnnkit.runfolder import RunFolder


@dataclass
class FitResult:
    """What :func:`~cnnkit.engine.loop.fit` returns: one metrics row per epoch and where the best one was.

    Attributes:
        history: one metrics row per epoch.
        best_metric, best_epoch: the selection metric's best value and its epoch.
        stopped_early: ``patience`` ended the run.
        run_dir: the run folder written (None: nothing written).
        steps: optimizer steps done by the epochs completed.
        stale: epochs since the best one (what ``patience`` counts).
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    best_metric: float | None = None
    best_epoch: int | None = None
    stopped_early: bool = False
    run_dir: Path | None = None
    steps: int = 0
    stale: int = 0

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


def run_checkpoint(state: TrainState, result: FitResult, describe: Checkpoint, epoch: int,
                   in_epoch: EpochProgress | None = None, lr: float | None = None) -> Checkpoint:  # fmt: skip
    """The run's checkpoint now: ``describe`` (model description, class names, preprocessing,
    config) with the weights and the training state filled in.

    ``epoch`` counts completed epochs; ``in_epoch`` says how far the next one got when written
    mid-epoch (None at an epoch's end) and ``lr`` what that epoch started with. With an EMA,
    ``state_dict`` holds the averaged weights (what predict/export use) and
    ``training.raw_state_dict`` the trained ones (what resume continues from).
    """
    ema = state.ema
    training = TrainingState(
        epoch=epoch,
        step=result.steps + (in_epoch.batches if in_epoch is not None else 0),
        optimizer=state.optimizer.state_dict(),
        scheduler=state.scheduler.state_dict() if state.scheduler is not None else None,
        scaler=state.scaler.state_dict() if state.scaler is not None else None,
        raw_state_dict=clean_state_dict(unwrap(state.model).state_dict()) if ema is not None else None,
        ema_updates=ema.updates if ema is not None else None,
        rng=rng_state(),
        history=[dict(r) for r in result.history],
        best_metric=result.best_metric,
        best_epoch=result.best_epoch,
        stale=result.stale,
        in_epoch=in_epoch,
        in_epoch_lr=lr if in_epoch is not None else None,
    )
    return dataclasses.replace(describe, state_dict=clean_state_dict(unwrap(state.evaluated).state_dict()),
                               metrics=result.history[-1] if result.history else None, training=training)  # fmt: skip


@dataclass
class RunSaver:
    """Writes a run's files as training goes, into its :class:`~cnnkit.runfolder.RunFolder`
    (which names them): after every epoch ``metrics.csv`` and ``last.pt``, ``best.pt`` when the
    epoch improved, every ``save_every`` epochs a numbered snapshot, and mid-epoch ``last.pt``
    again. Nothing is written through a folder that is not its writer (torchrun ranks but 0).

    Attributes:
        folder: the run folder.
        describe: what makes every checkpoint self-describing (model description, class names,
            preprocessing, config; its weights and training state are ignored); the default
            describes nothing: such checkpoints resume but do not load on their own.
        save_every: write ``epoch_NNN.pt`` every this many epochs (None: never).
    """

    folder: RunFolder
    describe: Checkpoint = field(default_factory=lambda: Checkpoint(model=None, state_dict={}))
    save_every: int | None = None

    def __post_init__(self) -> None:
        self.describe = dataclasses.replace(self.describe, state_dict={}, training=None)
        self._best: Checkpoint | None = None  # the last best.pt written, kept to add the fitted confidence

    def save_epoch(self, state: TrainState, result: FitResult, improved: bool) -> None:
        """The files of the epoch that ends ``result.history``."""
        if not self.folder.writer:
            return
        epoch = result.history[-1]["epoch"]
        self.folder.write_metrics(result.history)
        ckpt = run_checkpoint(state, result, self.describe, epoch)
        ckpt.save(self.folder.last)
        if improved:  # what is deployed: the validated weights and metadata, no optimizer state
            self._best = ckpt.weights_only()
            self._best.save(self.folder.best)
        if self.save_every and epoch % self.save_every == 0:  # snapshots to resume from, like last.pt
            ckpt.save(self.folder.epoch_checkpoint(epoch))

    def save_confidence(self, temperature: float, open_set: OpenSet | None) -> None:
        """Record the fitted temperature and open set (:mod:`cnnkit.confidence`) in ``best.pt``
        and in every checkpoint written after it (a resumed run that improves refits them)."""
        self.describe = dataclasses.replace(self.describe, temperature=temperature, open_set=open_set)
        if self.folder.writer and self.folder.best.is_file():
            # the best checkpoint this process wrote, else (a resumed run that did not improve) the file's
            best = self._best if self._best is not None else Checkpoint.load(self.folder.best)
            dataclasses.replace(best, temperature=temperature, open_set=open_set).save(self.folder.best)

    def save_progress(self, state: TrainState, result: FitResult, done: EpochProgress, lr: float) -> None:
        """``last.pt`` in the middle of the epoch after ``result.history``: ``done`` says how far
        it got, ``lr`` what it started with."""
        if self.folder.writer:
            run_checkpoint(state, result, self.describe, len(result.history), done, lr).save(self.folder.last)


def restore(ckpt: Checkpoint, state: TrainState, result: FitResult) -> tuple[int, EpochProgress | None]:
    """Load a ``last.pt`` checkpoint into the training state and the record (its history, best
    epoch, steps and ``stale``); returns (first epoch to run, progress into that epoch or None).

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
    result.best_metric, result.best_epoch, result.stale = saved.best_metric, saved.best_epoch, saved.stale
    result.steps = saved.step - (saved.in_epoch.batches if saved.in_epoch else 0)
    if saved.in_epoch:
        return saved.epoch + 1, dataclasses.replace(saved.in_epoch)  # a copy the epoch advances
    set_rng_state(saved.rng)  # the state the next epoch started with in the uninterrupted run
    return saved.epoch + 1, None

"""One training epoch: :func:`train_one_epoch` and the pieces of its step.

A step is: fetch the batch, forward (mixed precision, mixup/cutmix) and backward (fp16
scaling, gradient accumulation), then on every ``accumulate``-th batch the optimizer step
and the EMA update. :func:`train_one_epoch` takes the run's :class:`TrainState`, the loss,
the epoch's :class:`EpochOptions` (fixed for the epoch) and :class:`EpochHooks` (what it
calls back). :class:`EpochProgress` is how far an epoch got: what a mid-epoch checkpoint
records and what an interrupted epoch continues from. A ``stop`` hook ends an epoch early
between two optimizer steps, after a mid-epoch checkpoint (:class:`TrainingStopped`), so the
run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from cnnkit.checkpoint import EpochProgress, rng_state, set_rng_state
from cnnkit.device import autocast
from cnnkit.engine.distributed import all_reduce_sum, current
from cnnkit.engine.regularize import BatchMixer
from cnnkit.engine.run_state import TrainState
from cnnkit.engine.speed import NoTimer, StepTimer
from cnnkit.errors import CnnkitError
from cnnkit.scoring import to_device


class TrainingStopped(Exception):
    """Training ended early because its ``should_stop`` callable said so (not an error).

    Raised between two optimizer steps or two epochs, after ``last.pt`` recorded where
    training was (when the run writes files), so ``cnnkit train --resume`` continues it.

    Attributes:
        epoch: the epoch it stopped in (1-based).
        batches: optimizer steps done in that epoch (0: stopped at the epoch boundary).
        where: ``epoch 3 after 12 steps`` or ``epoch 3 at its end``.
    """

    def __init__(self, epoch: int, batches: int = 0) -> None:
        self.epoch = epoch
        self.batches = batches
        self.where = f"epoch {epoch}" + (f" after {batches} steps" if batches else " at its end")
        super().__init__(f"training stopped on request in {self.where}")


class NonFiniteLoss(CnnkitError):
    """The training loss became nan or inf: the weights are lost, so training stops at once
    (fastai's ``TerminateOnNaN``), before any checkpoint records them.

    Attributes:
        epoch: the epoch (1-based) and ``step``: the step of that epoch (1-based) whose loss
            was first non-finite; ``value``: ``nan`` or ``inf``.
    """

    exit_code = 1

    def __init__(self, epoch: int, step: int, value: str, advice: str = "") -> None:
        self.epoch, self.step, self.value = epoch, step, value
        super().__init__(f"loss became {value} at epoch {epoch} step {step}" + (f"; {advice}" if advice else ""))


__all__ = ["EpochHooks", "EpochOptions", "EpochProgress", "NonFiniteLoss", "TrainingStopped", "train_one_epoch"]


@dataclass
class EpochOptions:
    """How one epoch's steps run; fixed for the whole epoch.

    Attributes:
        device: the training device (batches are moved there).
        dtype: the autocast dtype (None: full precision).
        grad_clip: clip the gradients' norm to this (None or 0: no clipping).
        accumulate: add up the gradients of this many batches per optimizer step (a
            larger effective batch); mid-epoch checkpoints fall on optimizer steps.
        channels_last: hand the model its batches in channels-last memory format.
        mixer: mixup/cutmix of each batch into soft targets (accuracy still counts against the true labels).
        log_every: steps between progress-bar updates (and, off the CPU, loss checks).
        checkpoint_every: call the ``checkpoint`` hook after every N-th step of the epoch
            (not after the last one: the epoch-end checkpoint covers it); None: never.
        epoch: the epoch's number (1-based), for :class:`TrainingStopped` and :class:`NonFiniteLoss`.
    """

    device: torch.device
    dtype: torch.dtype | None = None
    grad_clip: float | None = None
    accumulate: int = 1
    channels_last: bool = False
    mixer: BatchMixer | None = None
    log_every: int = 20
    checkpoint_every: int | None = None
    epoch: int = 0


@dataclass
class EpochHooks:
    """What an epoch calls back; every one optional.

    Attributes:
        progress: a tqdm bar advanced per step.
        checkpoint: ``checkpoint(progress)`` writes a mid-epoch checkpoint (see
            ``EpochOptions.checkpoint_every`` and ``stop``).
        stop: asked after every optimizer step but the epoch's last; True ends the epoch there:
            ``checkpoint(progress)`` records it, then :class:`TrainingStopped` is raised. One
            process only (not under torchrun: the ranks would disagree on where to stop).
        timer: adds up the time of each phase of the steps (``--profile``).
    """

    progress: tqdm | None = None
    checkpoint: Callable[[EpochProgress], None] | None = None
    stop: Callable[[], bool] | None = None
    timer: StepTimer | None = None


def train_one_epoch(
    state: TrainState,
    loader: Iterable,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    options: EpochOptions,
    hooks: EpochHooks | None = None,
    start: EpochProgress | None = None,
) -> dict[str, float]:
    """One pass over ``loader`` training ``state`` (its model, optimizer, per-step schedule,
    fp16 scaler and EMA); returns mean ``loss``, ``acc``, ``images`` and ``seconds``.

    Args:
        state: what the steps change; ``state.model`` is what runs (compiled or wrapped as
            the caller chose).
        loss_fn: ``loss_fn(logits, targets)``, the batch's mean training loss.
        options: how the steps run (device, precision, accumulation...).
        hooks: the progress bar, mid-epoch checkpoint, stop request and step timer.
        start: continue an interrupted epoch: its first ``start.batches`` batches are drawn from the loader and
            dropped (its random state advances as it did), the RNG states restored, the sums carry on from ``start``.

    Raises:
        NonFiniteLoss: a step's loss was nan or inf (checked every step on the CPU, every
            ``log_every`` steps, before a checkpoint and at the end elsewhere).
        TrainingStopped: the ``stop`` hook said so.
    """
    hooks = hooks or EpochHooks()
    state.model.train()
    sums = _RunningSums(start or EpochProgress(), options.device)
    batches = _continue(loader, start)
    total = len(loader) if hasattr(loader, "__len__") else None
    if hooks.progress is not None and sums.step:
        hooks.progress.update(sums.step)
    timer = hooks.timer or NoTimer()
    since_checkpoint = 0
    # On the CPU reading the loss costs nothing; on a GPU it waits for the queued work, and under
    # torchrun the ranks must agree (a collective), so there the loss is read only as often as the
    # progress bar reads it, before a checkpoint and at the epoch's end: the first bad step is
    # remembered on the device meanwhile.
    finite_every = 1 if options.device.type == "cpu" and current().world == 1 else options.log_every
    state.optimizer.zero_grad(set_to_none=True)
    while (batch := _next_batch(batches, options.device, options.channels_last, timer)) is not None:
        images, labels = batch
        # an optimizer step after this batch
        update = (sums.step + 1) % options.accumulate == 0 or sums.step + 1 == total
        logits, loss = _forward_backward(state, batch, loss_fn, options, timer)
        if update:
            _update(state, options.grad_clip, timer)
        sums.add(loss, logits, labels)
        if sums.step % finite_every == 0 or sums.step == total:
            sums.check_finite(options.epoch)  # before a checkpoint could record the lost weights
        since_checkpoint += 1
        _show(hooks.progress, sums, options.log_every)
        every = options.checkpoint_every
        if every and update and since_checkpoint >= every and sums.step != total:
            since_checkpoint = 0
            _save_progress(sums, hooks.checkpoint, options.epoch)
        if hooks.stop is not None and update and sums.step != total and hooks.stop():
            _save_progress(sums, hooks.checkpoint, options.epoch)
            raise TrainingStopped(options.epoch, sums.step)
    return sums.summary()


class _RunningSums:
    """The epoch's running loss/accuracy sums, kept on the device (no sync per step)."""

    def __init__(self, start: EpochProgress, device: torch.device) -> None:
        if not current().is_main:  # under torchrun the saved sums are already over all ranks: rank 0 carries them
            start = dataclasses.replace(start, loss_sum=0.0, correct=0, seen=0)
        self.began = time.perf_counter() - start.seconds
        self.loss_sum = torch.tensor(start.loss_sum, device=device, dtype=torch.float32)
        self.correct = torch.tensor(start.correct, device=device, dtype=torch.long)
        self.seen = start.seen
        self.step = start.batches
        self.first_bad = torch.tensor(0, device=device, dtype=torch.long)  # step of the first non-finite loss (0: none)
        self.bad_value = torch.tensor(0.0, device=device)

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Count one batch: its mean ``loss``, ``logits`` ``[B, K]`` against ``labels`` ``[B]``."""
        batch = labels.shape[0]
        value = loss.detach().float()
        first = (self.first_bad == 0) & ~torch.isfinite(value)  # on the device: no sync
        self.first_bad = torch.where(first, self.step + 1, self.first_bad)
        self.bad_value = torch.where(first, value, self.bad_value)
        self.loss_sum += value * batch
        self.correct += (logits.detach().argmax(1) == labels).sum()
        self.seen += batch
        self.step += 1

    def check_finite(self, epoch: int) -> None:
        """Raise :class:`NonFiniteLoss` naming the first step whose loss was nan or inf (under
        torchrun on every rank when any rank met one, so none waits for the others)."""
        step = int(self.first_bad.item())
        if current().world > 1 and int(all_reduce_sum((self.first_bad > 0).long()).item()) and not step:
            step = self.step  # another rank's loss: this rank stops with it, at the step it reached
        if step:
            raise NonFiniteLoss(epoch, step, "nan" if torch.isnan(self.bad_value) or not self.first_bad else "inf")

    def over_ranks(self) -> list[float]:
        """(loss sum, correct, seen) added up over the ranks under torchrun (each saw its
        shard); this process's own figures otherwise."""
        seen = torch.tensor(float(self.seen), device=self.loss_sum.device, dtype=torch.float64)
        return all_reduce_sum(torch.stack([self.loss_sum.double(), self.correct.double(), seen])).tolist()

    def progress(self) -> EpochProgress:
        """Where the epoch is now, with the sums over all ranks and the RNG states."""
        loss_sum, correct, seen = self.over_ranks()
        return EpochProgress(self.step, loss_sum, int(correct), int(seen), time.perf_counter() - self.began,
                             rng_state())  # fmt: skip

    def summary(self) -> dict[str, float]:
        """What :func:`train_one_epoch` returns (the time is taken before the reduction)."""
        seconds = time.perf_counter() - self.began
        loss_sum, correct, seen = self.over_ranks()
        return {"loss": loss_sum / max(seen, 1), "acc": correct / max(seen, 1), "images": int(seen),
                "seconds": seconds}  # fmt: skip


def _continue(loader: Iterable, start: EpochProgress | None) -> Iterator:
    """The loader's batches from where ``start`` stopped: the first ``start.batches`` are drawn
    and dropped (replaying the epoch's order and augmentation), then the RNG states are
    restored so dropout etc. continue exactly where the interrupted run was."""
    batches = iter(loader)
    if start is None:
        return batches
    for _ in range(start.batches):
        next(batches)
    if start.rng is not None:
        set_rng_state(start.rng)
    return batches


def _next_batch(batches: Iterator, device: torch.device, channels_last: bool,
                timer: StepTimer | NoTimer) -> tuple[torch.Tensor, torch.Tensor] | None:  # fmt: skip
    """The next ``(images, labels)`` on ``device``, or None when the epoch is over."""
    with timer("data"):
        pair = next(batches, None)
        if pair is None:
            return None
        return to_device(pair[0], device, channels_last), pair[1].to(device, non_blocking=True)


def _forward_backward(state: TrainState, batch: tuple[torch.Tensor, torch.Tensor], loss_fn: Callable,
                      options: EpochOptions, timer: StepTimer | NoTimer) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """Forward (autocast to ``options.dtype``, the batch mixed by ``options.mixer``) and backward
    of one ``(images, labels)`` batch; returns its ``logits`` ``[B, K]`` and mean ``loss``. The
    gradient added is that of ``loss / accumulate`` (scaled by the fp16 scaler when there is one)."""
    images, labels = batch
    mixer = options.mixer
    with timer("forward"), autocast(options.device, options.dtype):
        inputs, targets = mixer(images, labels) if mixer is not None else (images, labels)
        logits = state.model(inputs)  # [B, num_classes]
        loss = loss_fn(logits, targets)
    with timer("backward"):
        share = loss / options.accumulate if options.accumulate > 1 else loss
        (state.scaler.scale(share) if state.scaler is not None else share).backward()
    return logits, loss


def _update(state: TrainState, grad_clip: float | None, timer: StepTimer | NoTimer) -> None:
    """The optimizer step after the accumulated batches, then the EMA of the new weights."""
    with timer("optimizer"):
        _optimizer_step(state.model, state.optimizer, state.scheduler, state.scaler, grad_clip)
        if state.ema is not None:
            state.ema.update(state.model)


def _optimizer_step(model, optimizer, scheduler, scaler, grad_clip: float | None) -> None:
    """Clip, step (through the fp16 scaler when there is one), clear the gradients, advance the schedule."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    if grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if scheduler is not None:
        scheduler.step()


def _save_progress(sums: _RunningSums, checkpoint: Callable[[EpochProgress], None] | None, epoch: int) -> None:
    """The mid-epoch checkpoint hook: ``checkpoint(progress)`` with the sums over all ranks. Every
    rank gets here at the same step (the reduction is collective), with or without a hook.

    Raises:
        NonFiniteLoss: a loss since the last check was nan or inf: no checkpoint records lost weights.
    """
    sums.check_finite(epoch)
    done = sums.progress()
    if checkpoint is not None:
        checkpoint(done)


def _show(progress: tqdm | None, sums: _RunningSums, log_every: int) -> None:
    """Advance the progress bar; every ``log_every`` steps show the running loss and accuracy."""
    if progress is None:
        return
    progress.update(1)
    if sums.step % log_every == 0:
        seen = sums.seen
        progress.set_postfix(loss=f"{sums.loss_sum.item() / seen:.4f}", acc=f"{sums.correct.item() / seen:.2%}")

"""One training epoch: :func:`train_one_epoch` and the pieces of its step.

A step is: fetch the batch, forward (mixed precision, mixup/cutmix) and backward (fp16
scaling, gradient accumulation), then on every ``accumulate``-th batch the optimizer step
and the EMA update. :class:`EpochProgress` is how far an epoch got: what a mid-epoch
checkpoint records and what an interrupted epoch continues from. A ``stop`` callable ends
an epoch early between two optimizer steps, after a mid-epoch checkpoint
(:class:`TrainingStopped`), so the run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from cnnkit.checkpoint import EpochProgress as EpochProgress  # the checkpoint's type of it
from cnnkit.checkpoint import rng_state, set_rng_state
from cnnkit.engine.device import autocast
from cnnkit.engine.distributed import all_reduce_sum, current
from cnnkit.engine.regularize import BatchMixer, WeightEma
from cnnkit.engine.scoring import to_device
from cnnkit.engine.speed import NoTimer, StepTimer
from cnnkit.errors import CnnkitError


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


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    loss_fn: nn.Module,
    *,
    device: torch.device,
    dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    grad_clip: float | None = None,
    progress: tqdm | None = None,
    log_every: int = 20,
    start: EpochProgress | None = None,
    checkpoint_every: int | None = None,
    checkpoint: Callable[[EpochProgress], None] | None = None,
    channels_last: bool = False,
    timer: StepTimer | None = None,
    accumulate: int = 1,
    mixer: BatchMixer | None = None,
    ema: WeightEma | None = None,
    stop: Callable[[], bool] | None = None,
    epoch: int = 0,
) -> dict[str, float]:
    """One pass over ``loader``; returns mean ``loss``, ``acc``, ``images`` and ``seconds``.

    Args:
        start: continue an interrupted epoch: its first ``start.batches`` batches are drawn from the loader and
            dropped (its random state advances as it did), the RNG states restored, the sums carry on from ``start``.
        checkpoint_every: call ``checkpoint(progress)`` after every N-th step of the
            epoch (not after the last one: the epoch-end checkpoint covers it).
        channels_last: hand the model its batches in channels-last memory format.
        timer: adds up the time of each phase of the steps (``--profile``).
        accumulate: add up the gradients of this many batches per optimizer step (a
            larger effective batch); mid-epoch checkpoints fall on optimizer steps.
        mixer: mixup/cutmix of each batch into soft targets (accuracy still counts against the true labels).
        ema: an average of the weights, updated after every optimizer step.
        stop: asked after every optimizer step but the epoch's last; True ends the epoch there:
            ``checkpoint(progress)`` records it (as a mid-epoch checkpoint does), then
            :class:`TrainingStopped` is raised. One process only (not under torchrun: the
            ranks would disagree on where to stop).
        epoch: the epoch's number, for :class:`TrainingStopped` and :class:`NonFiniteLoss`.

    Raises:
        NonFiniteLoss: a step's loss was nan or inf (checked every step on the CPU, every
            ``log_every`` steps, before a checkpoint and at the end elsewhere).
        TrainingStopped: ``stop()`` said so.
    """
    model.train()
    sums = _RunningSums(start or EpochProgress(), device)
    batches = _continue(loader, start)
    total = len(loader) if hasattr(loader, "__len__") else None
    if progress is not None and sums.step:
        progress.update(sums.step)
    timer = timer or NoTimer()
    since_checkpoint = 0
    # On the CPU reading the loss costs nothing; on a GPU it waits for the queued work, and under
    # torchrun the ranks must agree (a collective), so there the loss is read only as often as the
    # progress bar reads it, before a checkpoint and at the epoch's end: the first bad step is
    # remembered on the device meanwhile.
    finite_every = 1 if device.type == "cpu" and current().world == 1 else log_every
    optimizer.zero_grad(set_to_none=True)
    while (batch := _next_batch(batches, device, channels_last, timer)) is not None:
        images, labels = batch
        update = (sums.step + 1) % accumulate == 0 or sums.step + 1 == total  # an optimizer step after this batch
        logits, loss = _forward_backward(model, images, labels, loss_fn, device=device, dtype=dtype, scaler=scaler,
                                         accumulate=accumulate, mixer=mixer, timer=timer)  # fmt: skip
        if update:
            _update(model, optimizer, scheduler, scaler, grad_clip, ema, timer)
        sums.add(loss, logits, labels)
        if sums.step % finite_every == 0 or sums.step == total:
            sums.check_finite(epoch)  # before a checkpoint could record the lost weights
        since_checkpoint += 1
        _show(progress, sums, log_every)
        if checkpoint_every and update and since_checkpoint >= checkpoint_every and sums.step != total:
            since_checkpoint = 0
            _save_progress(sums, checkpoint, epoch)
        if stop is not None and update and sums.step != total and stop():
            _save_progress(sums, checkpoint, epoch)
            raise TrainingStopped(epoch, sums.step)
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


def _forward_backward(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    loss_fn: nn.Module,
    *,
    device: torch.device,
    dtype: torch.dtype | None,
    scaler: torch.amp.GradScaler | None,
    accumulate: int,
    mixer: BatchMixer | None,
    timer: StepTimer | NoTimer,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward (autocast to ``dtype``, the batch mixed by ``mixer``) and backward of one
    batch; returns its ``logits`` ``[B, K]`` and mean ``loss``. The gradient added is that of
    ``loss / accumulate`` (scaled by the fp16 ``scaler`` when there is one)."""
    with timer("forward"), autocast(device, dtype):
        inputs, targets = mixer(images, labels) if mixer is not None else (images, labels)
        logits = model(inputs)  # [B, num_classes]
        loss = loss_fn(logits, targets)
    with timer("backward"):
        share = loss / accumulate if accumulate > 1 else loss
        (scaler.scale(share) if scaler is not None else share).backward()
    return logits, loss


def _update(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, scaler, grad_clip: float | None,
            ema: WeightEma | None, timer: StepTimer | NoTimer) -> None:  # fmt: skip
    """The optimizer step after the accumulated batches, then the EMA of the new weights."""
    with timer("optimizer"):
        _optimizer_step(model, optimizer, scheduler, scaler, grad_clip)
        if ema is not None:
            ema.update(model)


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

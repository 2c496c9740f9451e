"""The training loop: three plain functions you can read on one screen.

``train_one_epoch`` runs the optimizer over one pass of the train loader, ``evaluate``
measures loss/top-1/top-5 and the confusion matrix, and ``fit`` alternates them, logs one
summary line per epoch, writes ``metrics.csv`` and saves ``last.pt``/``best.pt``.
The only callback is ``on_epoch_end(row)``, called once per epoch after the checkpoints
are written.

``best.pt`` holds the weights that were validated (the EMA with ``--ema``) and the
metadata only; ``last.pt`` (and ``epoch_NNN.pt``) also hold the
:class:`~cnnkit.engine.checkpoint.TrainingState`. Resuming is exact: ``last.pt`` holds the
weights, optimizer, scheduler, scaler, the history, the RNG states and, for a checkpoint
written mid-epoch (``checkpoint_every_steps``), how far into the epoch it was. Loaders draw each epoch's
order and augmentation from ``(seed, epoch)``, so ``fit(resume=payload)`` replays the
rest of the interrupted epoch as the uninterrupted run would have seen it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from cnnkit.config import METRIC_ALIASES, SELECT_METRICS, TrainConfig
from cnnkit.engine.checkpoint import (
    Checkpoint,
    TrainingState,
    clean_state_dict,
    rng_state,
    set_rng_state,
    unwrap,
)
from cnnkit.engine.device import amp_dtype, autocast, resolve_device, seed_everything
from cnnkit.engine.distributed import all_reduce_sum, current
from cnnkit.engine.optim import build_optimizer, build_scheduler
from cnnkit.engine.regularize import BatchMixer, WeightEma, build_mixer
from cnnkit.engine.scoring import EvalResult, metrics, score, to_device
from cnnkit.engine.speed import CompilePlan, NoTimer, StepTimer, use_channels_last
from cnnkit.errors import CnnkitError, UsageError

# Metrics where a lower value is better; every other select_metric is maximised.
LOWER_IS_BETTER = {"val_loss"}


def metric_column(name: str) -> str:
    """The metrics.csv column a ``--select-metric`` name stands for.

    Raises:
        UsageError: an unknown name (the valid ones are listed).
    """
    column = METRIC_ALIASES.get(name, name)
    if column not in SELECT_METRICS:
        valid = ", ".join([*METRIC_ALIASES, *SELECT_METRICS])
        raise UsageError(f"unknown select metric {name!r}; valid: {valid}")
    return column


@dataclass
class FitResult:
    """What :func:`fit` returns: one metrics row per epoch and where the best one was."""

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


@dataclass
class EpochProgress:
    """How far one training epoch has got: what a mid-epoch checkpoint records.

    Attributes:
        batches: optimizer steps done in this epoch (the loader's first ``batches``
            batches are consumed).
        loss_sum: sum over those steps of batch loss x batch size.
        correct: training images classified correctly so far.
        seen: training images seen so far.
        seconds: training time spent so far in this epoch.
        rng: the RNG states right after step ``batches`` (None: not recorded).
    """

    batches: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0
    rng: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "loss_sum": self.loss_sum, "correct": self.correct, "seen": self.seen,
                "seconds": self.seconds, "rng": self.rng}  # fmt: skip

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EpochProgress:
        return cls(**values)


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
) -> dict[str, float]:
    """One pass over ``loader``; returns mean ``loss``, ``acc``, ``images`` and ``seconds``.

    Args:
        start: continue an interrupted epoch: its first ``start.batches`` batches are
            drawn from the loader and dropped (so the loader's random state advances as it
            did), the RNG states are restored, and the sums carry on from ``start``.
        checkpoint_every: call ``checkpoint(progress)`` after every N-th step of the
            epoch (not after the last one: the epoch-end checkpoint covers it).
        channels_last: hand the model its batches in channels-last memory format.
        timer: adds up the time of each phase of the steps (``--profile``).
        accumulate: add up the gradients of this many batches per optimizer step (a
            larger effective batch); mid-epoch checkpoints fall on optimizer steps.
        mixer: mixup/cutmix of each batch into soft targets (accuracy still counts
            against the true labels).
        ema: an average of the weights, updated after every optimizer step.
    """
    model.train()
    start = start or EpochProgress()
    if not current().is_main:  # under torchrun the saved sums are already over all ranks: rank 0 carries them
        start = dataclasses.replace(start, loss_sum=0.0, correct=0, seen=0)
    began = time.perf_counter() - start.seconds
    loss_sum = torch.tensor(start.loss_sum, device=device, dtype=torch.float32)
    correct = torch.tensor(start.correct, device=device, dtype=torch.long)
    seen = start.seen
    batches = iter(loader)
    for _ in range(start.batches):  # replay the epoch's order and augmentation up to where it stopped
        next(batches)
    if start.rng is not None:
        set_rng_state(start.rng)  # dropout etc. continue exactly where the interrupted run was
    total = len(loader) if hasattr(loader, "__len__") else None
    if progress is not None and start.batches:
        progress.update(start.batches)
    timer = timer or NoTimer()
    step, since_checkpoint = start.batches, 0
    optimizer.zero_grad(set_to_none=True)
    while True:
        with timer("data"):
            pair = next(batches, None)
            if pair is None:
                break
            images = to_device(pair[0], device, channels_last)
            labels = pair[1].to(device, non_blocking=True)
        step += 1
        update = step % accumulate == 0 or step == total  # an optimizer step after this batch
        with timer("forward"), autocast(device, dtype):
            inputs, targets = mixer(images, labels) if mixer is not None else (images, labels)
            logits = model(inputs)  # [B, num_classes]
            loss = loss_fn(logits, targets)
        with timer("backward"):
            share = loss / accumulate if accumulate > 1 else loss
            (scaler.scale(share) if scaler is not None else share).backward()
        if update:
            with timer("optimizer"):
                _optimizer_step(model, optimizer, scheduler, scaler, grad_clip)
                if ema is not None:
                    ema.update(model)
        batch = labels.shape[0]
        loss_sum += loss.detach().float() * batch
        correct += (logits.detach().argmax(1) == labels).sum()
        seen += batch
        since_checkpoint += 1
        if progress is not None:
            progress.update(1)
            if step % log_every == 0:
                progress.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.2%}")
        if checkpoint_every and update and since_checkpoint >= checkpoint_every and step != total:
            since_checkpoint = 0
            # every rank gets here at the same step (torchrun: the sums are reduced over ranks)
            loss_total, correct_total, seen_total = _sums_over_ranks(loss_sum, correct, seen)
            if checkpoint is not None:
                checkpoint(EpochProgress(step, loss_total, int(correct_total), int(seen_total),
                                         time.perf_counter() - began, rng_state()))  # fmt: skip
    seconds = time.perf_counter() - began
    loss_total, correct_total, seen_total = _sums_over_ranks(loss_sum, correct, seen)
    return {"loss": loss_total / max(seen_total, 1), "acc": correct_total / max(seen_total, 1), "images": int(seen_total),
            "seconds": seconds}  # fmt: skip


def _sums_over_ranks(loss_sum: torch.Tensor, correct: torch.Tensor, seen: int) -> list[float]:
    """(loss sum, correct, seen) added up over the ranks under torchrun (each saw its shard);
    this process's own figures otherwise."""
    values = torch.stack([loss_sum.double(), correct.double(), torch.tensor(float(seen), device=loss_sum.device,
                                                                            dtype=torch.float64)])  # fmt: skip
    return all_reduce_sum(values).tolist()


def _data_parallel(model: nn.Module, device: torch.device, sync_bn: bool, log: Callable[[str], None]) -> nn.Module:
    """Under torchrun, ``model`` wrapped in DistributedDataParallel (gradients averaged over
    ranks; rank 0's initial weights broadcast), with BatchNorm synchronised across ranks
    when ``sync_bn`` on CUDA; the model itself otherwise. Checkpoints unwrap it (``unwrap``)."""
    if not current().active:
        return model
    if sync_bn and device.type != "cuda":  # PyTorch's SyncBatchNorm runs on GPUs only
        log("note: --sync-bn needs CUDA GPUs (PyTorch's SyncBatchNorm is GPU-only); "
            "BatchNorm statistics stay per process")  # fmt: skip
    elif sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


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


def evaluate(
    model: nn.Module,
    loader: Iterable,
    num_classes: int,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    tta: str = "none",
    channels_last: bool = False,
) -> EvalResult:
    """Loss, top-1, top-5 (when there are more than 5 classes) and the confusion matrix:
    :func:`~cnnkit.engine.scoring.metrics` of :func:`~cnnkit.engine.scoring.score`.

    The loss is the validation loss (plain cross-entropy of the TTA-combined logits);
    ``tta`` names the test-time views (:mod:`cnnkit.engine.tta`), ``channels_last`` hands
    the model its batches in that memory format. Under torchrun each rank scores its shard
    and the sums are added up over the ranks.
    """
    scores = score(model, loader, device=device, dtype=dtype, tta=tta, channels_last=channels_last)
    return metrics(scores, num_classes, reduce=all_reduce_sum)


def fit(
    model: nn.Module,
    loaders: Sequence,
    cfg: TrainConfig,
    *,
    num_classes: int,
    run_dir: str | Path | None = None,
    meta: Checkpoint | dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    previous: FitResult | None = None,
    total_epochs: int | None = None,
    resume: Checkpoint | dict[str, Any] | None = None,
    class_weights: torch.Tensor | None = None,
) -> FitResult:
    """Train ``model`` for ``cfg.epochs`` epochs, validating after each.

    Args:
        model: any classifier returning logits ``[B, num_classes]``.
        loaders: ``(train, val)`` or a :class:`~cnnkit.data.spec.Loaders`; each yields
            ``(images, labels)`` batches.
        cfg: optimizer, schedule, precision, device, checkpointing and stopping settings.
        num_classes: number of classes (for the confusion matrix).
        run_dir: where ``metrics.csv`` and ``checkpoints/`` go (None: nothing is written).
        meta: what makes the checkpoints self-describing (model description, class names,
            preprocessing, config...): a :class:`~cnnkit.engine.checkpoint.Checkpoint`
            whose weights and training state are ignored, or the same as a payload dict.
        log: receives one summary line per epoch.
        progress: show a progress bar with ETA (only on a terminal).
        on_epoch_end: called with each epoch's metrics row, after checkpoints are saved.
        previous: the result of an earlier phase of the same run (head-only epochs
            before fine-tuning): epochs are numbered on from it, its history is kept in
            ``metrics.csv`` and its best metric must be beaten to replace ``best.pt``.
        total_epochs: epochs of the whole run, for progress lines (None: ``cfg.epochs``).
        resume: the ``last.pt`` checkpoint (or its payload) of this same run and phase: weights,
            optimizer, scheduler, scaler, history, RNG and epoch position are restored
            and training continues where it stopped, to the same end as uninterrupted.
        class_weights: ``[num_classes]`` weights of the training loss (``--balance
            weights``). Label smoothing and class weights shape the training loss only:
            the validation loss is :func:`~cnnkit.engine.scoring.validation_loss`.

    The best epoch (``best.pt``) is the one with the best ``cfg.select_metric``; a tie
    goes to the lower validation loss (see :func:`improves`).

    Returns:
        The per-epoch history and the best validation metric; the model is left with the
        last epoch's weights, on ``cfg.device``.
    """
    select = metric_column(cfg.select_metric)
    train_loader, val_loader = loaders[0], loaders[1]
    if len(train_loader) == 0:
        raise UsageError("the training set is smaller than one batch; lower --batch-size or add data")
    ranks = current()
    seed_everything(cfg.seed + ranks.rank, cfg.deterministic)  # torchrun: each rank its own dropout/mixup draws
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    dtype = amp_dtype(cfg.amp, device, training=True, deterministic=cfg.deterministic)
    eval_dtype = amp_dtype(cfg.amp, device, deterministic=cfg.deterministic)
    channels_last = use_channels_last(cfg.channels_last, device)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    model = _data_parallel(model, device, cfg.sync_bn, log)
    plan = CompilePlan(cfg.compile, device, cfg.deterministic, log)
    optimizer = build_optimizer(model, cfg)
    state = TrainState(model, optimizer, build_scheduler(optimizer, cfg, math.ceil(len(train_loader) / cfg.accumulate)),
                       torch.amp.GradScaler(device.type) if dtype == torch.float16 else None,
                       WeightEma(model, cfg.ema) if cfg.ema else None)  # fmt: skip
    mixer = build_mixer(num_classes, cfg.mixup, cfg.cutmix, cfg.mix_prob)
    weights = class_weights.to(device=device, dtype=torch.float32) if class_weights is not None else None
    loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)
    run_dir = Path(run_dir) if run_dir is not None else None
    result = previous if previous is not None else FitResult(run_dir=run_dir)
    first = len(result.history) + 1
    last = first - 1 + cfg.epochs
    stale, partial = 0, None
    describe = _description(meta)
    if resume is not None:
        resume = resume if isinstance(resume, Checkpoint) else Checkpoint.from_payload(resume)
        first, stale, partial = _restore(resume, state, result)
        if not ranks.is_main:  # the checkpoint holds rank 0's random state: the others draw their own
            seed_everything(cfg.seed + ranks.rank + 1_000_003 * first, cfg.deterministic)
    total = total_epochs or last
    for epoch in range(first, last + 1):
        for loader in (train_loader, val_loader):
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch - 1)
        bar = tqdm(total=len(train_loader), desc=f"epoch {epoch}/{total}", unit="batch",
                   leave=False, dynamic_ncols=True, disable=None if progress else True)  # fmt: skip
        lr = resume.training.in_epoch_lr if partial is not None else optimizer.param_groups[0]["lr"]  # epoch start
        save_progress = None
        if run_dir is not None:
            def save_progress(done: EpochProgress, epoch: int = epoch, lr: float = lr) -> None:
                ckpt = _checkpoint(state, epoch - 1, result.steps + done.batches, None, result, describe, stale,
                                   in_epoch=done, lr=lr)  # fmt: skip
                ckpt.save(run_dir / "checkpoints" / "last.pt")
        timer = StepTimer(device) if epoch - first < cfg.profile else None
        runner = plan.module(model)
        train = train_one_epoch(runner, train_loader, optimizer, state.scheduler, loss_fn, device=device, dtype=dtype,
                                scaler=state.scaler, grad_clip=cfg.grad_clip, progress=bar, log_every=cfg.log_every,
                                start=partial, checkpoint_every=cfg.checkpoint_every_steps,
                                checkpoint=save_progress, channels_last=channels_last, timer=timer,
                                accumulate=cfg.accumulate, mixer=mixer, ema=state.ema)  # fmt: skip
        partial = None
        bar.close()
        result.steps += len(train_loader)
        plan.observe(train["seconds"], last - epoch)
        val = evaluate(runner if state.ema is None else state.ema.module, val_loader, num_classes, device=device,
                       dtype=eval_dtype, tta=cfg.tta, channels_last=channels_last)  # fmt: skip
        if timer is not None:
            timer.steps = len(train_loader)
            log(timer.table(epoch, train["images"], val.seconds))
        row = _metrics_row(epoch, lr, train, val)
        result.history.append(row)
        improved = improves(row, _best_row(result, select), select)
        if improved:
            result.best_metric, result.best_epoch, stale = row[select], epoch, 0
        else:
            stale += 1
        log(_summary_line(row, total, improved and epoch > 1))
        if run_dir is not None:
            _write_metrics(run_dir / "metrics.csv", result.history)
            ckpt = _checkpoint(state, epoch, result.steps, row, result, describe, stale)
            ckpt.save(run_dir / "checkpoints" / "last.pt")
            if improved:  # what is deployed: the validated weights and metadata, no optimizer state
                ckpt.weights_only().save(run_dir / "checkpoints" / "best.pt")
            if cfg.save_every and epoch % cfg.save_every == 0:  # snapshots to resume from, like last.pt
                ckpt.save(run_dir / "checkpoints" / f"epoch_{epoch:03d}.pt")
        if on_epoch_end is not None:
            on_epoch_end(row)
        if cfg.patience is not None and stale >= cfg.patience:
            log(f"early stop: {cfg.select_metric} did not improve for {cfg.patience} epochs")
            result.stopped_early = True
            break
    return result


def _restore(ckpt: Checkpoint, state: TrainState, result: FitResult):
    """Load a ``last.pt`` checkpoint into the training state; returns (first epoch to run,
    epochs without improvement, progress into that epoch or None).

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
    result.steps = saved.step - (saved.in_epoch["batches"] if saved.in_epoch else 0)
    if saved.in_epoch:
        return saved.epoch + 1, saved.stale, EpochProgress.from_dict(saved.in_epoch)
    set_rng_state(saved.rng)  # the state the next epoch started with in the uninterrupted run
    return saved.epoch + 1, saved.stale, None


def _metrics_row(epoch: int, lr: float, train: dict[str, float], val: EvalResult) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "train_loss": round(train["loss"], 6),
        "train_acc": round(train["acc"], 6),
        "val_loss": round(val.loss, 6),
        "val_acc": round(val.acc, 6),
        "val_balanced_acc": round(val.balanced_acc, 6),
        "val_macro_f1": round(val.macro_f1, 6),
        "val_top5": None if val.top5 is None else round(val.top5, 6),
        "lr": lr,
        "epoch_time_s": round(train["seconds"] + val.seconds, 3),
        "train_time_s": round(train["seconds"], 3),
        "train_images_per_s": round(train["images"] / max(train["seconds"], 1e-9), 1),
    }


# What breaks a tie in the selection metric: (column, True when lower is better).
TIE_BREAK = {"val_loss": ("val_acc", False)}
DEFAULT_TIE_BREAK = ("val_loss", True)


def improves(row: dict[str, Any], best: dict[str, Any] | None, metric: str) -> bool:
    """Whether the epoch ``row`` beats the ``best`` row so far on ``metric`` (a metrics.csv column).

    A better value wins. An equal value (1,000 validation images make ties common) goes
    to the lower validation loss, or for ``val_loss`` itself to the higher ``val_acc``;
    equal on both, the earlier epoch stays. NaN or missing never improves.
    """
    value = row.get(metric)
    if not _number(value):
        return False
    if best is None or not _number(best.get(metric)):
        return True
    if value != best[metric]:
        return value < best[metric] if metric in LOWER_IS_BETTER else value > best[metric]
    column, lower = TIE_BREAK.get(metric, DEFAULT_TIE_BREAK)
    mine, theirs = row.get(column), best.get(column)
    if not (_number(mine) and _number(theirs)):
        return False
    return mine < theirs if lower else mine > theirs


def _number(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _best_row(result: FitResult, metric: str) -> dict[str, Any] | None:
    """The history row of the best epoch so far (a row of the metric alone when an older
    checkpoint's history lacks it), or None before the first epoch."""
    if result.best_epoch is None and result.best_metric is None:
        return None
    for row in reversed(result.history):
        if row.get("epoch") == result.best_epoch:
            return row
    return {metric: result.best_metric}


def _summary_line(row: dict[str, Any], epochs: int, improved: bool) -> str:
    top5 = f" top5 {row['val_top5']:.2%}" if row["val_top5"] is not None else ""
    return (
        f"epoch {row['epoch']:>{len(str(epochs))}}/{epochs}  train loss {row['train_loss']:.4f} "
        f"acc {row['train_acc']:.2%}  val loss {row['val_loss']:.4f} acc {row['val_acc']:.2%}{top5}  "
        f"lr {row['lr']:.2e}  {row['epoch_time_s']:.1f}s  {row['train_images_per_s']:,.0f} img/s"
        + ("  *" if improved else "")
    )


def _write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite the whole CSV atomically: one row per epoch, never a duplicate."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    tmp = path.with_suffix(".csv.tmp")
    tmp.write_text(buffer.getvalue(), encoding="utf-8")
    os.replace(tmp, path)


def _description(meta: Checkpoint | dict[str, Any] | None) -> Checkpoint:
    """The self-describing part of every checkpoint of this run (its weights are filled in per save)."""
    if isinstance(meta, Checkpoint):
        return dataclasses.replace(meta, state_dict={}, training=None)
    return Checkpoint.from_payload({"format": 2, **(meta or {}), "state_dict": {}}, "meta")


def _checkpoint(state: TrainState, epoch, step, row, result, describe: Checkpoint, stale,
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
        in_epoch=in_epoch.to_dict() if in_epoch is not None else None,
        in_epoch_lr=lr,
    )
    return dataclasses.replace(describe, state_dict=clean_state_dict(unwrap(state.evaluated).state_dict()),
                               metrics=row if row is not None else (result.history[-1] if result.history else None),
                               training=training)  # fmt: skip

"""The training loop: three plain functions you can read on one screen.

``train_one_epoch`` (:mod:`cnnkit.engine.epoch`) runs the optimizer over one pass of the
train loader, ``evaluate`` measures loss/top-1/top-5 and the confusion matrix, and ``fit``
alternates them, logs one summary line per epoch, writes ``metrics.csv`` and saves
``last.pt``/``best.pt``. The only callback is ``on_epoch_end(row)``, called once per epoch
after the checkpoints are written; ``should_stop()`` is the one question it asks, between
steps and epochs, to end a run early but resumable (:class:`TrainingStopped`).

``best.pt`` holds the weights that were validated (the EMA with ``--ema``) and the
metadata only; ``last.pt`` (and ``epoch_NNN.pt``) also hold the
:class:`~cnnkit.checkpoint.TrainingState`. Resuming is exact: ``last.pt`` holds the
weights, optimizer, scheduler, scaler, the history, the RNG states and, for a checkpoint
written mid-epoch (``checkpoint_every_steps``), how far into the epoch it was. Loaders draw each epoch's
order and augmentation from ``(seed, epoch)``, so ``fit(resume=payload)`` replays the
rest of the interrupted epoch as the uninterrupted run would have seen it
(:mod:`cnnkit.engine.run_state`). Which epoch is best is :mod:`cnnkit.engine.selection`'s rule.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from cnnkit import atomic
from cnnkit.checkpoint import Checkpoint
from cnnkit.config import METRIC_ALIASES, SELECT_METRICS, TrainConfig
from cnnkit.engine.device import amp_dtype, resolve_device, seed_everything
from cnnkit.engine.distributed import all_reduce_sum, current
from cnnkit.engine.epoch import EpochProgress, NonFiniteLoss, TrainingStopped, train_one_epoch
from cnnkit.engine.optim import build_optimizer, build_scheduler
from cnnkit.engine.regularize import BatchMixer, WeightEma, build_mixer
from cnnkit.engine.run_state import FitResult, TrainState, restore, run_checkpoint, run_description
from cnnkit.engine.scoring import EvalResult, ScoringSettings, metrics, score
from cnnkit.engine.selection import LOWER_IS_BETTER, best_row, improves, metric_column
from cnnkit.engine.speed import CompilePlan, StepTimer
from cnnkit.errors import UsageError

__all__ = [  # other modules and tests import these from here
    "LOWER_IS_BETTER",
    "METRIC_ALIASES",
    "SELECT_METRICS",
    "EpochProgress",
    "EvalResult",
    "FitResult",
    "TrainState",
    "TrainingStopped",
    "evaluate",
    "fit",
    "improves",
    "metric_column",
    "train_one_epoch",
]


def evaluate(model: nn.Module, loader: Iterable, num_classes: int,
             settings: ScoringSettings | None = None) -> EvalResult:  # fmt: skip
    """Loss, top-1, top-5 (when there are more than 5 classes) and the confusion matrix:
    :func:`~cnnkit.engine.scoring.metrics` of :func:`~cnnkit.engine.scoring.score` with
    ``settings`` (the run's device, precision, TTA and layout; None: float32 on the CPU).

    The loss is the validation loss (plain cross-entropy of the TTA-combined logits). Under
    torchrun each rank scores its shard and the sums are added up over the ranks.
    """
    return metrics(score(model, loader, settings), num_classes, reduce=all_reduce_sum)


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
    should_stop: Callable[[], bool] | None = None,
) -> FitResult:
    """Train ``model`` for ``cfg.epochs`` epochs, validating after each.

    Args:
        model: any classifier returning logits ``[B, num_classes]``.
        loaders: ``(train, val)`` or a :class:`~cnnkit.data.spec.Loaders`; each yields ``(images, labels)``.
        cfg: optimizer, schedule, precision, device, checkpointing and stopping settings. ``best.pt`` is the
            epoch with the best ``cfg.select_metric``; a tie goes to the lower validation loss (:func:`improves`).
        num_classes: number of classes (for the confusion matrix).
        run_dir: where ``metrics.csv`` and ``checkpoints/`` go (None: nothing is written).
        meta: what makes the checkpoints self-describing (model description, class names, preprocessing, config):
            a :class:`~cnnkit.checkpoint.Checkpoint` (its weights and training state ignored) or its payload.
        log: receives one summary line per epoch.
        progress: show a progress bar with ETA (only on a terminal).
        on_epoch_end: called with each epoch's metrics row, after checkpoints are saved.
        previous: the result of an earlier phase of the same run (head-only epochs before fine-tuning): epochs
            are numbered on from it, its history is kept in ``metrics.csv`` and its best metric must be beaten.
        total_epochs: epochs of the whole run, for progress lines (None: ``cfg.epochs``).
        resume: the ``last.pt`` checkpoint (or its payload) of this same run and phase: weights, optimizer, schedule,
            scaler, history, RNG and epoch position are restored; training ends as it would have uninterrupted.
        class_weights: ``[num_classes]`` weights of the training loss (``--balance weights``); like label smoothing
            they shape the training loss only (validation: :func:`~cnnkit.engine.scoring.validation_loss`).
        should_stop: asked after every optimizer step and epoch; True raises :class:`TrainingStopped` there, after
            ``last.pt`` recorded the position (mid-epoch, as ``checkpoint_every_steps``); one process only.

    Returns:
        The per-epoch history and the best validation metric; the model keeps the last epoch's weights, on
        ``cfg.device``.
    """
    select = metric_column(cfg.select_metric)
    train_loader, val_loader = loaders[0], loaders[1]
    run = _set_up(model, train_loader, num_classes, cfg, class_weights, log)
    run_dir = Path(run_dir) if run_dir is not None else None
    result = previous if previous is not None else FitResult(run_dir=run_dir)
    first, last = len(result.history) + 1, len(result.history) + cfg.epochs
    stale, partial, describe = 0, None, run_description(meta)
    if resume is not None:
        resume = resume if isinstance(resume, Checkpoint) else Checkpoint.from_payload(resume)
        first, stale, partial = _resume(resume, run.state, result, cfg)
    total = total_epochs or last
    for epoch in range(first, last + 1):
        lr = resume.training.in_epoch_lr if partial is not None else run.state.optimizer.param_groups[0]["lr"]
        saver = _mid_epoch_saver(run_dir, run.state, epoch, lr, result, describe, stale)
        timer = StepTimer(run.device) if epoch - first < cfg.profile else None
        runner = run.plan.module(run.state.model)  # eager or compiled, for this whole epoch
        train = _train(run, runner, (train_loader, val_loader), cfg, epoch, total, progress, partial, saver, timer,
                       should_stop)  # fmt: skip
        partial = None
        result.steps += len(train_loader)
        run.plan.observe(train["seconds"], last - epoch)
        val = _validate(run, runner, val_loader, num_classes, cfg.tta)
        if timer is not None:
            log(timer.table(epoch, train["images"], val.seconds))
        row = _metrics_row(epoch, lr, train, val)
        improved, stale = _record(result, row, select, stale)
        log(_summary_line(row, total, improved and epoch > 1))
        if run_dir is not None:
            _save_epoch(run_dir, run.state, row, result, describe, stale, improved, cfg.save_every)
        if on_epoch_end is not None:
            on_epoch_end(row)
        if _stops_after(epoch, last, stale, cfg, should_stop, result, log):
            break
    return result


def _stops_after(epoch: int, last: int, stale: int, cfg: TrainConfig, should_stop: Callable[[], bool] | None,
                 result: FitResult, log: Callable[[str], None]) -> bool:  # fmt: skip
    """True when training ends early after ``epoch`` (``cfg.patience`` epochs without improvement:
    ``result.stopped_early``). Raises :class:`TrainingStopped` when ``should_stop()`` says so
    before the last epoch (its checkpoints are written)."""
    if cfg.patience is not None and stale >= cfg.patience:
        log(f"early stop: {cfg.select_metric} did not improve for {cfg.patience} epochs")
        result.stopped_early = True
        return True
    if should_stop is not None and epoch < last and should_stop():
        raise TrainingStopped(epoch)
    return False


@dataclass
class _Run:
    """The pieces of one :func:`fit` call that are built once, before the first epoch.

    Attributes:
        state: what the steps change (the model wrapped for DDP under torchrun).
        device: the training device.
        dtype: the autocast dtype of training (None: full precision).
        scoring: how validation scores (:meth:`ScoringSettings.for_training`).
        channels_last: whether batches go to the model in channels-last memory format.
        plan: which module (eager or compiled) each epoch runs.
        mixer: mixup/cutmix of the training batches, or None.
        loss_fn: the training loss (label smoothing, class weights).
    """

    state: TrainState
    device: torch.device
    dtype: torch.dtype | None
    scoring: ScoringSettings
    channels_last: bool
    plan: CompilePlan
    mixer: BatchMixer | None
    loss_fn: nn.Module


def _set_up(model: nn.Module, train_loader, num_classes: int, cfg: TrainConfig, class_weights: torch.Tensor | None,
            log: Callable[[str], None]) -> _Run:  # fmt: skip
    """Seed, put ``model`` on its device (in DDP under torchrun), build the optimizer, schedule,
    fp16 scaler, EMA, mixer and training loss.

    Raises:
        UsageError: a training loader without a single batch.
    """
    if len(train_loader) == 0:
        raise UsageError("the training set is smaller than one batch; lower --batch-size or add data")
    seed_everything(cfg.seed + current().rank, cfg.deterministic)  # torchrun: each rank its own dropout/mixup draws
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    dtype = amp_dtype(cfg.amp, device, training=True, deterministic=cfg.deterministic)
    scoring = ScoringSettings.for_training(cfg, device)
    channels_last = scoring.channels_last  # training batches in the layout validation scores in
    scoring.place(model)
    model = _data_parallel(model, device, cfg.sync_bn, log)
    plan = CompilePlan(cfg.compile, device, cfg.deterministic, log, dtype=dtype)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, math.ceil(len(train_loader) / cfg.accumulate))  # per optimizer step
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    state = TrainState(model, optimizer, scheduler, scaler, WeightEma(model, cfg.ema) if cfg.ema else None)
    mixer = build_mixer(num_classes, cfg.mixup, cfg.cutmix, cfg.mix_prob)
    weights = class_weights.to(device=device, dtype=torch.float32) if class_weights is not None else None
    loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)
    return _Run(state, device, dtype, scoring, channels_last, plan, mixer, loss_fn)


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


def _resume(ckpt: Checkpoint, state: TrainState, result: FitResult,
            cfg: TrainConfig) -> tuple[int, int, EpochProgress | None]:  # fmt: skip
    """:func:`~cnnkit.engine.run_state.restore` ``ckpt``; returns (first epoch, epochs without
    improvement, progress into that epoch or None)."""
    first, stale, partial = restore(ckpt, state, result)
    ranks = current()
    if not ranks.is_main:  # the checkpoint holds rank 0's random state: the others draw their own
        seed_everything(cfg.seed + ranks.rank + 1_000_003 * first, cfg.deterministic)
    return first, stale, partial


def _train(run: _Run, runner: nn.Module, loaders: Sequence, cfg: TrainConfig, epoch: int, total: int, show: bool,
           partial: EpochProgress | None, saver: Callable[[EpochProgress], None] | None,
           timer: StepTimer | None, should_stop: Callable[[], bool] | None = None) -> dict[str, float]:  # fmt: skip
    """Train epoch ``epoch`` (1-based) with ``runner``: the loaders are told the epoch (each
    epoch's order and augmentation come from it), a progress bar shows it, ``partial``
    continues an interrupted one; returns :func:`train_one_epoch`'s figures.

    Raises:
        NonFiniteLoss: the loss became nan/inf; the message says where and what to try.
    """
    for loader in loaders:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch - 1)
    train_loader = loaders[0]
    bar = tqdm(total=len(train_loader), desc=f"epoch {epoch}/{total}", unit="batch",
               leave=False, dynamic_ncols=True, disable=None if show else True)  # fmt: skip
    state = run.state
    try:
        train = train_one_epoch(runner, train_loader, state.optimizer, state.scheduler, run.loss_fn, device=run.device,
                                dtype=run.dtype, scaler=state.scaler, grad_clip=cfg.grad_clip, progress=bar,
                                log_every=cfg.log_every, start=partial, checkpoint_every=cfg.checkpoint_every_steps,
                                checkpoint=saver, channels_last=run.channels_last, timer=timer,
                                accumulate=cfg.accumulate, mixer=run.mixer, ema=state.ema, stop=should_stop,
                                epoch=epoch)  # fmt: skip
    except NonFiniteLoss as bad:  # the epoch knows where; the run's settings say what to try
        raise NonFiniteLoss(bad.epoch, bad.step, bad.value, _non_finite_advice(cfg, run.dtype)) from None
    finally:
        bar.close()
    if timer is not None:
        timer.steps = len(train_loader)
    return train


def _non_finite_advice(cfg: TrainConfig, dtype: torch.dtype | None) -> str:
    """What to try after a nan/inf loss: a lower lr, clipping, full precision (what applies)."""
    tries = [f"a lower --lr (now {cfg.lr:g})"]
    if not cfg.grad_clip:
        tries.append("--grad-clip 1.0")
    if dtype is not None:
        tries.append("--amp off")
    return "try " + " or ".join(tries)


def _validate(run: _Run, runner: nn.Module, val_loader: Iterable, num_classes: int, tta: str) -> EvalResult:
    """:func:`evaluate` of the weights being kept: the EMA when there is one, else ``runner``
    (or the eager model where the plan validates eager: :meth:`CompilePlan.eval_module`)."""
    model = run.plan.eval_module(run.state.model, runner) if run.state.ema is None else run.state.ema.module
    return evaluate(model, val_loader, num_classes, run.scoring.with_tta(tta))


def _mid_epoch_saver(run_dir: Path | None, state: TrainState, epoch: int, lr: float, result: FitResult,
                     describe: Checkpoint, stale: int) -> Callable[[EpochProgress], None] | None:  # fmt: skip
    """What writes ``last.pt`` in the middle of epoch ``epoch`` (``checkpoint_every_steps``),
    recording how far it got and its starting ``lr``; None when the run writes nothing."""
    if run_dir is None:
        return None

    def save(done: EpochProgress) -> None:
        ckpt = run_checkpoint(state, epoch - 1, result.steps + done.batches, None, result, describe, stale,
                              in_epoch=done, lr=lr)  # fmt: skip
        ckpt.save(run_dir / "checkpoints" / "last.pt")

    return save


def _record(result: FitResult, row: dict[str, Any], select: str, stale: int) -> tuple[bool, int]:
    """Add the epoch's ``row`` to the history and make it the best epoch when it improves on
    ``select``; returns (improved, epochs without improvement now)."""
    result.history.append(row)
    if not improves(row, best_row(result.history, result.best_epoch, result.best_metric, select), select):
        return False, stale + 1
    result.best_metric, result.best_epoch = row[select], row["epoch"]
    return True, 0


def _save_epoch(run_dir: Path, state: TrainState, row: dict[str, Any], result: FitResult, describe: Checkpoint,
                stale: int, improved: bool, save_every: int | None) -> None:  # fmt: skip
    """The files of the epoch ``row`` ends: ``metrics.csv``, ``last.pt``, ``best.pt`` when it
    ``improved``, and every ``save_every`` epochs an ``epoch_NNN.pt``."""
    epoch = row["epoch"]
    _write_metrics(run_dir / "metrics.csv", result.history)
    ckpt = run_checkpoint(state, epoch, result.steps, row, result, describe, stale)
    ckpt.save(run_dir / "checkpoints" / "last.pt")
    if improved:  # what is deployed: the validated weights and metadata, no optimizer state
        ckpt.weights_only().save(run_dir / "checkpoints" / "best.pt")
    if save_every and epoch % save_every == 0:  # snapshots to resume from, like last.pt
        ckpt.save(run_dir / "checkpoints" / f"epoch_{epoch:03d}.pt")


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
    atomic.write_text(path, buffer.getvalue())



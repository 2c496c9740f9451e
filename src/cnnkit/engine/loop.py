"""The training loop: three plain functions you can read on one screen.

``train_one_epoch`` (:mod:`cnnkit.engine.epoch`) runs the optimizer over one pass of the
train loader, ``evaluate`` measures loss/top-1/top-5 and the confusion matrix, and ``fit``
alternates them and logs one summary line per epoch; its :class:`~cnnkit.engine.run_state.RunSaver`
writes the run's files (the metrics, ``last.pt``, ``best.pt``) into the run folder, which
names them. What the caller hears is :class:`FitHooks`: ``on_epoch_end(row)``, called once per
epoch after the files are written, and ``should_stop()``, the one question it asks, between
steps and epochs, to end a run early but resumable (:class:`TrainingStopped`).

``best.pt`` holds the weights that were validated (the EMA with ``--ema``) and the
metadata only; ``last.pt`` (and ``epoch_NNN.pt``) also hold the
:class:`~cnnkit.checkpoint.TrainingState`. Resuming is exact: ``last.pt`` holds the
weights, optimizer, scheduler, scaler, the history, the RNG states and, for a checkpoint
written mid-epoch (``checkpoint_every_steps``), how far into the epoch it was. Loaders draw each epoch's
order and augmentation from ``(seed, epoch)``, so ``fit(start=FitStart(resume=ckpt))`` replays the
rest of the interrupted epoch as the uninterrupted run would have seen it
(:mod:`cnnkit.engine.run_state`). Which epoch is best is :mod:`cnnkit.engine.selection`'s rule.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from cnnkit.checkpoint import Checkpoint
from cnnkit.config import METRIC_ALIASES, SELECT_METRICS, TrainConfig
from cnnkit.device import amp_dtype, resolve_device, seed_everything
from cnnkit.engine.distributed import all_reduce_sum, current
from cnnkit.engine.epoch import EpochHooks, EpochOptions, EpochProgress, NonFiniteLoss, TrainingStopped, train_one_epoch
from cnnkit.engine.optim import build_optimizer, build_scheduler
from cnnkit.engine.regularize import WeightEma, build_mixer
from cnnkit.engine.run_state import FitResult, RunSaver, TrainState, restore
from cnnkit.engine.selection import LOWER_IS_BETTER, best_row, improves, metric_column
from cnnkit.engine.speed import CompilePlan, StepTimer
from cnnkit.errors import UsageError
from cnnkit.scoring import EvalResult, ScoringSettings, metrics, score

__all__ = [  # other modules and tests import these from here
    "LOWER_IS_BETTER",
    "METRIC_ALIASES",
    "SELECT_METRICS",
    "EpochProgress",
    "EvalResult",
    "FitHooks",
    "FitResult",
    "FitStart",
    "RunSaver",
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
    :func:`~cnnkit.scoring.metrics` of :func:`~cnnkit.scoring.score` with
    ``settings`` (the run's device, precision, TTA and layout; None: float32 on the CPU).

    The loss is the validation loss (plain cross-entropy of the TTA-combined logits). Under
    torchrun each rank scores its shard and the sums are added up over the ranks.
    """
    return metrics(score(model, loader, settings), num_classes, reduce=all_reduce_sum)


@dataclass
class FitHooks:
    """How :func:`fit` talks to its caller; every one optional.

    Attributes:
        log: receives one summary line per epoch (and notes).
        progress: show a progress bar with ETA (only on a terminal).
        on_epoch_end: called with each epoch's metrics row, after its files are written.
        should_stop: asked after every optimizer step and epoch; True raises :class:`TrainingStopped` there, after
            ``last.pt`` recorded the position (mid-epoch, as ``checkpoint_every_steps``); one process only.
    """

    log: Callable[[str], None] = print
    progress: bool = True
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None
    should_stop: Callable[[], bool] | None = None


@dataclass
class FitStart:
    """Where a :func:`fit` begins in its run (the default: a run's first and only phase, from scratch).

    Attributes:
        previous: the result of an earlier phase of the same run (head-only epochs before fine-tuning): epochs
            are numbered on from it, its history is kept in ``metrics.csv`` and its best metric must be beaten.
        total_epochs: epochs of the whole run, for progress lines (None: this fit's ``cfg.epochs`` and those before).
        resume: the ``last.pt`` :class:`~cnnkit.checkpoint.Checkpoint` of this same run and phase: weights,
            optimizer, schedule, scaler, history, RNG and epoch position are restored; training ends as it would
            have uninterrupted.
    """

    previous: FitResult | None = None
    total_epochs: int | None = None
    resume: Checkpoint | None = None


def fit(
    model: nn.Module,
    loaders: Sequence,
    cfg: TrainConfig,
    *,
    num_classes: int,
    class_weights: torch.Tensor | None = None,
    saver: RunSaver | None = None,
    hooks: FitHooks | None = None,
    start: FitStart | None = None,
) -> FitResult:
    """Train ``model`` for ``cfg.epochs`` epochs, validating after each.

    Args:
        model: any classifier returning logits ``[B, num_classes]``.
        loaders: ``(train, val)`` or a :class:`~cnnkit.data.spec.Loaders`; each yields ``(images, labels)``.
        cfg: optimizer, schedule, precision, device, checkpointing and stopping settings. ``best.pt`` is the
            epoch with the best ``cfg.select_metric``; a tie goes to the lower validation loss (:func:`improves`).
        num_classes: number of classes (for the confusion matrix).
        class_weights: ``[num_classes]`` weights of the training loss (``--balance weights``); like label smoothing
            they shape the training loss only (validation: :func:`~cnnkit.scoring.validation_loss`).
        saver: writes the run's files into its run folder (``RunSaver(RunFolder(path), describe)``); None:
            nothing is written. Its ``save_every`` defaults to ``cfg.save_every``.
        hooks: the log, the progress bar, the per-epoch callback and the stop request (:class:`FitHooks`).
        start: an earlier phase to continue, or a ``last.pt`` to resume (:class:`FitStart`).

    Returns:
        The per-epoch history and the best validation metric; the model keeps the last epoch's weights, on
        ``cfg.device``.
    """
    hooks, start = hooks or FitHooks(), start or FitStart()
    if saver is not None and saver.save_every is None and cfg.save_every is not None:
        saver = dataclasses.replace(saver, save_every=cfg.save_every)
    select = metric_column(cfg.select_metric)
    train_loader, val_loader = loaders[0], loaders[1]
    run = _set_up(model, train_loader, num_classes, cfg, class_weights, hooks)
    result = start.previous or FitResult(run_dir=saver.folder.path if saver is not None else None)
    result.stale = 0  # a phase starts counting afresh (a resumed one takes the checkpoint's count)
    run.saver, run.result = saver, result
    first, last = len(result.history) + 1, len(result.history) + cfg.epochs
    partial = None
    if start.resume is not None:
        first, partial = _resume(start.resume, run.state, result, cfg)
    run.total = start.total_epochs or last
    for epoch in range(first, last + 1):
        lr = start.resume.training.in_epoch_lr if partial is not None else run.state.optimizer.param_groups[0]["lr"]
        timer = StepTimer(run.device) if epoch - first < cfg.profile else None
        runner = run.plan.module(run.state.model)  # eager or compiled, for this whole epoch
        train = _train(run, runner, (train_loader, val_loader), epoch, lr, partial, timer)
        partial = None
        result.steps += len(train_loader)
        run.plan.observe(train["seconds"], last - epoch)
        val = _validate(run, runner, val_loader, num_classes, cfg.tta)
        if timer is not None:
            hooks.log(timer.table(epoch, train["images"], val.seconds))
        row = _metrics_row(epoch, lr, train, val)
        improved = _record(result, row, select)
        hooks.log(_summary_line(row, run.total, improved and epoch > 1))
        if saver is not None:
            saver.save_epoch(run.state, result, improved)
        if hooks.on_epoch_end is not None:
            hooks.on_epoch_end(row)
        if _stops_after(epoch, last, cfg, hooks, result):
            break
    return result


def _stops_after(epoch: int, last: int, cfg: TrainConfig, hooks: FitHooks, result: FitResult) -> bool:
    """True when training ends early after ``epoch`` (``cfg.patience`` epochs without improvement:
    ``result.stopped_early``). Raises :class:`TrainingStopped` when ``should_stop()`` says so
    before the last epoch (its checkpoints are written)."""
    if cfg.patience is not None and result.stale >= cfg.patience:
        hooks.log(f"early stop: {cfg.select_metric} did not improve for {cfg.patience} epochs")
        result.stopped_early = True
        return True
    if hooks.should_stop is not None and epoch < last and hooks.should_stop():
        raise TrainingStopped(epoch)
    return False


@dataclass
class _Run:
    """The pieces of one :func:`fit` call that are built once, before the first epoch.

    Attributes:
        state: what the steps change (the model wrapped for DDP under torchrun).
        cfg: the training settings.
        options: how each epoch's steps run (device, precision, mixer...); its ``epoch`` is set per epoch.
        scoring: how validation scores (:meth:`ScoringSettings.for_training`).
        plan: which module (eager or compiled) each epoch runs.
        loss_fn: the training loss (label smoothing, class weights).
        hooks: the caller's log, progress flag and stop request.
        saver: what writes the run's files (None: nothing).
        result: the record of the epochs so far.
        total: epochs of the whole run, for progress lines.
    """

    state: TrainState
    cfg: TrainConfig
    options: EpochOptions
    scoring: ScoringSettings
    plan: CompilePlan
    loss_fn: nn.Module
    hooks: FitHooks
    saver: RunSaver | None = None
    result: FitResult = field(default_factory=FitResult)
    total: int = 0

    @property
    def device(self) -> torch.device:
        return self.options.device


def _set_up(model: nn.Module, train_loader, num_classes: int, cfg: TrainConfig, class_weights: torch.Tensor | None,
            hooks: FitHooks) -> _Run:  # fmt: skip
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
    model = _data_parallel(model, device, cfg.sync_bn, hooks.log)
    plan = CompilePlan(cfg.compile, device, cfg.deterministic, hooks.log, dtype=dtype)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, math.ceil(len(train_loader) / cfg.accumulate))  # per optimizer step
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    state = TrainState(model, optimizer, scheduler, scaler, WeightEma(model, cfg.ema) if cfg.ema else None)
    options = EpochOptions(device, dtype, cfg.grad_clip, cfg.accumulate, channels_last,
                           build_mixer(num_classes, cfg.mixup, cfg.cutmix, cfg.mix_prob), cfg.log_every,
                           cfg.checkpoint_every_steps)  # fmt: skip
    weights = class_weights.to(device=device, dtype=torch.float32) if class_weights is not None else None
    loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)
    return _Run(state, cfg, options, scoring, plan, loss_fn, hooks)


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
            cfg: TrainConfig) -> tuple[int, EpochProgress | None]:  # fmt: skip
    """:func:`~cnnkit.engine.run_state.restore` ``ckpt``; returns (first epoch, progress into that epoch or None)."""
    first, partial = restore(ckpt, state, result)
    ranks = current()
    if not ranks.is_main:  # the checkpoint holds rank 0's random state: the others draw their own
        seed_everything(cfg.seed + ranks.rank + 1_000_003 * first, cfg.deterministic)
    return first, partial


def _train(run: _Run, runner: nn.Module, loaders: Sequence, epoch: int, lr: float, partial: EpochProgress | None,
           timer: StepTimer | None) -> dict[str, float]:  # fmt: skip
    """Train epoch ``epoch`` (1-based, starting at ``lr``) with ``runner``: the loaders are told the
    epoch (each epoch's order and augmentation come from it), a progress bar shows it, ``partial``
    continues an interrupted one; returns :func:`train_one_epoch`'s figures.

    Raises:
        NonFiniteLoss: the loss became nan/inf; the message says where and what to try.
    """
    for loader in loaders:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch - 1)
    train_loader = loaders[0]
    bar = tqdm(total=len(train_loader), desc=f"epoch {epoch}/{run.total}", unit="batch",
               leave=False, dynamic_ncols=True, disable=None if run.hooks.progress else True)  # fmt: skip
    hooks = EpochHooks(bar, _mid_epoch_saver(run, lr), run.hooks.should_stop, timer)
    try:
        train = train_one_epoch(dataclasses.replace(run.state, model=runner), train_loader, run.loss_fn,
                                dataclasses.replace(run.options, epoch=epoch), hooks, partial)  # fmt: skip
    except NonFiniteLoss as bad:  # the epoch knows where; the run's settings say what to try
        raise NonFiniteLoss(bad.epoch, bad.step, bad.value, _non_finite_advice(run.cfg, run.options.dtype)) from None
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


def _mid_epoch_saver(run: _Run, lr: float) -> Callable[[EpochProgress], None] | None:
    """What writes ``last.pt`` in the middle of the epoch after ``result``'s (``checkpoint_every_steps``),
    recording how far it got and its starting ``lr``; None when the run writes nothing."""
    saver = run.saver
    if saver is None:
        return None
    result = run.result

    def save(done: EpochProgress) -> None:
        saver.save_progress(run.state, result, done, lr)

    return save


def _record(result: FitResult, row: dict[str, Any], select: str) -> bool:
    """Add the epoch's ``row`` to the history and make it the best epoch when it improves on
    ``select`` (``result.stale`` counts the epochs without improvement); returns whether it improved."""
    result.history.append(row)
    if not improves(row, best_row(result.history, result.best_epoch, result.best_metric, select), select):
        result.stale += 1
        return False
    result.best_metric, result.best_epoch, result.stale = row[select], row["epoch"], 0
    return True


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

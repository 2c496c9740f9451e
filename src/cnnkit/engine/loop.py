"""The training loop: three plain functions you can read on one screen.

``train_one_epoch`` runs the optimizer over one pass of the train loader, ``evaluate``
measures loss/top-1/top-5 and the confusion matrix, and ``fit`` alternates them, logs one
summary line per epoch, writes ``metrics.csv`` and saves ``last.pt``/``best.pt``.
The only callback is ``on_epoch_end(row)``, called once per epoch after the checkpoints
are written.
"""

from __future__ import annotations

import csv
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

from cnnkit.config import TrainConfig
from cnnkit.engine.checkpoint import clean_state_dict, rng_state, save_checkpoint, unwrap
from cnnkit.engine.device import amp_dtype, autocast, resolve_device, seed_everything
from cnnkit.engine.optim import build_optimizer, build_scheduler
from cnnkit.engine.tta import tta_logits
from cnnkit.errors import UsageError
from cnnkit.evaluation.metrics import accuracy, confusion_matrix, per_class_accuracy, topk_correct

# Metrics where a lower value is better; every other select_metric is maximised.
LOWER_IS_BETTER = {"val_loss"}
SELECT_METRICS = ("val_acc", "val_top5", "val_loss")


@dataclass
class EvalResult:
    """Loss, accuracy and the confusion matrix of one pass over a loader."""

    loss: float
    acc: float
    top5: float | None
    confusion: torch.Tensor
    count: int
    seconds: float

    @property
    def per_class_acc(self) -> list[float]:
        return per_class_accuracy(self.confusion).tolist()


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
) -> dict[str, float]:
    """One pass over ``loader``; returns mean ``loss``, ``acc``, ``images`` and ``seconds``."""
    model.train()
    start = time.perf_counter()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for step, (images, labels) in enumerate(loader, 1):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with autocast(device, dtype):
            logits = model(images)  # [B, num_classes]
            loss = loss_fn(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        batch = labels.shape[0]
        loss_sum += loss.detach().float() * batch
        correct += (logits.detach().argmax(1) == labels).sum()
        seen += batch
        if progress is not None:
            progress.update(1)
            if step % log_every == 0:
                progress.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.2%}")
    seconds = time.perf_counter() - start
    return {"loss": loss_sum.item() / max(seen, 1), "acc": correct.item() / max(seen, 1), "images": seen, "seconds": seconds}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    num_classes: int,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    loss_fn: nn.Module | None = None,
    tta: str = "none",
) -> EvalResult:
    """Loss, top-1, top-5 (when there are more than 5 classes) and the confusion matrix.

    ``tta`` averages the logits over test-time views (:mod:`cnnkit.engine.tta`).
    """
    device = torch.device(device)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    model.eval()
    start = time.perf_counter()
    loss_sum, top5, count = 0.0, 0, 0
    matrix = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with autocast(device, dtype):
            logits = tta_logits(model, images, tta)
        logits = logits.float()
        loss_sum += float(loss_fn(logits, labels)) * labels.shape[0]
        top5 += topk_correct(logits, labels, 5)
        matrix += confusion_matrix(logits.argmax(1).cpu(), labels.cpu(), num_classes)
        count += labels.shape[0]
    return EvalResult(
        loss=loss_sum / max(count, 1),
        acc=accuracy(matrix),
        top5=top5 / max(count, 1) if num_classes > 5 else None,
        confusion=matrix,
        count=count,
        seconds=time.perf_counter() - start,
    )


def fit(
    model: nn.Module,
    loaders: Sequence,
    cfg: TrainConfig,
    *,
    num_classes: int,
    run_dir: str | Path | None = None,
    meta: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    previous: FitResult | None = None,
    total_epochs: int | None = None,
) -> FitResult:
    """Train ``model`` for ``cfg.epochs`` epochs, validating after each.

    Args:
        model: any classifier returning logits ``[B, num_classes]``.
        loaders: ``(train, val)`` or a :class:`~cnnkit.data.spec.Loaders`; each yields
            ``(images, labels)`` batches.
        cfg: optimizer, schedule, precision, device, checkpointing and stopping settings.
        num_classes: number of classes (for the confusion matrix).
        run_dir: where ``metrics.csv`` and ``checkpoints/`` go (None: nothing is written).
        meta: extra checkpoint keys that make it self-describing (model description,
            class names, preprocessing, config); see :mod:`cnnkit.engine.checkpoint`.
        log: receives one summary line per epoch.
        progress: show a progress bar with ETA (only on a terminal).
        on_epoch_end: called with each epoch's metrics row, after checkpoints are saved.
        previous: the result of an earlier phase of the same run (head-only epochs
            before fine-tuning): epochs are numbered on from it, its history is kept in
            ``metrics.csv`` and its best metric must be beaten to replace ``best.pt``.
        total_epochs: epochs of the whole run, for progress lines (None: ``cfg.epochs``).

    Returns:
        The per-epoch history and the best validation metric; the model is left with the
        last epoch's weights, on ``cfg.device``.
    """
    if cfg.select_metric not in SELECT_METRICS:
        raise UsageError(f"unknown select metric {cfg.select_metric!r}; valid: {', '.join(SELECT_METRICS)}")
    train_loader, val_loader = loaders[0], loaders[1]
    if len(train_loader) == 0:
        raise UsageError("the training set is smaller than one batch; lower --batch-size or add data")
    seed_everything(cfg.seed, cfg.deterministic)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    dtype = amp_dtype(cfg.amp, device)
    model.to(device)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, len(train_loader))
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    run_dir = Path(run_dir) if run_dir is not None else None
    result = previous if previous is not None else FitResult(run_dir=run_dir)
    first = len(result.history) + 1
    total = total_epochs or first - 1 + cfg.epochs
    stale = 0
    step = result.steps
    for epoch in range(first, first + cfg.epochs):
        for loader in (train_loader, val_loader):
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch - 1)
        bar = tqdm(total=len(train_loader), desc=f"epoch {epoch}/{total}", unit="batch",
                   leave=False, dynamic_ncols=True, disable=None if progress else True)  # fmt: skip
        lr = optimizer.param_groups[0]["lr"]
        train = train_one_epoch(model, train_loader, optimizer, scheduler, loss_fn, device=device, dtype=dtype,
                                scaler=scaler, grad_clip=cfg.grad_clip, progress=bar, log_every=cfg.log_every)  # fmt: skip
        bar.close()
        step += len(train_loader)
        result.steps = step
        val = evaluate(model, val_loader, num_classes, device=device, dtype=dtype, loss_fn=loss_fn, tta=cfg.tta)
        row = _metrics_row(epoch, lr, train, val)
        result.history.append(row)
        improved = _improved(row[cfg.select_metric], result.best_metric, cfg.select_metric)
        if improved:
            result.best_metric, result.best_epoch, stale = row[cfg.select_metric], epoch, 0
        else:
            stale += 1
        log(_summary_line(row, total, improved and epoch > 1))
        if run_dir is not None:
            _write_metrics(run_dir / "metrics.csv", result.history)
            state = _checkpoint(model, optimizer, scheduler, scaler, epoch, step, row, result, meta)
            save_checkpoint(state, run_dir / "checkpoints" / "last.pt")
            if improved:
                save_checkpoint(state, run_dir / "checkpoints" / "best.pt")
            if cfg.save_every and epoch % cfg.save_every == 0:
                save_checkpoint(state, run_dir / "checkpoints" / f"epoch_{epoch:03d}.pt")
        if on_epoch_end is not None:
            on_epoch_end(row)
        if cfg.patience is not None and stale >= cfg.patience:
            log(f"early stop: {cfg.select_metric} did not improve for {cfg.patience} epochs")
            result.stopped_early = True
            break
    return result


def _metrics_row(epoch: int, lr: float, train: dict[str, float], val: EvalResult) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "train_loss": round(train["loss"], 6),
        "train_acc": round(train["acc"], 6),
        "val_loss": round(val.loss, 6),
        "val_acc": round(val.acc, 6),
        "val_top5": None if val.top5 is None else round(val.top5, 6),
        "lr": lr,
        "epoch_time_s": round(train["seconds"] + val.seconds, 3),
        "train_images_per_s": round(train["images"] / max(train["seconds"], 1e-9), 1),
    }


def _improved(value: float | None, best: float | None, metric: str) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None:
        return True
    return value < best if metric in LOWER_IS_BETTER else value > best


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


def _checkpoint(model, optimizer, scheduler, scaler, epoch, step, row, result, meta) -> dict[str, Any]:
    return {
        **(meta or {}),
        "state_dict": clean_state_dict(unwrap(model).state_dict()),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,
        "step": step,
        "rng": rng_state(),
        "metrics": row,
        "best_metric": result.best_metric,
        "best_epoch": result.best_epoch,
    }

"""The learning-rate range test (Leslie Smith's "LR finder", as fastai runs it).

Train for up to ``steps`` batches while the learning rate grows exponentially from
``start_lr`` to ``end_lr``, record the smoothed loss at each rate, stop once the loss has
clearly diverged, and suggest a rate from the two rules of thumb fastai reports: the
steepest descent of the smoothed curve (on a log-lr axis, before its minimum) and a tenth
of the rate at the minimum; cnnkit suggests the lower of the two. With small noisy
batches the steepest descent sits right at the cliff (mnist-lenet, SGD at batch 4: 1.7e-2,
which trains to 34 % in an epoch where 4e-3 reaches 94 %), so the lower rule wins there.
The model and the loader's epoch counter are left exactly as they were: the sweep trains
a copy.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from cnnkit.config import TrainConfig
from cnnkit.device import amp_dtype, autocast
from cnnkit.engine.optim import build_optimizer
from cnnkit.errors import CnnkitError, UsageError

SMOOTHING = 0.05  # weight of the newest loss in the running average (fastai uses 0.02-0.05)
DIVERGE = 4.0  # stop when the smoothed loss exceeds this multiple of the best one
MIN_IMAGES = 3000  # a sweep sees at least this many training images (see default_steps)
SKIP_START = 10  # steps ignored when reading the curve (fastai's skip_start)
WEAK_FALL = 0.02  # a sweep whose loss fell by less than this fraction gives a doubtful suggestion


@dataclass
class LrFindResult:
    """The sweep and its reading.

    Attributes:
        lrs: learning rate of each step.
        losses: smoothed training loss after each step.
        suggestion: the suggested rate: the lower of ``steepest_lr`` and ``min_loss_lr / 10``.
        min_loss_lr: the rate at the lowest smoothed loss (training there is already too hot).
        diverged: the sweep stopped early because the loss blew up.
        steepest_lr: the rate of steepest descent of the smoothed loss (before its minimum).
        fall: how far the smoothed loss fell from its start to its minimum, as a fraction
            (below :data:`WEAK_FALL` the model hardly learnt during the sweep and the
            suggestion is a guess).
    """

    lrs: list[float]
    losses: list[float]
    suggestion: float
    min_loss_lr: float
    diverged: bool
    steepest_lr: float | None = None
    fall: float | None = None

    @property
    def doubtful(self) -> bool:
        """The loss hardly fell during the sweep (see ``fall``)."""
        return self.fall is not None and self.fall < WEAK_FALL

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def default_steps(batch_size: int) -> int:
    """Steps of a sweep: 100 (fastai's), or enough to see about 3,000 images when batches
    are small (at batch 4, 100 steps are too few images for the loss to move at all)."""
    return min(1000, max(100, math.ceil(MIN_IMAGES / max(batch_size, 1))))


def lr_range_test(model: nn.Module, loader: Iterable, cfg: TrainConfig, *, device: torch.device,
                  start_lr: float = 1e-7, end_lr: float = 10.0, steps: int | None = None,
                  progress: bool = True) -> LrFindResult:  # fmt: skip
    """Sweep the learning rate on a copy of ``model``; see the module docstring.

    ``cfg`` supplies the optimizer (its type, momentum, weight decay, parameter groups),
    label smoothing and precision; its learning rate and schedule are ignored. ``steps``
    defaults to :func:`default_steps` of the loader's batch size. ``progress``: a bar of
    the steps with the current lr and loss (on a terminal only).

    Raises:
        UsageError: a bad range or step count.
        CnnkitError: the loss was not finite from the first step (data or model broken).
    """
    steps = steps or default_steps(getattr(loader, "batch_size", 64))
    if not 0 < start_lr < end_lr or steps < 5:
        raise UsageError(f"the LR sweep needs 0 < start ({start_lr:g}) < end ({end_lr:g}) and at least 5 steps")
    trial = copy.deepcopy(model).to(device).train()
    optimizer = build_optimizer(trial, dataclasses.replace(cfg, lr=start_lr, lookahead=False))
    base = [group["lr"] / start_lr for group in optimizer.param_groups]  # each group's multiple of the base lr
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    dtype = amp_dtype(cfg.amp, device, training=True, deterministic=cfg.deterministic)
    factor = (end_lr / start_lr) ** (1 / (steps - 1))
    lrs, losses, average, best, diverged = [], [], 0.0, math.inf, False
    bar = tqdm(total=steps, desc="lr sweep", unit="step", leave=False, dynamic_ncols=True,
               disable=None if progress else True)  # fmt: skip
    try:
        for step, (images, labels) in enumerate(_batches(loader, steps)):
            lr = start_lr * factor**step
            for group, multiple in zip(optimizer.param_groups, base, strict=True):
                group["lr"] = lr * multiple
            with autocast(device, dtype):
                loss = loss_fn(trial(images.to(device)), labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = loss.detach().item()
            if not math.isfinite(value):
                if not lrs:
                    raise CnnkitError(f"the loss is {value} at the first step of the LR sweep; "
                                      "check the data and model")  # fmt: skip
                diverged = True
                break
            average = SMOOTHING * value + (1 - SMOOTHING) * average
            smoothed = average / (1 - (1 - SMOOTHING) ** (step + 1))  # bias-corrected running mean
            lrs.append(lr)
            losses.append(smoothed)
            best = min(best, smoothed)
            bar.update()
            bar.set_postfix(lr=f"{lr:.1e}", loss=f"{smoothed:.3f}", refresh=False)
            if step > 5 and smoothed > DIVERGE * best:
                diverged = True
                break
    finally:
        bar.close()
    return read_sweep(lrs, losses, diverged)


def read_sweep(lrs: list[float], losses: list[float], diverged: bool = False) -> LrFindResult:
    """The suggestion from a recorded sweep: the lower of the steepest descent and a tenth
    of the minimum, both read after the first :data:`SKIP_START` steps (fastai skips them
    too: the running average of a handful of losses is noise, and an early dip would put
    the "minimum" at the very first rates)."""
    skip = SKIP_START if len(losses) > 2 * SKIP_START else 0
    tail_lrs, tail_losses = lrs[skip:], losses[skip:]
    steepest = steepest_descent(tail_lrs, tail_losses)
    lowest = tail_lrs[tail_losses.index(min(tail_losses))]
    return LrFindResult(lrs, losses, min(steepest, lowest / 10), lowest, diverged, steepest,
                        fall=(tail_losses[0] - min(tail_losses)) / max(abs(tail_losses[0]), 1e-12))  # fmt: skip


def steepest_descent(lrs: list[float], losses: list[float]) -> float:
    """The learning rate where the loss falls fastest per decade, before the minimum.

    The slope is taken over a window of about a fifth of a decade (finite differences of a
    noisy curve over single steps pick noise)."""
    lowest = losses.index(min(losses))
    if lowest < 2:
        return lrs[lowest]
    logs = [math.log10(lr) for lr in lrs]
    width = max(1, round(0.2 / max(logs[1] - logs[0], 1e-12)))
    slopes = [(losses[i + width] - losses[i]) / (logs[i + width] - logs[i])
              for i in range(0, max(1, lowest - width + 1))]  # fmt: skip
    i = min(range(len(slopes)), key=slopes.__getitem__)
    return lrs[min(i + width // 2, len(lrs) - 1)]


def _batches(loader: Iterable, steps: int) -> Iterator:
    """``steps`` batches, going round the loader again if one epoch is shorter."""
    produced = 0
    while produced < steps:
        before = produced
        for batch in loader:
            yield batch
            produced += 1
            if produced == steps:
                return
        if produced == before:
            raise CnnkitError("the training loader is empty")


def plot(result: LrFindResult, title: str = "learning-rate range test"):
    """The loss-vs-lr curve with the suggestion marked, as a matplotlib ``Figure``."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=120)
    axes = figure.add_subplot()
    axes.plot(result.lrs, result.losses, color="tab:blue")
    axes.set_xscale("log")
    axes.axvline(result.suggestion, color="tab:red", linestyle="--", label=f"suggested lr {result.suggestion:.2e}")
    if result.steepest_lr is not None and result.steepest_lr != result.suggestion:
        axes.axvline(
            result.steepest_lr, color="tab:orange", linestyle="-.", label=f"steepest descent {result.steepest_lr:.2e}"
        )
    axes.axvline(result.min_loss_lr, color="tab:gray", linestyle=":", label=f"lowest loss at {result.min_loss_lr:.2e}")
    axes.set_xlabel("learning rate (log scale)")
    axes.set_ylabel("training loss (smoothed)")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    return figure

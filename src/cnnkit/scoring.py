"""The one scoring path: the logits of a loader, and every number computed from them.

:func:`score` runs a model over a loader once, in eval mode without gradients, with the
run's test-time augmentation (:mod:`cnnkit.tta`), precision and device, and keeps
the combined float32 logits and the labels of every sample on the CPU. Validation during
training, ``cnnkit eval``, the report and best-epoch selection all take their numbers
from a :class:`Scores` through :func:`metrics`, so they cannot disagree.

Validation loss has one definition, :func:`validation_loss`: the plain cross-entropy of
the combined logits (no label smoothing, no class weights), whatever loss trained them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn import functional as F

from cnnkit.config import RunConfig, TrainConfig
from cnnkit.device import amp_dtype, autocast, to_layout, use_channels_last
from cnnkit.evaluation.metrics import (
    accuracy,
    confusion_matrix,
    per_class_accuracy,
    precision_recall_f1,
    topk_correct,
)
from cnnkit.tta import check_tta, tta_logits

Forward = Callable[[torch.Tensor], torch.Tensor]  # a model or a predictor backend: inputs -> logits [B, K]


@dataclass(frozen=True)
class ScoringSettings:
    """How a run's model is scored: the one object every scoring pass takes.

    Attributes:
        device: where the model runs and batches go.
        dtype: autocast precision (None: float32).
        tta: the test-time augmentation (:mod:`cnnkit.tta`).
        channels_last: image batches (and the model, see :meth:`place`) in channels-last
            memory format, the layout the run validated in.
    """

    device: torch.device = torch.device("cpu")
    dtype: torch.dtype | None = None
    tta: str = "none"
    channels_last: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", torch.device(self.device))
        check_tta(self.tta)

    @classmethod
    def for_run(cls, cfg: RunConfig, device: torch.device | str, tta: str | None = None) -> ScoringSettings:
        """The settings of a run on ``device``: its ``train.amp`` precision for evaluation, its
        ``train.tta`` (or ``tta`` when given: ``cnnkit eval --tta``) and its channels-last choice.

        Raises:
            UsageError: an unknown amp, tta or channels-last mode.
        """
        return cls.for_training(cfg.train, device, tta)

    @classmethod
    def for_training(cls, cfg: TrainConfig, device: torch.device | str, tta: str | None = None) -> ScoringSettings:
        """:meth:`for_run` from the ``train`` part of a config (what the training loop holds)."""
        device = torch.device(device)
        return cls(device, amp_dtype(cfg.amp, device), cfg.tta if tta is None else tta,
                   use_channels_last(cfg.channels_last, device))  # fmt: skip

    def with_tta(self, tta: str) -> ScoringSettings:
        """The same settings with other test-time views (``Predictor.predict(tta=...)``)."""
        return self if tta == self.tta else replace(self, tta=tta)  # checked by __post_init__

    def place(self, model: nn.Module) -> nn.Module:
        """``model`` moved in place to the device, in the memory layout batches arrive in."""
        return to_layout(model, self.device, self.channels_last)

    def logits(self, model: nn.Module | Forward, inputs: torch.Tensor) -> torch.Tensor:
        """Float32 logits ``[B, K]`` of one batch: moved to the device (channels-last images when
        asked), under autocast, the test-time views combined. No ``no_grad`` here: :func:`score`
        adds it, FGSM needs the gradient."""
        inputs = to_device(inputs, self.device, self.channels_last)
        with autocast(self.device, self.dtype):
            return tta_logits(model, inputs, self.tta)


@dataclass
class Scores:
    """One scoring pass over a loader.

    Attributes:
        logits: ``[N, K]`` float32 on the CPU, the TTA views already combined; row ``i``
            is the loader's ``i``-th sample (its order, unshuffled for evaluation loaders).
        labels: ``[N]`` int64 true classes on the CPU.
        tta: the test-time augmentation the logits were computed with.
        seconds: wall time of the pass.
    """

    logits: torch.Tensor
    labels: torch.Tensor
    tta: str = "none"
    seconds: float = 0.0

    @property
    def count(self) -> int:
        return int(self.labels.shape[0])

    @property
    def loss(self) -> float:
        """The validation loss of these logits (:func:`validation_loss`)."""
        return validation_loss(self.logits, self.labels)

    def losses(self) -> torch.Tensor:
        """Per-sample cross-entropy ``[N]`` (what the top-losses gallery ranks)."""
        return F.cross_entropy(self.logits, self.labels, reduction="none")


def validation_loss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """THE validation loss: mean plain cross-entropy of ``logits [N, K]`` against ``labels [N]``
    (no label smoothing, no class weights); NaN for no samples."""
    if labels.numel() == 0:
        return float("nan")
    return float(F.cross_entropy(logits.float(), labels.long()))


@torch.no_grad()
def score(model: nn.Module | Forward, loader: Iterable, settings: ScoringSettings | None = None) -> Scores:
    """Logits and labels of every batch of ``loader``, scored as ``settings`` say.

    The model runs in eval mode without gradients, under autocast at ``settings.dtype`` on
    ``settings.device`` (None: float32 on the CPU), once per view of ``settings.tta``; the
    views' logits are combined by the one rule of :func:`cnnkit.tta.combine_views`.
    Under torchrun each rank scores its own shard of the loader. The model is not moved:
    place it with :meth:`ScoringSettings.place`.

    Args:
        model: a classifier returning logits ``[B, K]`` (or a predictor backend).
        loader: yields ``(inputs, labels)`` batches (images ``[B, C, H, W]`` or features).
        settings: how to score (None: ``ScoringSettings()``, float32 on the CPU, no TTA).
    """
    settings = settings or ScoringSettings()
    if isinstance(model, nn.Module):
        model.eval()
    start = time.perf_counter()
    logits, labels = [], []
    for inputs, targets in loader:
        logits.append(settings.logits(model, inputs))  # float32 [B, K], stays on the device
        labels.append(targets.reshape(-1))
    tta = settings.tta
    if not logits:
        return Scores(torch.zeros(0, 0), torch.zeros(0, dtype=torch.long), tta, time.perf_counter() - start)
    # one copy to the host at the end: a per-batch .cpu() would stall a GPU on every batch
    return Scores(torch.cat(logits).cpu(), torch.cat(labels).long().cpu(), tta, time.perf_counter() - start)


def to_device(images: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """A batch on ``device`` (asynchronously from pinned memory); image batches
    ``[B, C, H, W]`` in channels-last memory format when asked (feature batches stay as they are)."""
    if channels_last and images.dim() == 4:
        return images.to(device, non_blocking=True, memory_format=torch.channels_last)
    return images.to(device, non_blocking=True)


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

    @property
    def balanced_acc(self) -> float:
        """Mean recall over the classes present (scikit-learn's ``balanced_accuracy_score``)."""
        recalls = per_class_accuracy(self.confusion)
        return float(recalls.nanmean()) if not recalls.isnan().all() else float("nan")

    @property
    def macro_f1(self) -> float:
        """F1 averaged over all classes, each counting the same."""
        return precision_recall_f1(self.confusion)["macro"]["f1"]


def metrics(
    scores: Scores, num_classes: int, *, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> EvalResult:  # fmt: skip
    """Loss (:func:`validation_loss`), top-1, top-5 (more than 5 classes) and the confusion
    matrix of ``scores``.

    ``reduce`` adds up the sums over processes before the ratios are taken (the training
    loop passes ``all_reduce_sum`` under torchrun, where each rank scored a shard).
    """
    reduce = reduce or (lambda value: value)
    logits, labels = scores.logits, scores.labels
    matrix = torch.zeros(num_classes, num_classes, dtype=torch.long)
    loss_sum = top5 = 0.0
    if scores.count:
        matrix = confusion_matrix(logits.argmax(1), labels, num_classes)
        loss_sum = float(F.cross_entropy(logits, labels, reduction="sum"))
        top5 = float(topk_correct(logits, labels, 5))
    matrix = reduce(matrix)
    loss_sum, top5, count = reduce(torch.tensor([loss_sum, top5, scores.count], dtype=torch.float64)).tolist()
    return EvalResult(
        loss=loss_sum / count if count else float("nan"),
        acc=accuracy(matrix),
        top5=top5 / max(count, 1) if num_classes > 5 else None,
        confusion=matrix,
        count=int(count),
        seconds=scores.seconds,
    )


__all__ = ["EvalResult", "Scores", "ScoringSettings", "metrics", "score", "validation_loss"]

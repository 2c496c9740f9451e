"""Classification metrics as pure tensor functions (no state, no I/O)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, k: int) -> int:
    """How many rows of ``logits [N, K]`` have the target among their top ``k`` scores."""
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices  # [N, k]
    return int((top == targets.view(-1, 1)).any(dim=1).sum())


def confusion_matrix(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[num_classes, num_classes]`` int64 counts; rows are true classes, columns predictions."""
    flat = targets.long() * num_classes + preds.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_accuracy(matrix: torch.Tensor) -> torch.Tensor:
    """Recall of each class (diagonal / row sum); NaN for classes with no examples."""
    support = matrix.sum(dim=1).double()
    return matrix.diag().double() / support.where(support > 0, torch.tensor(float("nan"), dtype=torch.float64))


def accuracy(matrix: torch.Tensor) -> float:
    """Overall accuracy from a confusion matrix."""
    total = int(matrix.sum())
    return float(matrix.diag().sum()) / total if total else float("nan")


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` with 0 where ``den`` is 0 (scikit-learn's ``zero_division=0``)."""
    return torch.where(den > 0, num / torch.where(den > 0, den, 1), torch.zeros_like(num))


def precision_recall_f1(confusion: torch.Tensor) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support, with macro and weighted averages.

    Matches scikit-learn's ``classification_report(..., labels=range(C), zero_division=0)``:
    a class never predicted has precision 0, a class with no examples has recall 0, and
    the macro average runs over all ``C`` classes, present or not.

    Args:
        confusion: ``[C, C]`` counts, rows true classes and columns predictions, as
            :func:`confusion_matrix` builds it.

    Returns:
        ``{"precision", "recall", "f1"}``: float64 ``[C]`` tensors; ``"support"``: int64
        ``[C]`` (examples per true class); ``"macro"`` and ``"weighted"``: dicts of floats
        with keys ``precision``, ``recall``, ``f1`` (weighted by support; 0 when there are
        no examples at all).
    """
    matrix = confusion.double()
    tp = matrix.diag()  # [C]
    predicted = matrix.sum(dim=0)  # [C] column sums: how often each class was predicted
    support = matrix.sum(dim=1)  # [C] row sums: how many examples each class has
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    # 2tp / (2tp + fp + fn) equals 2PR / (P + R) and stays defined when P or R is 0/0.
    f1 = _safe_div(2 * tp, predicted + support)
    per_class = {"precision": precision, "recall": recall, "f1": f1}
    total = support.sum()  # scalar; 0 only for an empty matrix
    return {
        **per_class,
        "support": confusion.sum(dim=1).long(),
        "macro": {name: float(values.mean()) for name, values in per_class.items()},
        "weighted": {
            name: float(_safe_div((values * support).sum(), total)) for name, values in per_class.items()
        },
    }


@dataclass
class CalibrationResult:
    """Top-1 calibration in equal-width confidence bins.

    Attributes:
        ece: expected calibration error, ``sum_b |acc_b - conf_b| * n_b / N`` (NaN for N = 0).
        bin_edges: float64 ``[bins + 1]`` from 0 to 1; bin ``b`` holds ``(edge_b, edge_b+1]``
            (the first bin also holds confidence 0).
        bin_confidence: float64 ``[bins]`` mean top-1 confidence per bin; NaN for empty bins.
        bin_accuracy: float64 ``[bins]`` fraction of correct top-1 predictions; NaN when empty.
        bin_count: int64 ``[bins]`` samples per bin.
    """

    ece: float
    bin_edges: torch.Tensor
    bin_confidence: torch.Tensor
    bin_accuracy: torch.Tensor
    bin_count: torch.Tensor


def expected_calibration_error(
    probs: torch.Tensor, labels: torch.Tensor, bins: int = 15
) -> CalibrationResult:
    """Expected calibration error of the top-1 prediction (Guo et al., 2017).

    Args:
        probs: ``[N, C]`` class probabilities (softmax outputs, not logits).
        labels: ``[N]`` true class indices.
        bins: number of equal-width confidence bins over ``[0, 1]``.

    Raises:
        ValueError: when ``probs`` is not 2-D, lies outside ``[0, 1]`` (logits passed by
            mistake) or does not have one row per label.
    """
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
        shapes = f"{tuple(probs.shape)} and {tuple(labels.shape)}"
        raise ValueError(f"expected probs [N, C] and labels [N], got {shapes}")
    if probs.numel() and (probs.min() < 0 or probs.max() > 1 + 1e-6):
        raise ValueError("probs must lie in [0, 1]; apply softmax to logits first")
    confidence, predicted = probs.double().max(dim=1)  # [N], [N]
    correct = (predicted == labels.to(predicted.device)).double()  # [N]
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64, device=confidence.device)
    # Inner edges with right=False put conf in (edge_b, edge_b+1] -> b; 0 falls in bin 0, 1 in the last.
    index = torch.bucketize(confidence, edges[1:-1])  # [N]
    count = torch.bincount(index, minlength=bins)  # [bins]
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=confidence.device)
    mean_conf = torch.bincount(index, weights=confidence, minlength=bins) / count.where(count > 0, 1)
    mean_acc = torch.bincount(index, weights=correct, minlength=bins) / count.where(count > 0, 1)
    n = confidence.shape[0]
    ece = float(((mean_acc - mean_conf).abs() * count).sum() / n) if n else math.nan
    return CalibrationResult(
        ece=ece,
        bin_edges=edges.cpu(),
        bin_confidence=mean_conf.where(count > 0, nan).cpu(),
        bin_accuracy=mean_acc.where(count > 0, nan).cpu(),
        bin_count=count.cpu(),
    )


def most_confused_pairs(confusion: torch.Tensor, k: int = 10) -> list[tuple[int, int, int]]:
    """The ``k`` largest off-diagonal cells of ``confusion [C, C]`` as ``(true, predicted, count)``.

    Sorted by count, descending; equal counts by true then predicted index. Cells with a
    count of 0 are not confusions and never appear, so fewer than ``k`` pairs may return.
    """
    off_diagonal = confusion.clone()
    off_diagonal.fill_diagonal_(0)
    true_idx, pred_idx = off_diagonal.nonzero(as_tuple=True)
    pairs = [(int(t), int(p), int(off_diagonal[t, p])) for t, p in zip(true_idx, pred_idx, strict=True)]
    return sorted(pairs, key=lambda pair: (-pair[2], pair[0], pair[1]))[:k]


class TopLosses(NamedTuple):
    """The samples a model got most wrong, worst first; every field is ``[k]``.

    ``exp(-losses)`` is the probability the model gave the true class.
    """

    indices: torch.Tensor  # int64 positions in the evaluated set
    losses: torch.Tensor  # float32 cross-entropy per sample
    predicted: torch.Tensor  # int64 top-1 class
    probability: torch.Tensor  # float32 probability of the predicted class


def top_losses(logits: torch.Tensor, labels: torch.Tensor, k: int) -> TopLosses:
    """The ``min(k, N)`` samples of ``logits [N, C]`` with the highest cross-entropy.

    Equal losses keep dataset order (lower index first), so the gallery is reproducible.
    """
    logits = logits.float()
    losses = F.cross_entropy(logits, labels.long(), reduction="none")  # [N]
    order = torch.sort(losses, descending=True, stable=True).indices[: min(k, losses.shape[0])]  # [k]
    probability, predicted = logits[order].softmax(dim=1).max(dim=1)  # [k], [k]
    return TopLosses(indices=order, losses=losses[order], predicted=predicted, probability=probability)

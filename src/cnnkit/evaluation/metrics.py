"""Classification metrics as pure tensor functions (no state, no I/O)."""

from __future__ import annotations

import torch


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

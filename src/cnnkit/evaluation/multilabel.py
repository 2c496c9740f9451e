"""Multi-label metrics as pure tensor functions (no state, no I/O).

Inputs are probabilities ``probs [N, K]`` (sigmoid outputs, not logits) and multi-hot
``targets [N, K]`` (1 where the image has the label); torch tensors or NumPy arrays. A label
is predicted when ``probs >= threshold`` for that label (one threshold per label, ``[K]``,
or one float for all).

* :func:`average_precision`: per-label AP and mAP, equal to scikit-learn's
  ``average_precision_score`` (computed here in torch: scikit-learn is not a dependency of
  ``cnnkit train``); mAP is the macro mean over labels with at least one positive.
* :func:`multilabel_scores`: mAP, precision, recall and F1 per label, macro and micro,
  exact-set accuracy and Hamming loss at given thresholds (scikit-learn's definitions,
  ``zero_division=0``).
* :func:`precision_recall_curve`: one label's curve (the report's figure), equal to scikit-learn's.
* :func:`tune_thresholds`: per-label thresholds that maximise F1 (or F-beta) on validation.
* :func:`label_sets` turns probabilities into label names; :func:`confused_label_pairs`
  counts "given a, predicted b that was not given".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cnnkit.errors import UsageError, unknown_name

F_BETAS: dict[str, float] = {"f1": 1.0, "f2": 2.0, "f0.5": 0.5}
"""Names :func:`tune_thresholds` accepts -> beta of the F-score it maximises."""

DEFAULT_THRESHOLD = 0.5


def _as_tensor(values: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(values).detach().cpu().double()
    if tensor.ndim != 2:
        raise ValueError(f"{name} must be [N, K], got shape {tuple(tensor.shape)}")
    return tensor


def _pair(probs: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    p, t = _as_tensor(probs, "probs"), _as_tensor(targets, "targets")
    if p.shape != t.shape:
        raise ValueError(f"probs {tuple(p.shape)} and targets {tuple(t.shape)} differ in shape")
    return p, t > 0.5


def _thresholds(thresholds: torch.Tensor | np.ndarray | float, k: int) -> torch.Tensor:
    values = torch.as_tensor(thresholds, dtype=torch.float64).flatten()
    if values.numel() == 1:
        values = values.expand(k)
    if values.numel() != k:
        raise ValueError(f"{values.numel()} thresholds for {k} labels")
    return values


def predict_sets(probs: torch.Tensor | np.ndarray, thresholds: torch.Tensor | np.ndarray | float) -> torch.Tensor:
    """Boolean ``[N, K]``: label ``k`` predicted for image ``i`` when ``probs[i, k] >= thresholds[k]``."""
    p = _as_tensor(probs, "probs")
    return p >= _thresholds(thresholds, p.shape[1])[None, :]


def _pr_curve(scores: torch.Tensor, positive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One label's curve at each distinct score, highest first: ``(thresholds, tp, fp)``.

    ``tp[j]``/``fp[j]`` count positives/negatives with a score ``>= thresholds[j]``, as
    scikit-learn's ``_binary_clf_curve`` does.
    """
    order = scores.argsort(descending=True, stable=True)
    scores, positive = scores[order], positive[order].double()
    last = torch.ones_like(scores, dtype=torch.bool)  # the last index of each run of equal scores
    last[:-1] = scores[1:] != scores[:-1]
    tp = positive.cumsum(0)[last]
    fp = (1 - positive).cumsum(0)[last]
    return scores[last], tp, fp


def precision_recall_curve(
    probs: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray, label: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One label's precision-recall curve, as scikit-learn's ``precision_recall_curve`` (>= 1.1) gives it.

    Returns:
        ``(precision, recall, thresholds)``: float64; ``thresholds`` ascending (every distinct
        probability), ``precision``/``recall`` one longer, ending at ``(1, 0)``. Empty
        thresholds and ``([1], [0])`` for a label with no positive (nothing to recall).
    """
    p, t = _pair(probs, targets)
    positives = int(t[:, label].sum())
    if positives == 0:
        one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
        return one, zero, torch.zeros(0, dtype=torch.float64)
    cuts, tp, fp = _pr_curve(p[:, label], t[:, label])
    precision, recall = (tp / (tp + fp)).flip(0), (tp / positives).flip(0)
    one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    return torch.cat([precision, one]), torch.cat([recall, zero]), cuts.flip(0)


def average_precision(
    probs: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray
) -> tuple[torch.Tensor, float]:
    """Per-label average precision and their macro mean (mAP).

    AP = sum over thresholds of (recall step) x precision, without interpolation: the same
    number as scikit-learn's ``average_precision_score`` for each label.

    Returns:
        ``(ap, map)``: float64 ``[K]`` with NaN for a label with no positive image, and the
        mean over the other labels (NaN when no label has a positive).
    """
    p, t = _pair(probs, targets)
    ap = torch.full((p.shape[1],), float("nan"), dtype=torch.float64)
    for k in range(p.shape[1]):
        positives = int(t[:, k].sum())
        if positives == 0:
            continue
        _, tp, fp = _pr_curve(p[:, k], t[:, k])
        precision, recall = tp / (tp + fp), tp / positives
        steps = torch.diff(recall, prepend=torch.zeros(1, dtype=torch.float64))
        ap[k] = float((steps * precision).sum())
    present = ~ap.isnan()
    return ap, float(ap[present].mean()) if present.any() else float("nan")


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` with 0 where ``den`` is 0 (scikit-learn's ``zero_division=0``)."""
    return torch.where(den > 0, num / torch.where(den > 0, den, 1), torch.zeros_like(num))


@dataclass
class MultiLabelScores:
    """Multi-label metrics at one set of thresholds.

    Attributes:
        ap: float64 ``[K]`` average precision (NaN: label with no positive).
        map: mean of ``ap`` over labels with a positive.
        precision, recall, f1: float64 ``[K]`` at the thresholds (0 where undefined).
        support: int64 ``[K]`` images with each label.
        macro: ``{"precision", "recall", "f1"}`` means over all K labels (scikit-learn's
            ``average="macro"``, ``zero_division=0``).
        micro: the same from counts pooled over labels (``average="micro"``).
        exact_set_accuracy: share of images whose predicted set equals the given set.
        hamming_loss: share of (image, label) decisions that are wrong.
    """

    ap: torch.Tensor
    map: float
    precision: torch.Tensor
    recall: torch.Tensor
    f1: torch.Tensor
    support: torch.Tensor
    macro: dict[str, float]
    micro: dict[str, float]
    exact_set_accuracy: float
    hamming_loss: float

    def summary(self) -> dict[str, float]:
        """The scalar metrics, flat (``map``, ``f1_macro``, ``f1_micro``, ..., ``hamming_loss``)."""
        flat = {"map": self.map, "exact_set_accuracy": self.exact_set_accuracy, "hamming_loss": self.hamming_loss}
        for average, values in (("macro", self.macro), ("micro", self.micro)):
            flat.update({f"{name}_{average}": value for name, value in values.items()})
        return flat


def multilabel_scores(
    probs: torch.Tensor | np.ndarray,
    targets: torch.Tensor | np.ndarray,
    thresholds: torch.Tensor | np.ndarray | float = DEFAULT_THRESHOLD,
) -> MultiLabelScores:
    """Every multi-label metric of ``probs`` against ``targets`` at ``thresholds`` (see :class:`MultiLabelScores`)."""
    p, t = _pair(probs, targets)
    predicted = predict_sets(p, thresholds)
    tp = (predicted & t).sum(0).double()  # [K]
    fp = (predicted & ~t).sum(0).double()
    fn = (~predicted & t).sum(0).double()
    precision, recall = _safe_div(tp, tp + fp), _safe_div(tp, tp + fn)
    f1 = _safe_div(2 * tp, 2 * tp + fp + fn)
    pooled = [x.sum().reshape(1) for x in (tp, fp, fn)]
    micro_p, micro_r = _safe_div(pooled[0], pooled[0] + pooled[1]), _safe_div(pooled[0], pooled[0] + pooled[2])
    micro_f1 = _safe_div(2 * pooled[0], 2 * pooled[0] + pooled[1] + pooled[2])
    ap, mean_ap = average_precision(p, t)
    n = max(len(p), 1)
    return MultiLabelScores(
        ap=ap,
        map=mean_ap,
        precision=precision,
        recall=recall,
        f1=f1,
        support=t.sum(0).long(),
        macro={"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean())},
        micro={"precision": float(micro_p), "recall": float(micro_r), "f1": float(micro_f1)},
        exact_set_accuracy=float((predicted == t).all(1).sum()) / n,
        hamming_loss=float((predicted != t).double().mean()) if p.numel() else float("nan"),
    )


def tune_thresholds(
    probs: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray, metric: str = "f1"
) -> torch.Tensor:
    """Per-label thresholds that maximise each label's F-score on (validation) data.

    For each label, every distinct probability is a candidate cut; the one with the highest
    F-beta (ties: the lowest cut, i.e. the higher recall) is chosen, and the threshold is
    set halfway between it and the next lower probability, so images scored a little
    differently at test time fall on the side the validation data put them. A label with
    no positive (nothing to tune on) keeps :data:`DEFAULT_THRESHOLD`, 0.5.

    Args:
        probs: ``[N, K]`` probabilities on the tuning split (never the test split).
        targets: ``[N, K]`` multi-hot.
        metric: ``f1`` (default), ``f2`` (favours recall) or ``f0.5`` (favours precision).

    Returns:
        float32 ``[K]`` thresholds in (0, 1]; predict with ``probs >= thresholds``.

    Raises:
        UsageError: an unknown metric.
    """
    if metric not in F_BETAS:
        raise unknown_name("threshold metric", metric, F_BETAS)
    beta2 = F_BETAS[metric] ** 2
    p, t = _pair(probs, targets)
    chosen = torch.full((p.shape[1],), DEFAULT_THRESHOLD, dtype=torch.float64)
    for k in range(p.shape[1]):
        positives = int(t[:, k].sum())
        if positives == 0:
            continue
        cuts, tp, fp = _pr_curve(p[:, k], t[:, k])
        fn = positives - tp
        score = _safe_div((1 + beta2) * tp, (1 + beta2) * tp + beta2 * fn + fp)
        best = int(torch.nonzero(score == score.max()).max())  # cuts run high to low: the last is the lowest
        below = float(cuts[best + 1]) if best + 1 < len(cuts) else None
        chosen[k] = float(cuts[best]) if below is None else (float(cuts[best]) + below) / 2
    return chosen.float()


def label_sets(
    probs: torch.Tensor | np.ndarray,
    thresholds: torch.Tensor | np.ndarray | float,
    class_names: list[str],
) -> list[list[str]]:
    """Each image's predicted labels, in class order (possibly empty).

    Raises:
        UsageError: ``class_names`` and ``probs`` disagree on the number of labels.
    """
    predicted = predict_sets(probs, thresholds)
    if predicted.shape[1] != len(class_names):
        raise UsageError(f"{len(class_names)} class names for {predicted.shape[1]} label scores")
    return [[class_names[k] for k in row.nonzero().flatten().tolist()] for row in predicted]


def confused_label_pairs(
    probs: torch.Tensor | np.ndarray,
    targets: torch.Tensor | np.ndarray,
    thresholds: torch.Tensor | np.ndarray | float,
    k: int = 10,
) -> list[tuple[int, int, int]]:
    """The ``k`` most frequent ``(given, predicted, count)`` label pairs.

    ``count`` is the number of images that have label ``given`` and were predicted label
    ``predicted`` without having it (a false positive seen next to a true label): the
    multi-label analogue of a confusion matrix's off-diagonal cell. Sorted by count,
    descending, then by index; pairs with a count of 0 never appear.
    """
    p, t = _pair(probs, targets)
    false_positive = predict_sets(p, thresholds) & ~t
    counts = t.double().T @ false_positive.double()  # [K, K]: given a (row), wrongly predicted b (column)
    given, predicted = counts.nonzero(as_tuple=True)
    pairs = [(int(a), int(b), int(counts[a, b])) for a, b in zip(given, predicted, strict=True)]
    if k < 0:
        raise UsageError(f"k must be >= 0, got {k}")
    return sorted(pairs, key=lambda pair: (-pair[2], pair[0], pair[1]))[:k]

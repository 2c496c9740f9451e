"""Classification metrics: hand-computed cases and scikit-learn as the reference."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import precision_recall_fscore_support

from cnnkit.evaluation.metrics import (
    CalibrationResult,
    confusion_matrix,
    expected_calibration_error,
    most_confused_pairs,
    per_class_accuracy,
    precision_recall_f1,
    top_losses,
)

# Rows true class, columns prediction. Column sums 7, 5, 5; row sums (support) 6, 6, 5.
HAND_CONFUSION = torch.tensor([[5, 1, 0], [2, 3, 1], [0, 1, 4]])


# ----------------------------------------------------------------------------- precision / recall / F1


def test_precision_recall_f1_by_hand() -> None:
    prf = precision_recall_f1(HAND_CONFUSION)
    precision, recall, f1 = [5 / 7, 3 / 5, 4 / 5], [5 / 6, 3 / 6, 4 / 5], [10 / 13, 6 / 11, 8 / 10]
    torch.testing.assert_close(prf["precision"], torch.tensor(precision, dtype=torch.float64))
    torch.testing.assert_close(prf["recall"], torch.tensor(recall, dtype=torch.float64))
    torch.testing.assert_close(prf["f1"], torch.tensor(f1, dtype=torch.float64))
    assert prf["support"].tolist() == [6, 6, 5] and prf["support"].dtype == torch.int64
    assert prf["macro"]["precision"] == pytest.approx(sum(precision) / 3)
    assert prf["macro"]["f1"] == pytest.approx(sum(f1) / 3)  # mean of per-class F1, not F1 of means
    assert prf["weighted"]["recall"] == pytest.approx((5 + 3 + 4) / 17)  # weighted recall is accuracy
    assert prf["weighted"]["precision"] == pytest.approx((6 * 5 / 7 + 6 * 3 / 5 + 5 * 4 / 5) / 17)


def test_recall_is_per_class_accuracy() -> None:
    recall = precision_recall_f1(HAND_CONFUSION)["recall"]
    torch.testing.assert_close(recall, per_class_accuracy(HAND_CONFUSION))


def test_classes_never_seen_or_never_predicted_score_zero() -> None:
    # Class 1 is never predicted, class 2 has no examples, class 3 appears nowhere.
    confusion = torch.tensor([[4, 0, 1, 0], [2, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    prf = precision_recall_f1(confusion)
    assert prf["precision"].tolist() == [4 / 6, 0.0, 0.0, 0.0]
    assert prf["recall"].tolist() == [4 / 5, 0.0, 0.0, 0.0]
    assert prf["f1"][1:].tolist() == [0.0, 0.0, 0.0]
    assert not any(torch.isnan(prf[key]).any() for key in ("precision", "recall", "f1"))
    assert prf["macro"]["recall"] == pytest.approx(0.8 / 4)  # absent classes still count in the mean


def test_empty_confusion_is_all_zero() -> None:
    prf = precision_recall_f1(torch.zeros(3, 3, dtype=torch.long))
    assert prf["f1"].tolist() == [0.0, 0.0, 0.0]
    assert prf["macro"] == prf["weighted"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def _random_predictions(seed: int, num_classes: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels and mostly-right predictions where class 1 is never predicted, the last class has
    no examples and the one before it appears nowhere."""
    g = torch.Generator().manual_seed(seed)
    present = torch.arange(num_classes - 2)
    labels = present[torch.randint(len(present), (count,), generator=g)]
    noise = torch.randint(num_classes, (count,), generator=g)
    preds = torch.where(torch.rand(count, generator=g) < 0.6, labels, noise)
    preds = torch.where(preds == 1, torch.full_like(preds, num_classes - 1), preds)
    preds = torch.where(preds == num_classes - 2, torch.zeros_like(preds), preds)
    return labels, preds


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("num_classes", [5, 12])
def test_matches_scikit_learn(seed: int, num_classes: int) -> None:
    labels, preds = _random_predictions(seed, num_classes, count=300)
    classes = list(range(num_classes))
    confusion = confusion_matrix(preds, labels, num_classes)
    assert confusion.tolist() == sk_confusion_matrix(labels, preds, labels=classes).tolist()
    prf = precision_recall_f1(confusion)
    assert prf["support"][-1] == 0 and confusion[:, 1].sum() == 0  # the edge cases are really there

    def reference(average: str | None) -> tuple:
        return precision_recall_fscore_support(labels, preds, labels=classes, average=average, zero_division=0)

    for key, expected in zip(("precision", "recall", "f1", "support"), reference(None), strict=True):
        torch.testing.assert_close(prf[key], torch.as_tensor(expected).to(prf[key].dtype), msg=key)
    for average in ("macro", "weighted"):
        expected = reference(average)
        got = prf[average]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx(expected[:3], abs=1e-12), average


# ----------------------------------------------------------------------------- calibration


def test_ece_by_hand() -> None:
    probs = torch.tensor([
        [0.90, 0.05, 0.05, 0.00],  # conf 0.90 right  -> bin (0.5, 1]
        [0.80, 0.20, 0.00, 0.00],  # conf 0.80 wrong  -> bin (0.5, 1]
        [0.10, 0.60, 0.30, 0.00],  # conf 0.60 right  -> bin (0.5, 1]
        [0.40, 0.30, 0.20, 0.10],  # conf 0.40 right  -> bin [0, 0.5]
        [0.20, 0.35, 0.25, 0.20],  # conf 0.35 wrong  -> bin [0, 0.5]
    ])  # fmt: skip
    labels = torch.tensor([0, 1, 1, 0, 2])
    result = expected_calibration_error(probs, labels, bins=2)
    assert isinstance(result, CalibrationResult)
    assert result.bin_edges.tolist() == [0.0, 0.5, 1.0]
    assert result.bin_count.tolist() == [2, 3]
    torch.testing.assert_close(result.bin_confidence, torch.tensor([0.375, 2.3 / 3], dtype=torch.float64))
    torch.testing.assert_close(result.bin_accuracy, torch.tensor([0.5, 2 / 3], dtype=torch.float64))
    # |0.5 - 0.375| * 2/5 + |2/3 - 2.3/3| * 3/5 = 0.05 + 0.06
    assert result.ece == pytest.approx(0.11)


def test_ece_bins_are_closed_on_the_right() -> None:
    # Confidences exactly on edges 0.25, 0.5 and 1.0 belong to the bin below them.
    probs = torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    result = expected_calibration_error(probs, torch.tensor([0, 0, 0]), bins=4)
    assert result.bin_count.tolist() == [1, 1, 0, 1]
    assert torch.isnan(result.bin_accuracy[2]) and torch.isnan(result.bin_confidence[2])  # empty bin


def _reference_ece(probs: torch.Tensor, labels: torch.Tensor, bins: int) -> float:
    """The loop from Guo et al. (2017), written independently of the vectorised version."""
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = 0.0
    for b in range(bins):
        lower = confidence > edges[b] if b else confidence >= 0
        in_bin = lower & (confidence <= edges[b + 1])
        if in_bin.any():
            gap = abs(float(correct[in_bin].mean() - confidence[in_bin].mean()))
            ece += gap * float(in_bin.float().mean())
    return ece


@pytest.mark.parametrize("bins", [10, 15])
def test_ece_matches_reference_loop(bins: int) -> None:
    g = torch.Generator().manual_seed(bins)
    logits = torch.randn(2000, 10, generator=g) * 3
    labels = torch.randint(10, (2000,), generator=g)
    logits[torch.arange(2000), labels] += 2
    result = expected_calibration_error(logits.softmax(dim=1), labels, bins=bins)
    assert result.ece == pytest.approx(_reference_ece(logits.softmax(dim=1), labels, bins), abs=1e-6)
    assert int(result.bin_count.sum()) == 2000


def test_ece_refuses_logits() -> None:
    with pytest.raises(ValueError, match="softmax"):
        expected_calibration_error(torch.tensor([[2.0, -1.0]]), torch.tensor([0]))


# ----------------------------------------------------------------------------- confusions and losses


def test_most_confused_pairs_order_and_ties() -> None:
    confusion = torch.tensor([[9, 3, 0, 1], [3, 9, 0, 0], [0, 5, 9, 1], [0, 0, 0, 99]])
    pairs = most_confused_pairs(confusion, k=4)
    assert pairs == [(2, 1, 5), (0, 1, 3), (1, 0, 3), (0, 3, 1)]  # ties by true, then predicted index
    assert len(most_confused_pairs(confusion, k=100)) == 5  # zero cells and the diagonal never appear
    assert most_confused_pairs(torch.eye(3, dtype=torch.long) * 7) == []


def test_top_losses() -> None:
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(50, 6, generator=g), torch.randint(6, (50,), generator=g)
    worst = top_losses(logits, labels, k=5)
    losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    assert worst.indices.tolist() == losses.argsort(descending=True)[:5].tolist()
    torch.testing.assert_close(worst.losses, losses[worst.indices])
    assert (worst.losses[:-1] >= worst.losses[1:]).all()
    probs = logits.softmax(dim=1)[worst.indices]
    assert worst.predicted.tolist() == probs.argmax(dim=1).tolist()
    torch.testing.assert_close(worst.probability, probs.max(dim=1).values)
    # exp(-loss) is the probability of the true class, as the docstring promises.
    torch.testing.assert_close(worst.losses.neg().exp(), probs[torch.arange(5), labels[worst.indices]])
    assert len(worst) == 4 and tuple(worst)[0] is worst.indices  # unpacks as a plain tuple too


def test_top_losses_ties_keep_dataset_order_and_k_is_capped() -> None:
    logits = torch.zeros(4, 3)  # every sample has the same loss, log(3)
    worst = top_losses(logits, torch.tensor([0, 1, 2, 0]), k=10)
    assert worst.indices.tolist() == [0, 1, 2, 3]

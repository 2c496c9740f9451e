"""Multi-label metrics against scikit-learn's, threshold tuning, label sets and confused pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as sk

from cnnkit.errors import UsageError
from cnnkit.evaluation.multilabel import (
    average_precision,
    confused_label_pairs,
    label_sets,
    multilabel_scores,
    precision_recall_curve,
    tune_thresholds,
)


def _scores(n: int = 300, k: int = 6, seed: int = 0, decimals: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Targets of very different label rates and probabilities that are informative but noisy."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, k)) < np.linspace(0.05, 0.6, k)).astype(np.float32)
    probs = 1 / (1 + np.exp(-(2.5 * (targets - 0.5) * 2 + rng.normal(0, 1.5, (n, k)))))
    if decimals is not None:
        probs = probs.round(decimals)  # many tied scores
    return probs, targets


@pytest.mark.parametrize("decimals", [None, 1])
def test_average_precision_equals_sklearn(decimals: int | None) -> None:
    probs, targets = _scores(decimals=decimals)
    ap, mean_ap = average_precision(torch.from_numpy(probs), torch.from_numpy(targets))
    expected = sk.average_precision_score(targets, probs, average=None)
    np.testing.assert_allclose(ap.numpy(), expected, rtol=1e-12)
    assert mean_ap == pytest.approx(sk.average_precision_score(targets, probs, average="macro"))
    assert 0.5 < mean_ap < 1.0


@pytest.mark.parametrize("decimals", [None, 1])
def test_precision_recall_curve_equals_sklearn(decimals: int | None) -> None:
    probs, targets = _scores(decimals=decimals)
    for label in range(targets.shape[1]):
        precision, recall, cuts = precision_recall_curve(probs, targets, label)
        expected = sk.precision_recall_curve(targets[:, label], probs[:, label])
        for got, want in zip((precision, recall, cuts), expected, strict=True):
            np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    targets[:, 0] = 0
    assert [x.tolist() for x in precision_recall_curve(probs, targets, 0)] == [[1.0], [0.0], []]


def test_map_skips_labels_without_positives() -> None:
    probs, targets = _scores()
    targets[:, 2] = 0
    ap, mean_ap = average_precision(probs, targets)
    assert torch.isnan(ap[2]) and not torch.isnan(ap[[0, 1, 3, 4, 5]]).any()
    assert mean_ap == pytest.approx(float(ap[[0, 1, 3, 4, 5]].mean()))


def test_scores_equal_sklearn_at_per_label_thresholds() -> None:
    probs, targets = _scores(seed=1)
    thresholds = np.array([0.3, 0.4, 0.5, 0.6, 0.7, 0.99999])  # the last label is (almost) never predicted
    result = multilabel_scores(probs, targets, thresholds)
    predicted = (probs >= thresholds).astype(int)
    for average in ("macro", "micro"):
        got = result.macro if average == "macro" else result.micro
        assert got["precision"] == pytest.approx(
            sk.precision_score(targets, predicted, average=average, zero_division=0)
        )
        assert got["recall"] == pytest.approx(sk.recall_score(targets, predicted, average=average, zero_division=0))
        assert got["f1"] == pytest.approx(sk.f1_score(targets, predicted, average=average, zero_division=0))
    np.testing.assert_allclose(result.f1.numpy(), sk.f1_score(targets, predicted, average=None, zero_division=0))
    assert result.exact_set_accuracy == pytest.approx(sk.accuracy_score(targets, predicted))
    assert result.hamming_loss == pytest.approx(sk.hamming_loss(targets, predicted))
    assert result.support.tolist() == targets.sum(0).astype(int).tolist()
    summary = result.summary()
    assert summary["map"] == result.map and summary["f1_micro"] == result.micro["f1"]
    assert set(summary) == {"map", "exact_set_accuracy", "hamming_loss", "precision_macro", "recall_macro",
                            "f1_macro", "precision_micro", "recall_micro", "f1_micro"}  # fmt: skip


def test_perfect_predictions() -> None:
    targets = torch.tensor([[1, 0, 1], [0, 1, 0], [0, 0, 0]], dtype=torch.float32)
    result = multilabel_scores(targets * 0.9 + 0.05, targets)
    assert result.map == 1.0 and result.exact_set_accuracy == 1.0 and result.hamming_loss == 0.0
    assert result.micro["f1"] == 1.0


def test_tuned_thresholds_separate_validation_and_beat_one_half() -> None:
    # Label 0 is scored low (a rare label the model is shy about), label 1 high, label 2 has no positive.
    targets = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.float32)
    probs = torch.tensor([[0.30, 0.95, 0.2], [0.25, 0.90, 0.1], [0.10, 0.92, 0.7], [0.05, 0.85, 0.1],
                          [0.35, 0.60, 0.3], [0.20, 0.40, 0.2]])  # fmt: skip
    thresholds = tune_thresholds(probs, targets)
    assert thresholds.dtype == torch.float32 and thresholds.shape == (3,)
    # label 0: positives 0.25-0.35, highest negative 0.20 -> halfway, 0.225
    # label 1: positives 0.90-0.95, highest negative 0.85 -> 0.875 (below 0.85 a false positive)
    assert thresholds.tolist() == pytest.approx([0.225, 0.875, 0.5])
    tuned, default = multilabel_scores(probs, targets, thresholds), multilabel_scores(probs, targets, 0.5)
    assert tuned.f1[:2].tolist() == [1.0, 1.0] and default.f1[0] == 0.0
    assert tuned.macro["f1"] > default.macro["f1"]


def test_tuning_on_noisy_data_never_lowers_per_label_f1() -> None:
    probs, targets = _scores(seed=2)
    for metric in ("f1", "f2", "f0.5"):
        thresholds = tune_thresholds(probs, targets, metric)
        tuned = multilabel_scores(probs, targets, thresholds).f1
        default = multilabel_scores(probs, targets, 0.5).f1
        if metric == "f1":
            assert bool((tuned >= default - 1e-12).all())
    recall_first = multilabel_scores(probs, targets, tune_thresholds(probs, targets, "f2")).macro["recall"]
    precision_first = multilabel_scores(probs, targets, tune_thresholds(probs, targets, "f0.5")).macro["recall"]
    assert recall_first > precision_first
    with pytest.raises(UsageError, match="unknown threshold metric 'f3'"):
        tune_thresholds(probs, targets, "f3")


def test_label_sets_in_class_order() -> None:
    probs = torch.tensor([[0.9, 0.2, 0.7], [0.1, 0.1, 0.1], [0.5, 0.6, 0.2]])
    sets = label_sets(probs, torch.tensor([0.5, 0.65, 0.5]), ["cat", "dog", "sofa"])
    assert sets == [["cat", "sofa"], [], ["cat"]]
    with pytest.raises(UsageError, match="2 class names for 3 label scores"):
        label_sets(probs, 0.5, ["cat", "dog"])


def test_confused_label_pairs_count_false_positives_next_to_given_labels() -> None:
    # Labels: 0 cat, 1 dog, 2 sofa. Two cat images also get "dog" wrongly; one of them is a cat on a sofa.
    targets = torch.tensor([[1, 0, 0], [1, 0, 1], [0, 1, 0], [0, 0, 1]], dtype=torch.float32)
    probs = torch.tensor([[0.9, 0.8, 0.1], [0.9, 0.7, 0.9], [0.1, 0.9, 0.6], [0.1, 0.1, 0.9]])
    pairs = confused_label_pairs(probs, targets, 0.5)
    assert pairs == [(0, 1, 2), (1, 2, 1), (2, 1, 1)]
    assert confused_label_pairs(probs, targets, 0.5, k=1) == [(0, 1, 2)]
    assert confused_label_pairs(targets, targets, 0.5) == []

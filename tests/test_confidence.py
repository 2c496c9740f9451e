"""cnnkit.confidence: temperature scaling recovers a known temperature, the known-ness scores and their
threshold give the values worked out by hand, and the penultimate features are the logits layer's input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from cnnkit.confidence import (
    TEMPERATURE_RANGE,
    calibrated,
    feature_bank,
    fit_temperature,
    known_score,
    last_linear,
    penultimate_features,
    threshold_keeping,
)
from cnnkit.engine.features import HeadOnly
from cnnkit.models import create_model


def sampled_labels(true_logits: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Labels drawn from ``softmax(true_logits)``: the logits are then calibrated by construction."""
    generator = torch.Generator().manual_seed(seed)
    return torch.multinomial(true_logits.softmax(-1), 1, generator=generator).squeeze(1)


@pytest.mark.parametrize("scale", [3.0, 0.5, 1.0])
def test_fit_temperature_recovers_the_scale_of_over_or_under_confident_logits(scale: float) -> None:
    generator = torch.Generator().manual_seed(1)
    true_logits = 2 * torch.randn(20_000, 5, generator=generator)
    labels = sampled_labels(true_logits)
    # logits = true * scale: dividing by T = scale gives back the calibrated logits
    assert fit_temperature(true_logits * scale, labels) == pytest.approx(scale, rel=0.05)


def test_fit_temperature_lowers_the_negative_log_likelihood() -> None:
    generator = torch.Generator().manual_seed(2)
    true_logits = torch.randn(2_000, 10, generator=generator)
    labels = sampled_labels(true_logits, seed=3)
    logits = 4 * true_logits
    temperature = fit_temperature(logits, labels)
    assert F.cross_entropy(logits / temperature, labels) < F.cross_entropy(logits, labels) - 0.1


def test_fit_temperature_leaves_too_little_or_broken_data_alone() -> None:
    assert fit_temperature(torch.tensor([[5.0, 0.0]]), torch.tensor([0])) == 1.0
    assert fit_temperature(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)) == 1.0
    broken = torch.tensor([[float("nan"), 0.0], [1.0, 0.0]])
    assert fit_temperature(broken, torch.tensor([0, 1])) == 1.0


def test_fit_temperature_sharpens_logits_that_are_all_right_within_its_range() -> None:
    # every sample right: the likelihood keeps rising as T falls, until L-BFGS's gradient tolerance stops it
    labels = torch.tensor([0, 1] * 50)
    for margin in (1.0, 2.0, 10.0):
        logits = torch.tensor([[margin, -margin], [-margin, margin]] * 50)
        temperature = fit_temperature(logits, labels)
        assert TEMPERATURE_RANGE[0] <= temperature <= 1.0


def test_calibrated_keeps_the_argmax_and_sums_to_one() -> None:
    logits = torch.randn(200, 7, generator=torch.Generator().manual_seed(4)).half()
    for temperature in (0.2, 1.0, 3.0):
        probs = calibrated(logits, temperature)
        assert probs.dtype == torch.float32
        assert torch.equal(probs.argmax(-1), logits.float().argmax(-1))
        assert torch.allclose(probs.sum(-1), torch.ones(200), atol=1e-5)
    # a higher temperature makes the top probability less sure, never more
    assert (calibrated(logits, 3.0).max(-1).values <= calibrated(logits, 1.0).max(-1).values + 1e-6).all()


def test_threshold_keeping_keeps_exactly_the_rate_on_distinct_scores() -> None:
    scores = torch.arange(100.0).flip(0)
    threshold = threshold_keeping(scores, 0.95)
    assert threshold == 5.0
    assert (scores >= threshold).float().mean() == pytest.approx(0.95)


@pytest.mark.parametrize("count", [1, 2, 7, 37, 101])
@pytest.mark.parametrize("rate", [0.5, 0.9, 0.95, 0.999])
def test_threshold_keeping_is_the_largest_threshold_keeping_at_least_the_rate(count: int, rate: float) -> None:
    scores = torch.randn(count, generator=torch.Generator().manual_seed(count))
    threshold = threshold_keeping(scores, rate)
    assert (scores >= threshold).float().mean() >= rate - 1e-9
    higher = scores[scores > threshold]
    if len(higher):  # the next score up would keep less than the rate
        assert (scores >= higher.min()).float().mean() < rate


def test_threshold_keeping_edge_cases() -> None:
    scores = torch.tensor([0.3, 0.9, 0.1, 0.5])
    assert threshold_keeping(scores, 1.0) == pytest.approx(0.1)  # keep all: the lowest score
    assert threshold_keeping(torch.tensor([0.42]), 0.95) == pytest.approx(0.42)  # one sample: itself
    assert threshold_keeping(torch.tensor([0.42]), 0.01) == pytest.approx(0.42)
    ties = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0])
    assert threshold_keeping(ties, 0.5) == 1.0  # ties at the threshold are all kept: 80 % >= 50 %
    assert threshold_keeping(torch.full((10,), 0.5), 0.3) == 0.5
    assert threshold_keeping(torch.tensor([2, 1, 0], dtype=torch.float16), 0.6) == 1.0


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.01, float("nan")])
def test_threshold_keeping_refuses_a_rate_outside_zero_one(rate: float) -> None:
    with pytest.raises(ValueError, match="known_rate"):
        threshold_keeping(torch.tensor([0.1, 0.2]), rate)


def test_threshold_keeping_refuses_no_scores() -> None:
    with pytest.raises(ValueError, match="no scores"):
        threshold_keeping(torch.zeros(0), 0.95)


def test_msp_and_energy_scores_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    e2 = math.exp(2)
    msp = known_score("msp", logits)
    assert msp.tolist() == pytest.approx([math.log(e2 / (e2 + 2)), math.log(1 / 3)])  # the log of the top probability
    assert known_score("msp", logits, temperature=2.0).tolist() == pytest.approx(
        [math.log(math.e / (math.e + 2)), math.log(1 / 3)])
    energy = known_score("energy", logits)
    assert energy.tolist() == pytest.approx([math.log(e2 + 2), math.log(3)])
    # T * logsumexp(logits / T)
    assert known_score("energy", logits, temperature=2.0).tolist() == pytest.approx(
        [2 * math.log(math.e + 2), 2 * math.log(3)])
    assert msp.dtype == energy.dtype == torch.float32


def test_msp_ranks_confident_images_apart() -> None:
    scores = known_score("msp", torch.tensor([[20.0, 0.0], [30.0, 0.0]]))
    assert scores[1] > scores[0]


def test_knn_score_of_a_bank_row_is_one_and_averages_the_k_nearest() -> None:
    bank = feature_bank(torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 2.0]]), torch.tensor([0, 1, 1]))
    query = torch.tensor([[5.0, 0.0]])  # the direction of the first row
    logits = torch.zeros(1, 2)
    similarities = [1.0, math.sqrt(0.5), 0.0]  # cosine to rows 1, 3, 2: nearest first

    def knn(k: int) -> float:
        return float(known_score("knn", logits, features=query, bank=bank, k=k))

    assert knn(1) == pytest.approx(1.0, abs=1e-3)
    assert knn(2) == pytest.approx(sum(similarities[:2]) / 2, abs=1e-3)
    assert knn(3) == pytest.approx(sum(similarities) / 3, abs=1e-3)
    assert knn(10) == pytest.approx(knn(3))  # k is capped at the bank's size
    far = torch.tensor([[-1.0, -0.1]])
    assert float(known_score("knn", logits, features=far, bank=bank, k=1)) < knn(1) - 0.9


def test_known_score_refuses_a_knn_without_features_or_an_unknown_kind() -> None:
    with pytest.raises(ValueError, match="features"):
        known_score("knn", torch.zeros(1, 2))
    with pytest.raises(ValueError, match="msp, energy, knn"):
        known_score("entropy", torch.zeros(1, 2))


def class_features(per_class: tuple[int, ...], dim: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature vectors that point mostly at their class's axis (so a bank row says its class)."""
    labels = torch.cat([torch.full((count,), c) for c, count in enumerate(per_class)])
    noise = 0.1 * torch.rand(len(labels), dim, generator=torch.Generator().manual_seed(5))
    return 3 * F.one_hot(labels, dim).float() + noise, labels


def test_feature_bank_keeps_the_limit_evenly_per_class_unit_norm_half() -> None:
    features, labels = class_features((100, 100, 100))
    bank = feature_bank(features, labels, limit=30)
    assert bank.shape == (30, 6) and bank.dtype == torch.float16
    assert torch.bincount(bank.float().argmax(-1)).tolist() == [10, 10, 10]
    assert torch.allclose(bank.float().norm(dim=-1), torch.ones(30), atol=1e-3)
    assert torch.equal(bank, feature_bank(features, labels, limit=30))  # seeded
    assert not torch.equal(bank, feature_bank(features, labels, limit=30, seed=1))


def test_feature_bank_under_the_limit_keeps_every_row_in_order() -> None:
    features, labels = class_features((4, 7))
    bank = feature_bank(features, labels, limit=100)
    assert torch.allclose(bank.float(), F.normalize(features, dim=-1), atol=1e-3)


def test_feature_bank_of_unbalanced_classes_takes_at_most_the_share_of_each() -> None:
    features, labels = class_features((200, 5, 50))
    bank = feature_bank(features, labels, limit=60)
    assert torch.bincount(bank.float().argmax(-1), minlength=3).tolist() == [20, 5, 20]


def test_feature_bank_never_exceeds_its_limit() -> None:
    features, labels = class_features((10, 10, 10, 10, 10))
    assert len(feature_bank(features, labels, limit=3)) <= 3


def test_last_linear_and_penultimate_features_of_a_cnnkit_model() -> None:
    model = create_model("lenet", num_classes=5).eval()
    head = last_linear(model)
    assert head is model.head[-1] and head.in_features == 84 and head.out_features == 5
    images = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(6))
    with torch.no_grad(), penultimate_features(model) as collected:
        logits = model(images)
        model(images[:2])
    assert [tuple(f.shape) for f in collected] == [(3, 84), (2, 84)]
    assert collected[0].dtype == torch.float32
    assert torch.allclose(head(collected[0]), logits, atol=1e-5)  # the features are what the logits come from
    with torch.no_grad():
        model(images)
    assert len(collected) == 2  # the hook is gone once outside


def test_penultimate_features_through_a_wrapper_with_module() -> None:
    model = create_model("lenet", num_classes=4).eval()
    wrapped = HeadOnly(model)  # the cached-feature trainer's wrapper: forward takes trunk features
    assert last_linear(wrapped) is model.head[-1]
    with torch.no_grad():
        trunk = model.forward_features(torch.randn(2, 1, 28, 28))
        with penultimate_features(wrapped) as collected:
            wrapped(trunk)
    assert collected[0].shape == (2, model.head[-1].in_features)


def test_penultimate_features_of_a_pretrained_style_backbone() -> None:
    model = create_model("timm:efficientnet_lite0", num_classes=5).eval()  # no weights needed for the shapes
    assert last_linear(model).in_features == 1280
    with torch.no_grad(), penultimate_features(model) as collected:
        model(torch.randn(1, 3, 64, 64))
    assert collected[0].shape == (1, 1280)


def test_last_linear_of_a_plain_model_and_of_one_without_any() -> None:
    plain = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    assert last_linear(plain) is plain[-1]
    with pytest.raises(ValueError, match="no nn.Linear"):
        last_linear(nn.Sequential(nn.Conv2d(1, 2, 3)))

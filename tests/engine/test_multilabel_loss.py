"""Multi-label losses (BCE with smoothing towards 0.5, the asymmetric loss) and multi-hot mixup/cutmix."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch

from cnnkit.engine.multilabel_loss import (
    MultiLabelMixer,
    balanced_pos_weight,
    build_multilabel_loss,
    build_multilabel_mixer,
    smooth_multi_hot,
)
from cnnkit.errors import UsageError


def test_smoothing_moves_every_label_towards_one_half() -> None:
    targets = torch.tensor([[1.0, 0.0, 0.5]])
    assert smooth_multi_hot(targets, 0.1)[0].tolist() == pytest.approx([0.95, 0.05, 0.5])
    assert smooth_multi_hot(targets, 0.0) is targets
    with pytest.raises(UsageError, match=r"label smoothing must be in \[0, 1\)"):
        smooth_multi_hot(targets, 1.0)


def test_bce_with_smoothing_by_hand() -> None:
    logits, targets = torch.tensor([[2.0, -1.0]]), torch.tensor([[1.0, 0.0]])
    loss = build_multilabel_loss("bce", smoothing=0.2)(logits, targets)

    def bce(x: float, t: float) -> float:
        p = 1 / (1 + math.exp(-x))
        return -(t * math.log(p) + (1 - t) * math.log(1 - p))

    assert float(loss) == pytest.approx((bce(2.0, 0.9) + bce(-1.0, 0.1)) / 2)


def test_asymmetric_loss_by_hand() -> None:
    # One image, label 0 given (logit 0), label 1 not given (logit 1); gamma_neg 4, gamma_pos 1, clip 0.05.
    loss = build_multilabel_loss("asl", gamma_neg=4, gamma_pos=1, clip=0.05)(
        torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]])
    )
    p_pos = 0.5
    positive = -((1 - p_pos) ** 1) * math.log(p_pos)  # focusing (1 - p)^gamma_pos on the given label
    p_neg = 1 / (1 + math.exp(-1.0)) - 0.05  # the margin shifts the negative's probability down
    negative = -(p_neg**4) * math.log(1 - p_neg)
    assert positive == pytest.approx(0.34657, abs=1e-5) and negative == pytest.approx(0.24586, abs=1e-5)
    assert float(loss) == pytest.approx((positive + negative) / 2, rel=1e-6)


def test_asymmetric_loss_equals_timms_where_timm_has_it() -> None:
    from timm.loss import AsymmetricLossMultiLabel

    if "reduction" not in inspect.signature(AsymmetricLossMultiLabel).parameters:
        pytest.skip("this timm's AsymmetricLossMultiLabel has no reduction/smoothing/pos_weight (timm < 1.0.29)")
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 7, generator=generator) * 3
    targets = (torch.rand(16, 7, generator=generator) > 0.7).float()
    pos_weight = torch.linspace(1, 3, 7)
    # Hard targets only: with soft ones (smoothing, mixup) timm interpolates one focusing weight
    # between the two terms, where this loss weighs each term with its own (the paper's formula).
    ours = build_multilabel_loss("asl", gamma_neg=3, gamma_pos=1, clip=0.1, pos_weight=pos_weight)
    theirs = AsymmetricLossMultiLabel(gamma_neg=3, gamma_pos=1, clip=0.1, pos_weight=pos_weight, reduction="mean")
    assert float(ours(logits, targets)) == pytest.approx(float(theirs(logits, targets)), rel=1e-6)


def test_asymmetric_loss_without_focusing_or_margin_is_bce() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 5, generator=generator)
    targets = (torch.rand(8, 5, generator=generator) > 0.7).float()
    asl = build_multilabel_loss("asl", gamma_neg=0, gamma_pos=0, clip=0, smoothing=0.1)(logits, targets)
    bce = build_multilabel_loss("bce", smoothing=0.1)(logits, targets)
    assert float(asl) == pytest.approx(float(bce), rel=1e-5)


def test_asymmetric_loss_weighs_easy_negatives_less_than_bce() -> None:
    # Labels an image does not have, already scored low (p = 0.12): BCE still pushes on them, ASL
    # (margin 0.05, then (p - 0.05)^4) all but ignores them, while a hard negative still counts.
    easy, hard, targets = torch.full((4, 20), -2.0), torch.full((4, 20), 2.0), torch.zeros(4, 20)
    asl, bce = build_multilabel_loss("asl"), build_multilabel_loss("bce")
    assert float(asl(easy, targets)) < 1e-3 * float(bce(easy, targets))
    assert float(asl(hard, targets)) > 0.3 * float(bce(hard, targets))


def test_unknown_loss_and_bad_values() -> None:
    with pytest.raises(UsageError, match="unknown multi-label loss 'als'; did you mean 'asl'"):
        build_multilabel_loss("als")
    with pytest.raises(UsageError, match="asl needs"):
        build_multilabel_loss("asl", clip=1.5)
    with pytest.raises(UsageError, match="label smoothing"):
        build_multilabel_loss("bce", smoothing=-0.1)


def _batch(size: int = 4, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Image ``i`` is filled with the value ``i``: a mixed pixel tells which images it came from."""
    images = torch.arange(size, dtype=torch.float32).view(size, 1, 1, 1).expand(size, 3, 16, 16).clone()
    targets = torch.zeros(size, k)
    for i in range(size):
        targets[i, [i % k, (i + 2) % k]] = 1.0
    return images, targets


def test_mixup_mixes_multi_hot_targets_like_the_images() -> None:
    np.random.seed(0)
    images, targets = _batch()
    mixed, mixed_targets = MultiLabelMixer(5, mixup=1.0)(images, targets)
    assert torch.equal(images, _batch()[0]), "the caller's batch must not change"
    lam = 1 - float(mixed[0].mean()) / 3  # image 0 (value 0) mixed with image 3 (value 3)
    assert 0 < lam < 1
    assert torch.allclose(mixed_targets[0], lam * targets[0] + (1 - lam) * targets[3], atol=1e-6)
    assert torch.allclose(mixed_targets[1], lam * targets[1] + (1 - lam) * targets[2], atol=1e-6)
    assert torch.allclose(mixed_targets.sum(1), torch.full((4,), 2.0))


def test_cutmix_weighs_targets_by_pasted_area() -> None:
    np.random.seed(3)
    images, targets = _batch()
    mixed, mixed_targets = MultiLabelMixer(5, cutmix=1.0)(images, targets)
    pasted = float((mixed[0] == 3).float().mean())  # share of image 0 now showing image 3
    assert 0 < pasted < 1
    assert torch.allclose(mixed_targets[0], (1 - pasted) * targets[0] + pasted * targets[3], atol=1e-6)


def test_odd_batch_leaves_the_middle_image_unmixed() -> None:
    np.random.seed(1)
    images, targets = _batch(size=5)
    for mixer in (MultiLabelMixer(5, mixup=1.0), MultiLabelMixer(5, cutmix=1.0)):
        mixed, mixed_targets = mixer(images, targets)
        assert torch.equal(mixed[2], images[2]) and torch.equal(mixed_targets[2], targets[2])
        assert not torch.equal(mixed[0], images[0])
    one, one_target = MultiLabelMixer(5, mixup=1.0)(images[:1], targets[:1])
    assert torch.equal(one, images[:1]) and torch.equal(one_target, targets[:1])


def test_mixer_factory_and_shape_check() -> None:
    assert build_multilabel_mixer(5, 0.0, 0.0, 1.0) is None
    mixer = build_multilabel_mixer(5, 0.2, 0.0, 0.0)  # prob 0: never mixes
    images, targets = _batch()
    mixed, mixed_targets = mixer(images, targets)
    assert torch.equal(mixed, images) and torch.equal(mixed_targets, targets)
    with pytest.raises(ValueError, match=r"multi-hot targets \[B, 5\]"):
        mixer(images, torch.arange(4))


def test_balanced_pos_weight_evens_each_labels_positives_and_negatives() -> None:
    targets = torch.zeros(100, 4)
    targets[:50, 0] = 1  # half: weight 1
    targets[:20, 1] = 1  # 20 of 100: 80 / 20 = 4
    targets[:2, 2] = 1  # 98 / 2 = 49, capped at 10
    weights = balanced_pos_weight(targets)
    assert weights.tolist() == [1.0, 4.0, 10.0, 1.0]  # label 3: no positive, weight 1
    logits = torch.zeros(100, 4)
    weighted = build_multilabel_loss("bce", pos_weight=weights)(logits, targets)
    plain = build_multilabel_loss("bce")(logits, targets)
    assert float(weighted) > float(plain)
    assert float(build_multilabel_loss("asl", pos_weight=weights)(logits, targets)) > float(
        build_multilabel_loss("asl")(logits, targets)
    )
    with pytest.raises(UsageError, match="max_weight must be >= 1"):
        balanced_pos_weight(targets, max_weight=0.5)

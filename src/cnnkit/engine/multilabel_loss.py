"""Losses and batch mixing for multi-label training (several labels per image).

A multi-label model gives one logit per label, read through a sigmoid: each label is its
own yes/no question, so the targets are multi-hot ``[B, K]`` (1.0 where the image has the
label) rather than one class index.

* :func:`smooth_multi_hot`: label smoothing for independent binary targets, towards 0.5
  (``t * (1 - eps) + eps / 2``); the softmax rule ``eps / K`` would make every absent label
  nearly certain-no and is wrong here (timm >= 1.0.29 smooths multi-label targets the same way).
* :func:`build_multilabel_loss`: ``bce`` (``nn.BCEWithLogitsLoss`` on smoothed targets) or
  ``asl``, the asymmetric loss of Ridnik et al. (2021), "Asymmetric Loss For Multi-Label
  Classification" (:class:`AsymmetricLoss`): focusing ``(1 - p_t) ** gamma`` with a larger
  gamma for the many easy negatives, and a probability margin ``clip`` that discards very
  easy negatives. Averaged over images and labels like BCE, so a learning rate tuned for
  one suits the other (the paper sums).
* :class:`MultiLabelMixer`: mixup/cutmix of a batch and its multi-hot targets: mixup gives
  ``lam * t1 + (1 - lam) * t2``, cutmix the same with ``lam`` the share of the image left
  unpasted (timm's ``cutmix_bbox_and_lam`` draws the box). Smoothing is left to the loss
  (it is linear, so smoothing a mixed target equals mixing smoothed ones).

Why not timm's own: ``Mixup(multi_label=True)`` and an ``AsymmetricLossMultiLabel`` with a
mean reduction, smoothing and ``pos_weight`` only exist since timm 1.0.29 (1.0.28 has
neither; cnnkit supports timm >= 0.9.16). On hard targets the numbers are the same: a test
checks this loss against timm's where the installed timm has it.

Nothing here knows datasets or models.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cnnkit.errors import UsageError, unknown_name

LOSSES: tuple[str, ...] = ("bce", "asl")

_EPS = 1e-8  # the log's floor (the paper's and timm's)


def smooth_multi_hot(targets: torch.Tensor, eps: float) -> torch.Tensor:
    """``targets * (1 - eps) + eps / 2``: every label's target moves ``eps / 2`` towards 0.5."""
    if not 0.0 <= eps < 1.0:
        raise UsageError(f"label smoothing must be in [0, 1), got {eps}")
    return targets * (1.0 - eps) + 0.5 * eps if eps else targets


class MultiLabelBCE(nn.Module):
    """Binary cross-entropy on logits ``[B, K]`` and multi-hot (or mixed) targets ``[B, K]``.

    Args:
        smoothing: label smoothing (:func:`smooth_multi_hot`).
        pos_weight: optional ``[K]`` weight of each label's positive term (``> 1`` favours
            recall of a rare label; ``nn.BCEWithLogitsLoss``'s argument).

    The result is the mean over images and labels.
    """

    def __init__(self, smoothing: float = 0.0, pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        smooth_multi_hot(torch.zeros(()), smoothing)  # validates the value now, not at the first batch
        self.smoothing = smoothing
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = smooth_multi_hot(targets.to(logits.dtype), self.smoothing)
        return nn.functional.binary_cross_entropy_with_logits(logits, targets, pos_weight=self.pos_weight)


class AsymmetricLoss(nn.Module):
    """The asymmetric loss (ASL) on logits ``[B, K]`` and multi-hot (or mixed) targets ``[B, K]``.

    Per label, with ``p = sigmoid(logit)``, ``p_m = max(p - clip, 0)`` and ``t`` the (smoothed) target::

        loss = -t * (1 - p) ** gamma_pos * log(p) - (1 - t) * p_m ** gamma_neg * log(1 - p_m)

    the mean over images and labels; ``pos_weight [K]`` scales the first term. With hard
    targets this is timm's ``AsymmetricLossMultiLabel(reduction="mean")``; with soft ones
    (smoothing, mixup) each term keeps its own focusing weight, where timm interpolates one
    weight between them. Computed in float32 whatever the autocast precision (fp16
    probabilities underflow the log's floor). The focusing weights carry gradients (timm's
    default).
    """

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05, smoothing: float = 0.0,
                 pos_weight: torch.Tensor | None = None) -> None:  # fmt: skip
        super().__init__()
        if gamma_neg < 0 or gamma_pos < 0 or not 0.0 <= clip < 1.0:
            raise UsageError(
                f"asl needs gamma_neg, gamma_pos >= 0 and clip in [0, 1); got {gamma_neg}, {gamma_pos}, {clip}"
            )
        smooth_multi_hot(torch.zeros(()), smoothing)  # validates the value now, not at the first batch
        self.gamma_neg, self.gamma_pos, self.clip, self.smoothing = gamma_neg, gamma_pos, clip, smoothing
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(logits.float())
        t = smooth_multi_hot(targets.float(), self.smoothing)
        not_p = (1 - p + self.clip).clamp(max=1)  # 1 - p_m: the margin shifts negatives' probability down
        positive = t * (1 - p).pow(self.gamma_pos) * torch.log(p.clamp(min=_EPS))
        if self.pos_weight is not None:
            positive = positive * self.pos_weight
        negative = (1 - t) * (1 - not_p).pow(self.gamma_neg) * torch.log(not_p.clamp(min=_EPS))
        return -(positive + negative).mean()


def build_multilabel_loss(
    name: str = "bce",
    *,
    smoothing: float = 0.0,
    gamma_neg: float = 4.0,
    gamma_pos: float = 0.0,
    clip: float = 0.05,
    pos_weight: torch.Tensor | None = None,
) -> nn.Module:
    """The multi-label loss ``name`` (one of :data:`LOSSES`), mean over images and labels.

    Args:
        name: ``bce`` or ``asl``.
        smoothing: label smoothing towards 0.5 (both losses).
        gamma_neg: ASL's focusing exponent on negatives (the paper's default 4).
        gamma_pos: ASL's focusing exponent on positives (the paper's default 0).
        clip: ASL's probability margin on negatives (0.05 in the paper; 0: off).
        pos_weight: optional ``[K]`` weight of each label's positive term (both losses), e.g.
            :func:`balanced_pos_weight` for ``--balance weights``.

    Raises:
        UsageError: an unknown name or a value out of range.
    """
    if name not in LOSSES:
        raise unknown_name("multi-label loss", name, LOSSES)
    if name == "bce":
        return MultiLabelBCE(smoothing, pos_weight)
    return AsymmetricLoss(gamma_neg, gamma_pos, clip, smoothing, pos_weight)


def balanced_pos_weight(targets: torch.Tensor, max_weight: float = 10.0) -> torch.Tensor:
    """Per-label positive weights ``n_negative / n_positive`` from the training targets, at most ``max_weight``.

    With it, each label's positives and negatives weigh the same in the loss (the per-label
    form of ``--balance weights``). The cap keeps a label seen on a handful of images from
    dominating the gradient; a label with no positive gets 1 (it is never a target anyway).

    Args:
        targets: ``[N, K]`` multi-hot training targets.
        max_weight: the largest weight given (>= 1).

    Returns:
        float32 ``[K]``, each in ``[1, max_weight]`` when positives are the minority.
    """
    if max_weight < 1:
        raise UsageError(f"max_weight must be >= 1, got {max_weight}")
    positive = (targets > 0.5).sum(0).double()
    ratio = (len(targets) - positive) / positive.clamp_min(1)
    return torch.where(positive > 0, ratio.clamp(max=max_weight), torch.ones_like(ratio)).float()


class MultiLabelMixer:
    """Mixup and/or cutmix of a batch and its multi-hot targets, with probability ``prob``.

    Args:
        num_classes: K, the targets' width.
        mixup: mixup's Beta(α, α) parameter (0: off).
        cutmix: cutmix's Beta(α, α) parameter (0: off).
        prob: chance that a batch is mixed at all.
        switch_prob: with both on, the chance of cutmix rather than mixup for a batch.

    Image ``i`` is mixed with image ``B - 1 - i`` (the batch reversed, one λ per batch, as
    timm's ``mode="batch"``); in an odd batch the middle image meets itself and stays as it
    is. Random draws come from NumPy's global generator (as timm's), which checkpoints save
    and resume restores.
    """

    def __init__(self, num_classes: int, *, mixup: float = 0.0, cutmix: float = 0.0, prob: float = 1.0,
                 switch_prob: float = 0.5) -> None:  # fmt: skip
        if mixup <= 0 and cutmix <= 0:
            raise UsageError("MultiLabelMixer needs mixup > 0 or cutmix > 0")
        self.num_classes, self.mixup, self.cutmix = num_classes, mixup, cutmix
        self.prob, self.switch_prob = prob, switch_prob

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, C, H, W]`` images, ``[B, K]`` multi-hot -> mixed images and targets (new tensors)."""
        from timm.data.mixup import cutmix_bbox_and_lam

        if targets.ndim != 2 or targets.shape[1] != self.num_classes:
            raise ValueError(f"multi-hot targets [B, {self.num_classes}] expected, got {tuple(targets.shape)}")
        images, targets = images.clone(), targets.float()
        if np.random.rand() >= self.prob:
            return images, targets
        use_cutmix = self.cutmix > 0 and (self.mixup <= 0 or np.random.rand() < self.switch_prob)
        alpha = self.cutmix if use_cutmix else self.mixup
        lam = float(np.random.beta(alpha, alpha))
        flipped = images.flip(0)
        if use_cutmix:
            # the box is drawn for lam, then lam is corrected to the unpasted share of the clipped box
            (y0, y1, x0, x1), lam = cutmix_bbox_and_lam(images.shape, lam, correct_lam=True)
            images[:, :, y0:y1, x0:x1] = flipped[:, :, y0:y1, x0:x1]
        else:
            images = images * lam + flipped * (1 - lam)
        return images, targets * lam + targets.flip(0) * (1 - lam)


def build_multilabel_mixer(num_classes: int, mixup: float, cutmix: float, prob: float) -> MultiLabelMixer | None:
    """A :class:`MultiLabelMixer`, or None when both mixup and cutmix are off."""
    if mixup <= 0 and cutmix <= 0:
        return None
    return MultiLabelMixer(num_classes, mixup=mixup, cutmix=cutmix, prob=prob)

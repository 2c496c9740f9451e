"""Losses and batch mixing for multi-label training (several labels per image).

A multi-label model gives one logit per label, read through a sigmoid: each label is its
own yes/no question, so the targets are multi-hot ``[B, K]`` (1.0 where the image has the
label) rather than one class index.

* :func:`smooth_multi_hot`: label smoothing for independent binary targets, towards 0.5
  (``t * (1 - eps) + eps / 2``); the softmax rule ``eps / K`` would make every absent label
  nearly certain-no and is wrong here. timm's multi-label ``mixup_target`` and
  ``AsymmetricLossMultiLabel`` smooth the same way.
* :func:`build_multilabel_loss`: ``bce`` (``nn.BCEWithLogitsLoss`` on smoothed targets) or
  ``asl``, the asymmetric loss of Ridnik et al. (2021), "Asymmetric Loss For Multi-Label
  Classification": focusing ``(1 - p_t) ** gamma`` with a larger gamma for the many easy
  negatives, and a probability margin ``clip`` that discards very easy negatives. It is
  timm's ``AsymmetricLossMultiLabel`` with ``reduction="mean"``: averaged over images and
  labels like BCE, so a learning rate tuned for one suits the other (the paper sums).
* :class:`MultiLabelMixer`: mixup/cutmix on a batch and its multi-hot targets, timm's
  ``Mixup(multi_label=True)``: mixup gives ``lam * t1 + (1 - lam) * t2``, cutmix the same
  with ``lam`` the share of the image left unpasted. Smoothing is left to the loss (it is
  linear, so smoothing a mixed target equals mixing smoothed ones).

Nothing here knows datasets or models.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnkit.errors import UsageError, unknown_name

LOSSES: tuple[str, ...] = ("bce", "asl")


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
    if gamma_neg < 0 or gamma_pos < 0 or not 0.0 <= clip < 1.0:
        raise UsageError(
            f"asl needs gamma_neg, gamma_pos >= 0 and clip in [0, 1); got {gamma_neg}, {gamma_pos}, {clip}"
        )
    smooth_multi_hot(torch.zeros(()), smoothing)
    from timm.loss import AsymmetricLossMultiLabel

    return AsymmetricLossMultiLabel(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, smoothing=smoothing,
                                    reduction="mean", pos_weight=pos_weight)  # fmt: skip


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

    Each image is mixed with the batch reversed (timm's ``mode="batch"``: one λ per batch).
    timm needs an even batch; in an odd one the last image stays unmixed. Random draws come
    from NumPy's global generator (timm's), which checkpoints save and resume restores.
    """

    def __init__(self, num_classes: int, *, mixup: float = 0.0, cutmix: float = 0.0, prob: float = 1.0,
                 switch_prob: float = 0.5) -> None:  # fmt: skip
        from timm.data import Mixup

        if mixup <= 0 and cutmix <= 0:
            raise UsageError("MultiLabelMixer needs mixup > 0 or cutmix > 0")
        self.num_classes = num_classes
        self._mix = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, prob=prob, switch_prob=switch_prob, mode="batch",
                          label_smoothing=0.0, num_classes=num_classes, multi_label=True)  # fmt: skip

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, C, H, W]`` images, ``[B, K]`` multi-hot -> mixed images and targets (new tensors)."""
        if targets.ndim != 2 or targets.shape[1] != self.num_classes:
            raise ValueError(f"multi-hot targets [B, {self.num_classes}] expected, got {tuple(targets.shape)}")
        images, targets = images.clone(), targets.float()  # timm mixes in place
        even = len(images) - len(images) % 2
        if even == 0:
            return images, targets
        _, mixed_targets = self._mix(images[:even], targets[:even])  # a view: mixes ``images`` in place
        return images, torch.cat([mixed_targets.to(targets.dtype), targets[even:]])


def build_multilabel_mixer(num_classes: int, mixup: float, cutmix: float, prob: float) -> MultiLabelMixer | None:
    """A :class:`MultiLabelMixer`, or None when both mixup and cutmix are off."""
    if mixup <= 0 and cutmix <= 0:
        return None
    return MultiLabelMixer(num_classes, mixup=mixup, cutmix=cutmix, prob=prob)

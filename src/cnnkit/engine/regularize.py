"""Regularisers that act inside the training step: mixup/cutmix and an EMA of the weights.

* :class:`BatchMixer` mixes each batch with a shuffled copy of itself (torchvision's
  ``MixUp``/``CutMix``): the targets become class probabilities ``[B, K]`` whose mass is
  split between the two images' classes in proportion to the mixing (mixup's λ, cutmix's
  pasted area). ``nn.CrossEntropyLoss`` takes such soft targets as they are.
* :class:`WeightEma` keeps an exponential moving average of the weights (and buffers,
  so BatchNorm statistics follow) with ``torch.optim.swa_utils.AveragedModel``; the loop
  evaluates and checkpoints the average, which usually generalises better than the last
  step's weights. Its decay warms up (TensorFlow's ``ExponentialMovingAverage`` with
  ``num_updates``), so the first epochs evaluate an average of trained weights rather than
  one still dominated by the random initialisation.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from cnnkit.checkpoint import unwrap


class BatchMixer:
    """Mixup and/or cutmix applied to a whole batch, with probability ``prob``.

    Args:
        num_classes: K, the width of the soft targets.
        mixup: mixup's Beta(α, α) parameter (0: off).
        cutmix: cutmix's Beta(α, α) parameter (0: off).
        prob: chance that a batch is mixed at all (the rest keep hard labels as one-hot).
        switch_prob: with both on, the chance of cutmix rather than mixup for a batch.

    Random draws come from torch's global generator, which checkpoints save and resume
    restores, so a resumed run mixes as the uninterrupted one did.
    """

    def __init__(self, num_classes: int, *, mixup: float = 0.0, cutmix: float = 0.0, prob: float = 1.0,
                 switch_prob: float = 0.5) -> None:  # fmt: skip
        from torchvision.transforms import v2

        self.num_classes, self.prob, self.switch_prob = num_classes, prob, switch_prob
        self.mixup = v2.MixUp(alpha=mixup, num_classes=num_classes) if mixup > 0 else None
        self.cutmix = v2.CutMix(alpha=cutmix, num_classes=num_classes) if cutmix > 0 else None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, C, H, W]`` images and ``[B]`` labels -> mixed images and soft targets ``[B, K]``."""
        if float(torch.rand(())) >= self.prob:
            return images, nn.functional.one_hot(labels, self.num_classes).to(images.dtype)
        use_cutmix = self.cutmix is not None and (self.mixup is None or float(torch.rand(())) < self.switch_prob)
        return (self.cutmix if use_cutmix else self.mixup)(images, labels)


def build_mixer(num_classes: int, mixup: float, cutmix: float, prob: float) -> BatchMixer | None:
    """A :class:`BatchMixer`, or None when both mixup and cutmix are off."""
    if mixup <= 0 and cutmix <= 0:
        return None
    return BatchMixer(num_classes, mixup=mixup, cutmix=cutmix, prob=prob)


class WeightEma:
    """An exponential moving average of a model's weights and buffers.

    After update ``t`` (``t = 1, 2, ...``; the first copies the weights),
    ``average = d_t * average + (1 - d_t) * weights`` with the warmed-up decay
    ``d_t = min(decay, (1 + t) / (10 + t))``: 0.18 at the second update, 0.9 after 80,
    0.99 after 890, 0.999 after 8,990. Without the warm-up, ``decay = 0.999`` would
    leave the random initialisation 68 % of the average after a 391-step epoch.
    ``module`` is the averaged model, in eval mode, ready to evaluate or save.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.averaged = AveragedModel(unwrap(model), multi_avg_fn=self._lerp, use_buffers=True)
        self.averaged.eval()
        self._updates = 0  # a Python mirror of n_averaged: reading the tensor would sync the GPU

    def current_decay(self) -> float:
        """The decay the next update uses (after ``updates`` updates so far)."""
        return min(self.decay, (1 + self._updates) / (10 + self._updates))

    @torch.no_grad()
    def _lerp(self, averaged: list[torch.Tensor], current: list[torch.Tensor], _n: torch.Tensor) -> None:
        weight = 1.0 - self.current_decay()
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, weight)
        else:  # integer buffers such as BatchNorm's num_batches_tracked
            for mine, theirs in zip(averaged, current, strict=True):
                mine.copy_(mine * (1.0 - weight) + theirs * weight)

    @property
    def module(self) -> nn.Module:
        return self.averaged.module

    @property
    def updates(self) -> int:
        return self._updates

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.averaged.update_parameters(unwrap(model))
        self._updates += 1

    def load(self, state_dict: dict[str, torch.Tensor], updates: int) -> None:
        """Restore an average saved as ``module.state_dict()`` after ``updates`` updates."""
        self.module.load_state_dict(state_dict)
        self.averaged.n_averaged.fill_(updates)
        self._updates = updates

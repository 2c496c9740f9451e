"""Regularisers that act inside the training step: mixup/cutmix and an EMA of the weights.

* :class:`BatchMixer` mixes each batch with a shuffled copy of itself (torchvision's
  ``MixUp``/``CutMix``): the targets become class probabilities ``[B, K]`` whose mass is
  split between the two images' classes in proportion to the mixing (mixup's λ, cutmix's
  pasted area). ``nn.CrossEntropyLoss`` takes such soft targets as they are.
* :class:`WeightEma` keeps an exponential moving average of the weights (and buffers,
  so BatchNorm statistics follow) with ``torch.optim.swa_utils.AveragedModel``; the loop
  evaluates and checkpoints the average, which usually generalises better than the last
  step's weights.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from cnnkit.engine.checkpoint import unwrap


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

    After each optimizer step, ``average = decay * average + (1 - decay) * weights``
    (the first update copies the weights). ``module`` is the averaged model, in eval mode,
    ready to evaluate or save.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.averaged = AveragedModel(unwrap(model), multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.averaged.eval()

    @property
    def module(self) -> nn.Module:
        return self.averaged.module

    @property
    def updates(self) -> int:
        return int(self.averaged.n_averaged)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.averaged.update_parameters(unwrap(model))

    def load(self, state_dict: dict[str, torch.Tensor], updates: int) -> None:
        """Restore an average saved as ``module.state_dict()`` after ``updates`` updates."""
        self.module.load_state_dict(state_dict)
        self.averaged.n_averaged.fill_(updates)

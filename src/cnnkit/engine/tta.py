"""Test-time augmentation: average a model's predictions over a few views of each image.

One place defines the views, so validation during training (``--tta``), ``cnnkit eval``
and ``Predictor`` agree. Modes:

* ``none``: the image alone.
* ``flip``: the image and its mirror (for models trained with horizontal flips).
* ``shift``: the image and four one-pixel shifts (digits and letters: a mirror changes them).
* ``flip-shift``: the image, its mirror, and both shifted one pixel up-left and down-right
  (airbench's strongest setting on CIFAR-10).
"""

from __future__ import annotations

import torch
from torch import nn

from cnnkit.config import TTA_MODES as TTA_MODES  # declared with the config schema (no torch needed)
from cnnkit.config import check_choice


def check_tta(mode: str) -> str:
    """``mode`` itself, or a UsageError listing the valid modes (the ``train.tta`` rule)."""
    return check_choice("train.tta", mode)


def tta_views(images: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """The views of a normalised batch ``[B, C, H, W]`` for ``mode`` (the original first)."""
    check_tta(mode)
    if mode == "none":
        return [images]
    if mode == "flip":
        return [images, images.flip(-1)]
    if mode == "shift":
        return [images] + [shift(images, axis, pixels) for axis in (2, 3) for pixels in (1, -1)]
    mirrored = images.flip(-1)
    return [images, mirrored] + [shift(shift(view, 2, p), 3, p) for view in (images, mirrored) for p in (1, -1)]


def tta_logits(model: nn.Module, images: torch.Tensor, mode: str) -> torch.Tensor:
    """Logits ``[B, K]`` averaged over the views of ``mode`` (one forward pass per view)."""
    if mode == "none":
        return model(images)
    return torch.stack([model(view).float() for view in tta_views(images, mode)]).mean(0)


def shift(images: torch.Tensor, axis: int, pixels: int) -> torch.Tensor:
    """Shift ``[B, C, H, W]`` by ``pixels`` along ``axis`` (2: rows, 3: columns), repeating the edge."""
    rolled = images.roll(pixels, dims=axis)
    edge = images.narrow(axis, 0 if pixels > 0 else images.shape[axis] - 1, 1)
    index = slice(0, pixels) if pixels > 0 else slice(images.shape[axis] + pixels, None)
    if axis == 2:
        rolled[:, :, index] = edge
    else:
        rolled[:, :, :, index] = edge
    return rolled

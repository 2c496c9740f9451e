"""The shape every cnnkit classifier has: a conv trunk (``features``) and a ``head``."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import functional_call


class InputTooSmallError(ValueError):
    """The input leaves no pixels for some conv or pool layer of the trunk."""


def trunk_output_shape(
    features: nn.Module, in_chans: int, input_size: tuple[int, int]
) -> torch.Size:
    """Shape ``[C, H, W]`` that ``features`` gives for one ``in_chans x H x W`` image.

    Runs on the meta device: shapes only, no arithmetic, no memory, and the module's own
    parameters and buffers (BatchNorm running stats included) are left untouched.

    Raises:
        InputTooSmallError: a layer has no pixels left to work on.
    """
    state = {**dict(features.named_parameters()), **dict(features.named_buffers())}
    meta_state = {key: torch.empty_like(t, device="meta") for key, t in state.items()}
    # Batch 2: BatchNorm in training mode wants more than one value per channel.
    x = torch.empty(2, in_chans, *input_size, device="meta")
    try:
        out = functional_call(features, meta_state, (x,))
    except RuntimeError as err:  # conv/pool shape checks: "input size ... too small"
        raise InputTooSmallError(str(err)) from err
    if out.numel() == 0:
        raise InputTooSmallError(f"empty feature maps {list(out.shape[1:])}")
    return out.shape[1:]


class ClassifierBase(nn.Module):
    """A classifier split into a conv trunk and a head (timm's ``forward_features``/``head``).

    Subclasses set ``features`` (images ``[B, C, H, W]`` -> feature maps ``[B, C', H', W']``)
    and ``head`` (feature maps -> logits ``[B, num_classes]``; it flattens inside and its
    last ``nn.Linear`` produces the logits). Sizes inside the head come from
    :meth:`flat_size`, never from a per-dataset constant.

    Attributes:
        num_classes: number of logits the head produces.
    """

    features: nn.Module
    head: nn.Module

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def flat_size(self, in_chans: int, input_size: tuple[int, int]) -> int:
        """Number of values per image that ``features`` hands to the head.

        Raises:
            InputTooSmallError: ``input_size`` is too small for the trunk.
        """
        return math.prod(trunk_output_shape(self.features, in_chans, input_size))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` -> feature maps ``[B, C', H', W']``."""
        return self.features(x)

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        """Feature maps ``[B, C', H', W']`` -> logits ``[B, num_classes]``."""
        return self.head(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` -> logits ``[B, num_classes]`` (no softmax)."""
        return self.forward_head(self.forward_features(x))

    def reset_head(self, num_classes: int) -> None:
        """Make the head produce ``num_classes`` logits (for fine-tuning on new classes).

        The head's last ``nn.Linear`` is replaced by a freshly initialised one on the same
        device and dtype; every other layer keeps its weights.
        """
        linears = [(name, m) for name, m in self.head.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise TypeError(f"{type(self).__name__}.head has no nn.Linear to reset")
        name, old = linears[-1]
        new = nn.Linear(
            old.in_features,
            num_classes,
            bias=old.bias is not None,
            device=old.weight.device,
            dtype=old.weight.dtype,
        )
        self.head.set_submodule(name, new)
        self.num_classes = num_classes

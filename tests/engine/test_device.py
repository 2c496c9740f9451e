"""Runtime switches of :mod:`cnnkit.device` that change numerics."""

from __future__ import annotations

import sys

import torch
from torch import nn

from cnnkit.device import denormals_as_zero

DENORMAL = 1e-39  # below float32's smallest normal number, 1.18e-38


def test_denormals_count_as_zero_inside_the_block_and_come_back_after() -> None:
    weights = torch.full((4, 4), DENORMAL)
    layer = nn.Linear(4, 4, bias=False)
    layer.weight.data.copy_(weights)

    with denormals_as_zero():
        inside = layer(torch.ones(1, 4))
        assert (torch.tensor([DENORMAL]) * 1.0).item() == 0.0

    assert torch.count_nonzero(inside) == 0  # the denormal weights acted as zeros
    assert (torch.tensor([DENORMAL]) * 1.0).item() > 0.0
    assert sys.float_info.min / 2 > 0.0


def test_a_nested_block_keeps_the_outer_mode() -> None:
    with denormals_as_zero():
        with denormals_as_zero():
            pass
        assert sys.float_info.min / 2 == 0.0  # still flushing: the outer block is not over
    assert sys.float_info.min / 2 > 0.0

"""An example of your own model for ``cnnkit train --model examples/my_models.py:SmallResNet``.

cnnkit calls the class with the arguments its signature names among ``num_classes``,
``in_chans`` and ``input_size``, plus ``--model-kwargs`` (here ``width`` and ``depth``).
The checkpoint records this file's path and SHA-256; commands that load the run
(``predict``, ``export``, ``serve``...) import it only with ``--trust-code examples/my_models.py``.
"""

from __future__ import annotations

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity shortcut."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


class SmallResNet(nn.Module):
    """A small residual CNN: a stem, ``depth`` stages of one block each (halving the size), global pooling."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: int = 32, depth: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_chans, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                   nn.ReLU(inplace=True)]  # fmt: skip
        channels = width
        for stage in range(depth):
            layers.append(ResidualBlock(channels))
            if stage < depth - 1:  # downsample and widen between stages
                layers += [nn.Conv2d(channels, channels * 2, 3, stride=2, padding=1, bias=False),
                           nn.BatchNorm2d(channels * 2), nn.ReLU(inplace=True)]  # fmt: skip
                channels *= 2
        self.features = nn.Sequential(*layers)  # `cnnkit explain` finds the last conv here
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

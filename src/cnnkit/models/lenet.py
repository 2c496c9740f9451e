"""LeNet-5 (the mnist-lenet seed): two 5x5 convs and a 120-84 MLP head."""

from __future__ import annotations

from torch import nn

from cnnkit.models.base import ClassifierBase
from cnnkit.models.registry import register_model


@register_model(
    "lenet",
    default_input_size=(28, 28),
    default_in_chans=1,
    description="LeNet-5 for 28x28 digits (mnist-lenet seed), 44,426 params",
)
class LeNet(ClassifierBase):
    """Conv(6, 5x5) and Conv(16, 5x5), each with ReLU and 2x2 max-pool, then fc 120-84-classes.

    Args:
        num_classes: number of logits.
        in_chans: image channels.
        input_size: (height, width); 28x28 gives the seed's 16x4x4 = 256 flat features.
    """

    def __init__(
        self, num_classes: int = 10, in_chans: int = 1, input_size: tuple[int, int] = (28, 28)
    ) -> None:
        super().__init__(num_classes)
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 6, 5),  # [B, C, 28, 28] -> [B, 6, 24, 24]
            nn.ReLU(),
            nn.MaxPool2d(2),  # -> [B, 6, 12, 12]
            nn.Conv2d(6, 16, 5),  # -> [B, 16, 8, 8]
            nn.ReLU(),
            nn.MaxPool2d(2),  # -> [B, 16, 4, 4]
        )
        flat = self.flat_size(in_chans, input_size)  # 256 at 28x28
        self.head = nn.Sequential(
            nn.Flatten(),  # -> [B, flat]
            nn.Linear(flat, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),  # -> [B, num_classes]
        )

"""The from-scratch CNNs of two seeds: CifarCNN (cifar10-cnn) and the 10-conv animals-cnn."""

from __future__ import annotations

from itertools import pairwise

from torch import nn

from cnnkit.models.base import ClassifierBase
from cnnkit.models.registry import register_model


@register_model(
    "cifar_cnn",
    default_input_size=(32, 32),
    default_in_chans=3,
    description="CifarCNN: 6 convs with BatchNorm and dropout (cifar10-cnn seed), 5.85 M params",
)
class CifarCNN(ClassifierBase):
    """Three blocks of two 3x3 convs (padding 1) and a 2x2 max-pool; head 1024-512-classes.

    Args:
        num_classes: number of logits.
        in_chans: image channels.
        input_size: (height, width); 32x32 gives the seed's 256x4x4 = 4096 flat features.
    """

    def __init__(
        self, num_classes: int = 10, in_chans: int = 3, input_size: tuple[int, int] = (32, 32)
    ) -> None:
        super().__init__(num_classes)
        self.features = nn.Sequential(
            # block 1: [B, C, 32, 32] -> [B, 64, 16, 16]
            nn.Conv2d(in_chans, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            # block 2: -> [B, 128, 8, 8]
            nn.Conv2d(64, 128, 3, padding=1),
            nn.BatchNorm2d(128),
            nn.ReLU(),
            nn.Conv2d(128, 128, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout2d(0.05),
            # block 3: -> [B, 256, 4, 4]
            nn.Conv2d(128, 256, 3, padding=1),
            nn.BatchNorm2d(256),
            nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        flat = self.flat_size(in_chans, input_size)  # 4096 at 32x32
        self.head = nn.Sequential(
            nn.Flatten(),  # -> [B, flat]
            nn.Dropout(0.1),
            nn.Linear(flat, 1024),
            nn.ReLU(),
            nn.Linear(1024, 512),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Linear(512, num_classes),  # -> [B, num_classes]
        )


def _unpadded_block(in_chans: int, out_chans: int) -> list[nn.Module]:
    """Two unpadded 3x3 convs and a 2x2 max-pool: side s -> (s - 4) // 2."""
    return [
        nn.Conv2d(in_chans, out_chans, 3),
        nn.ReLU(),
        nn.Conv2d(out_chans, out_chans, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
    ]


@register_model(
    "animals_cnn",
    default_input_size=(256, 256),
    default_in_chans=3,
    description="10-conv CNN from scratch for photos (animals-cnn seed), 2.23 M params",
)
class AnimalsCNN(ClassifierBase):
    """Five blocks of two unpadded 3x3 convs and a max-pool (16-32-64-128-256 channels);
    head Dropout(0.25), Linear(flat, 256), ReLU, Dropout(0.5), Linear(256, classes).

    Args:
        num_classes: number of logits.
        in_chans: image channels.
        input_size: (height, width); 256x256 gives the seed's 256x4x4 = 4096 flat features.
            The smallest side that fits is 156.
    """

    def __init__(
        self, num_classes: int = 10, in_chans: int = 3, input_size: tuple[int, int] = (256, 256)
    ) -> None:
        super().__init__(num_classes)
        widths = [in_chans, 16, 32, 64, 128, 256]
        layers: list[nn.Module] = []
        for cin, cout in pairwise(widths):
            layers += _unpadded_block(cin, cout)
        # sides at 256x256: 256 -> 126 -> 61 -> 28 -> 12 -> 4, ending at [B, 256, 4, 4]
        self.features = nn.Sequential(*layers)
        flat = self.flat_size(in_chans, input_size)  # 4096 at 256x256
        self.head = nn.Sequential(
            nn.Flatten(),  # -> [B, flat]
            nn.Dropout(0.25),
            nn.Linear(flat, 256),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(256, num_classes),  # -> [B, num_classes]
        )

"""VGG from a cfg table (the cifar10-vgg16 seed): vgg11/13/16/19, each with or without BN."""

from __future__ import annotations

from functools import partial

from torch import nn

from cnnkit.models.base import ClassifierBase
from cnnkit.models.registry import register_model

# Output channels of each 3x3 conv (padding 1); "M" is a 2x2 max-pool that halves the side.
CFGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}  # fmt: skip


def make_features(cfg: list[int | str], in_chans: int, batch_norm: bool) -> nn.Sequential:
    """The conv trunk for ``cfg``; layer order matches torchvision's ``VGG.features``, so
    its state dict keys do too. Each "M" halves the side: 32x32 ends at [B, 512, 1, 1]."""
    layers: list[nn.Module] = []
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        layers.append(nn.Conv2d(in_chans, v, 3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU())
        in_chans = v
    return nn.Sequential(*layers)


class VGG(ClassifierBase):
    """VGG with the CIFAR seed's head: Dropout, Linear(flat, 512), ReLU, Dropout,
    Linear(512, 512), ReLU, Linear(512, classes).

    Conv weights are drawn from N(0, sqrt(2 / n)) with n = k * k * out_channels (Kaiming,
    fan-out), conv biases are zero, BatchNorm starts as the identity (weight 1, bias 0).

    Args:
        cfg: conv widths and "M" pools (see ``CFGS``).
        batch_norm: BatchNorm after every conv.
        num_classes: number of logits.
        in_chans: image channels.
        input_size: (height, width); 32x32 gives 512 flat features, 64x64 gives 2048.
        dropout: drop probability of both head dropouts.
    """

    def __init__(
        self,
        cfg: list[int | str],
        batch_norm: bool,
        num_classes: int = 10,
        in_chans: int = 3,
        input_size: tuple[int, int] = (32, 32),
        dropout: float = 0.5,
    ) -> None:
        super().__init__(num_classes)
        self.features = make_features(cfg, in_chans, batch_norm)
        flat = self.flat_size(in_chans, input_size)  # 512 at 32x32
        self.head = nn.Sequential(
            nn.Flatten(),  # [B, 512, H/32, W/32] -> [B, flat]
            nn.Dropout(dropout),
            nn.Linear(flat, 512),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, num_classes),  # -> [B, num_classes]
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def _register_variants() -> None:
    """One registry entry per (depth, BN) pair; ``partial`` binds cfg and batch_norm, so
    each entry accepts num_classes, in_chans, input_size and dropout."""
    for depth, cfg in CFGS.items():
        for batch_norm in (False, True):
            name = f"{depth}_bn" if batch_norm else depth
            register_model(
                name,
                default_input_size=(32, 32),
                default_in_chans=3,
                description=f"{depth.upper()}{' with BatchNorm' if batch_norm else ''}, "
                "dropout head (cifar10-vgg16 seed)",
            )(partial(VGG, cfg, batch_norm))


_register_variants()

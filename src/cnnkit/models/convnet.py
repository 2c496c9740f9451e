"""``convnet``: a CNN described by data, no code (``--layers "16,16,M,32,32,M,64,M" --head 256``).

The trunk is a VGG-style cfg list: each number a 3x3 conv (padding 1) with that many
output channels, optional BatchNorm, and ReLU; ``M`` a 2x2 max-pool and ``A`` a 2x2
average pool (each halves the side); ``G`` a global average pool (to 1x1, so the head's
size stops depending on the image size). The head flattens, then each hidden layer is
Linear, ReLU and (with ``dropout`` > 0) Dropout, and a last Linear gives the logits.
"""

from __future__ import annotations

from torch import nn

from cnnkit.errors import UsageError
from cnnkit.models.base import ClassifierBase
from cnnkit.models.registry import register_model

POOLS = {"M": "2x2 max-pool", "A": "2x2 average pool", "G": "global average pool"}
_EXAMPLE = "16,16,M,32,32,M,64,M"


def parse_layers(layers: str | int | list[int | str] | tuple[int | str, ...]) -> list[int | str]:
    """``"16,16,M,32"`` (or a list, or one width) -> ``[16, 16, "M", 32]``.

    Raises:
        UsageError: a token that is neither a positive width nor a pool, or no conv at all.
    """
    tokens = str(layers).replace(" ", "").split(",") if isinstance(layers, (str, int)) else list(layers)
    cfg: list[int | str] = []
    for token in tokens:
        text = str(token).strip().upper()
        if text in POOLS:
            cfg.append(text)
        elif text.isdigit() and int(text) > 0:
            cfg.append(int(text))
        else:
            pools = ", ".join(f"{k} ({v})" for k, v in POOLS.items())
            raise UsageError(f"convnet layers: {token!r} is neither a conv width (a positive integer) nor a pool "
                             f"({pools}); example: --layers {_EXAMPLE}")  # fmt: skip
    if not any(isinstance(v, int) for v in cfg):
        raise UsageError(f"convnet layers {layers!r} have no conv; example: --layers {_EXAMPLE}")
    return cfg


def parse_head(head: str | int | list[int] | tuple[int, ...] | None) -> list[int]:
    """Hidden units of the head: ``256``, ``"256,128"``, a list, or None/0/"" (none)."""
    if head is None or head == "" or head == 0 or str(head).lower() == "none":
        return []
    tokens = str(head).replace(" ", "").split(",") if isinstance(head, (str, int)) else list(head)
    if not all(str(t).isdigit() and int(t) > 0 for t in tokens):
        raise UsageError(f"convnet head {head!r}: give hidden layer sizes as positive integers, e.g. --head 256 "
                         "or --head 256,128 (0 for none)")  # fmt: skip
    return [int(t) for t in tokens]


def make_trunk(cfg: list[int | str], in_chans: int, batch_norm: bool) -> nn.Sequential:
    """The conv trunk for a parsed cfg: ``[B, C, H, W]`` -> ``[B, last width, H / 2^pools, W / 2^pools]``."""
    layers: list[nn.Module] = []
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        elif v == "A":
            layers.append(nn.AvgPool2d(2))
        elif v == "G":
            layers.append(nn.AdaptiveAvgPool2d(1))
        else:
            layers.append(nn.Conv2d(in_chans, v, 3, padding=1, bias=not batch_norm))  # BN has the bias
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU())
            in_chans = v
    return nn.Sequential(*layers)


@register_model(
    "convnet",
    default_input_size=(32, 32),
    default_in_chans=3,
    description="no-code CNN: --layers 16,16,M,32,M (convs, M/A pools, G global pool), --head, --dropout",
)
class ConvNet(ClassifierBase):
    """A plain CNN whose layers are data (see the module docstring).

    Conv weights are Kaiming-normal (fan-out), conv biases zero, BatchNorm the identity.

    Args:
        num_classes: number of logits.
        in_chans: image channels.
        input_size: (height, width); the head's first Linear is sized from it.
        layers: the trunk's cfg: conv widths and ``M``/``A``/``G`` pools, as a
            comma-separated string (``"32,32,M,64,64,M"``) or a list.
        head: hidden layer sizes of the head (``256``, ``"256,128"``; None or 0: a single
            Linear after the flatten).
        dropout: drop probability after each hidden layer (before the last Linear when
            there is none).
        batch_norm: BatchNorm after every conv.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        input_size: tuple[int, int] = (32, 32),
        layers: str | list[int | str] = "32,32,M,64,64,M",
        head: str | int | list[int] | None = 128,
        dropout: float = 0.0,
        batch_norm: bool = True,
    ) -> None:
        super().__init__(num_classes)
        if not 0.0 <= float(dropout) < 1.0:
            raise UsageError(f"convnet dropout must be in [0, 1), got {dropout}")
        self.features = make_trunk(parse_layers(layers), in_chans, bool(batch_norm))
        flat = self.flat_size(in_chans, input_size)  # 64 * 8 * 8 = 4096 for the default at 32x32
        blocks: list[nn.Module] = [nn.Flatten()]  # -> [B, flat]
        for hidden in parse_head(head):
            blocks += [nn.Linear(flat, hidden), nn.ReLU()]
            blocks += [nn.Dropout(dropout)] if dropout > 0 else []
            flat = hidden
        if dropout > 0 and not parse_head(head):
            blocks.append(nn.Dropout(dropout))
        blocks.append(nn.Linear(flat, num_classes))  # -> [B, num_classes]
        self.head = nn.Sequential(*blocks)
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

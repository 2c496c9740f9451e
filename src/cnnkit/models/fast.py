"""Networks built to train fast: airbench94's CIFAR net and a small BatchNorm digit net.

``airbench`` follows Keller Jordan's airbench94 (github.com/KellerJordan/cifar10-airbench):
a frozen 2x2 conv stem initialised by *whitening* the training images' 2x2 patches, then
three blocks of conv-pool-BN-GELU-conv-BN-GELU, global max-pool, a bias-free linear head
and a fixed logit scale. Its stem needs data: :meth:`AirbenchNet.init_from_data`, which
``cnnkit train`` calls with a few thousand training images before training starts.

``mnist_fast`` follows tuomaso/train_mnist_fast (99 % on MNIST in one epoch), with
BatchNorm after each conv so that a large learning rate is stable from the first step.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnkit.models.base import ClassifierBase
from cnnkit.models.registry import register_model

# airbench94's block widths; other widths are data (``widths=[...]``), not other classes.
AIRBENCH94_WIDTHS = (64, 256, 256)


class WhiteningConv(nn.Conv2d):
    """A ``k x k`` conv whose weights are a frozen whitening transform of image patches.

    The weight is a buffer, not a parameter: it is saved and loaded with the model but
    never trained. The bias is a parameter and trains. Until :meth:`init_from_data` runs
    the weights are PyTorch's default random init (the network still works, just slower
    to train).

    Outputs ``2 * in_channels * k * k`` channels: one per eigenvector of the patch
    covariance, scaled to unit variance, and its negation (so a following GELU keeps both
    signs of every whitened direction).
    """

    def __init__(self, in_channels: int, kernel_size: int = 2) -> None:
        patch = in_channels * kernel_size * kernel_size
        super().__init__(in_channels, 2 * patch, kernel_size, padding=0, bias=True)
        weight = self.weight.detach().clone()
        del self.weight  # the Parameter made by nn.Conv2d
        self.register_buffer("weight", weight)
        nn.init.zeros_(self.bias)

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor, eps: float = 5e-4, chunk: int = 512) -> None:
        """Set the weights to whiten the ``k x k`` patches of ``images``.

        Args:
            images: float ``[N, C, H, W]``, normalised as the model will see them.
            eps: added to each eigenvalue before dividing by its square root (airbench's
                5e-4 keeps near-constant directions from being blown up into noise).
            chunk: images per step of the covariance sum (bounds memory).
        """
        c, (kh, kw) = self.in_channels, self.kernel_size
        size = c * kh * kw
        covariance = torch.zeros(size, size, dtype=torch.float64, device=images.device)
        count = 0
        for part in images.split(chunk):
            # [n, C, H, W] -> [n, C, H-kh+1, W-kw+1, kh, kw] -> [n * positions, C * kh * kw]
            patches = part.float().unfold(2, kh, 1).unfold(3, kw, 1)
            patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, size).double()
            covariance += patches.T @ patches
            count += patches.shape[0]
        covariance /= max(count, 1)  # second moment of the (already centred) patches
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)  # strongest first
        filters = (eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None]).reshape(size, c, kh, kw)
        self.weight.copy_(torch.cat([filters, -filters]).to(self.weight))  # [2 * size, C, kh, kw]


class ShiftBatchNorm(nn.BatchNorm2d):
    """BatchNorm with a learned shift but no learned scale (airbench: the next conv scales).

    Args:
        channels: feature channels.
        momentum: PyTorch's convention (weight of the new batch in the running stats);
            airbench's "batchnorm momentum 0.6" is 0.4 here.
        eps: added to the variance (airbench uses 1e-12).
    """

    def __init__(self, channels: int, momentum: float = 0.4, eps: float = 1e-12) -> None:
        super().__init__(channels, eps=eps, momentum=momentum, affine=True)
        # A fixed scale of 1 as a buffer, not weight=None: CUDA's batch-norm backward
        # returns no bias gradient without a weight tensor.
        del self.weight
        self.register_buffer("weight", torch.ones(channels))


class DiracConv(nn.Conv2d):
    """3x3 'same' conv without bias, whose first ``in_channels`` filters start as identities.

    Starting each block close to the identity lets signal and gradient pass unchanged
    through the fresh network (airbench: fewer epochs to 94 %).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 3, padding=1, bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.dirac_(self.weight[: min(self.in_channels, self.out_channels)])


class LogitScale(nn.Module):
    """Multiply the logits by a fixed factor (airbench: 1/9 keeps early softmax soft)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}"


def _airbench_block(in_chans: int, out_chans: int, bn_momentum: float) -> nn.Sequential:
    """conv, 2x2 max-pool, BN, GELU, conv, BN, GELU: side s -> s // 2."""
    return nn.Sequential(
        DiracConv(in_chans, out_chans),
        nn.MaxPool2d(2),  # pooling before BN and GELU: 4x less work for them
        ShiftBatchNorm(out_chans, momentum=bn_momentum),
        nn.GELU(),
        DiracConv(out_chans, out_chans),
        ShiftBatchNorm(out_chans, momentum=bn_momentum),
        nn.GELU(),
    )


@register_model(
    "airbench",
    default_input_size=(32, 32),
    default_in_chans=3,
    description="airbench94-style CIFAR net: whitened 2x2 stem, 3 conv-BN-GELU blocks (64/256/256), 1.97 M params",
)
class AirbenchNet(ClassifierBase):
    """airbench94's network: whitening stem, three conv blocks, global max-pool, linear head.

    Call :meth:`init_from_data` with a few thousand normalised training images before
    training (``cnnkit train`` does); the stem is then frozen.

    Args:
        num_classes: number of logits.
        in_chans: image channels.
        input_size: (height, width); 32x32 gives [B, 256, 1, 1] features (31 -> 15 -> 7 -> 3 -> 1).
        widths: output channels of the three blocks (airbench94: 64, 256, 256).
        logit_scale: fixed factor on the logits (airbench94: 1/9).
        bn_momentum: BatchNorm momentum in PyTorch's convention (airbench94's 0.6 -> 0.4).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        input_size: tuple[int, int] = (32, 32),
        widths: list[int] | tuple[int, ...] = AIRBENCH94_WIDTHS,
        logit_scale: float = 1 / 9,
        bn_momentum: float = 0.4,
    ) -> None:
        super().__init__(num_classes)
        stem = WhiteningConv(in_chans, kernel_size=2)  # [B, C, 32, 32] -> [B, 8C, 31, 31]
        layers: list[nn.Module] = [stem, nn.GELU()]
        chans = stem.out_channels
        for width in widths:  # each block halves the side: 31 -> 15 -> 7 -> 3
            layers.append(_airbench_block(chans, int(width), bn_momentum))
            chans = int(width)
        layers.append(nn.AdaptiveMaxPool2d(1))  # -> [B, widths[-1], 1, 1]; airbench's MaxPool2d(3) at 32x32
        self.features = nn.Sequential(*layers)
        self.flat_size(in_chans, input_size)  # raises InputTooSmallError below 9x9
        self.head = nn.Sequential(
            nn.Flatten(),  # -> [B, widths[-1]]
            nn.Linear(chans, num_classes, bias=False),  # -> [B, num_classes]
            LogitScale(logit_scale),
        )

    @property
    def stem(self) -> WhiteningConv:
        return self.features[0]

    def init_from_data(self, images: torch.Tensor) -> None:
        """Whiten the stem on ``images`` (float ``[N, C, H, W]``, normalised; airbench uses 5,000)."""
        self.stem.init_from_data(images)


@register_model(
    "mnist_fast",
    default_input_size=(28, 28),
    default_in_chans=1,
    description="small BN conv net for 99% MNIST in one epoch (train_mnist_fast style), 215,250 params",
)
class FastDigitNet(ClassifierBase):
    """Conv 5x5 and conv 3x3, each followed by 2x2 max-pool, BatchNorm and ReLU; fc hidden-classes.

    Pooling comes before BatchNorm and ReLU (same result for ReLU, 4x less work).

    Args:
        num_classes: number of logits.
        in_chans: image channels.
        input_size: (height, width); 28x28 gives [B, 32, 5, 5] = 800 features.
        widths: channels of the two convs (train_mnist_fast: 24, 32).
        hidden: units of the hidden fully connected layer (train_mnist_fast: 256).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        input_size: tuple[int, int] = (28, 28),
        widths: list[int] | tuple[int, int] = (24, 32),
        hidden: int = 256,
    ) -> None:
        super().__init__(num_classes)
        first, second = (int(w) for w in widths)
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, first, 5, bias=False),  # [B, C, 28, 28] -> [B, 24, 24, 24]
            nn.MaxPool2d(2),  # -> [B, 24, 12, 12]
            nn.BatchNorm2d(first),
            nn.ReLU(),
            nn.Conv2d(first, second, 3, bias=False),  # -> [B, 32, 10, 10]
            nn.MaxPool2d(2),  # -> [B, 32, 5, 5]
            nn.BatchNorm2d(second),
            nn.ReLU(),
        )
        flat = self.flat_size(in_chans, input_size)  # 800 at 28x28
        self.head = nn.Sequential(
            nn.Flatten(),  # -> [B, flat]
            nn.Linear(flat, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),  # -> [B, num_classes]
        )

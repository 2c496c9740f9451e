"""The in-memory data path for small datasets (MNIST, CIFAR, the embedded default).

Images stay as one uint8 tensor ``[N, C, H, W]`` (4x smaller than float, and on the GPU
when there is one); each batch is gathered by index, augmented as a batch and normalised
in one step. No per-sample Python, no worker processes: this is why it is fast.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from cnnkit.data.spec import Batch, Preprocess
from cnnkit.data.transforms import Augment, augment_batch


def epoch_order(count: int, *, shuffle: bool, seed: int, epoch: int) -> torch.Tensor:
    """Sample order of one epoch: a permutation that depends only on ``(seed, epoch)``.

    Every loader in cnnkit draws its order here, so a resumed run sees the same data order.
    """
    if not shuffle:
        return torch.arange(count)
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def batch_count(count: int, batch_size: int, drop_last: bool) -> int:
    """Batches per epoch (the last incomplete one dropped when ``drop_last``)."""
    return count // batch_size if drop_last else -(-count // batch_size)


class EpochBatches:
    """What every in-memory loader shares: batch count, epoch bookkeeping, seeded order.

    Subclasses set ``labels`` (``[N]``) through ``__init__`` and draw each epoch's order
    with :meth:`_next_order`.
    """

    def __init__(self, labels: torch.Tensor, batch_size: int, *, shuffle: bool, drop_last: bool, seed: int) -> None:
        self.labels = labels
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.drop_last = drop_last and len(labels) > batch_size
        self._next_epoch = 0

    def __len__(self) -> int:
        return batch_count(len(self.labels), self.batch_size, self.drop_last)

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` produce epoch ``epoch``'s order (and augmentation)."""
        self._next_epoch = epoch

    def _next_order(self) -> tuple[int, torch.Tensor]:
        """The epoch this ``iter()`` produces and its sample order; advances the epoch."""
        epoch, self._next_epoch = self._next_epoch, self._next_epoch + 1
        return epoch, epoch_order(len(self.labels), shuffle=self.shuffle, seed=self.seed, epoch=epoch)

    def _batch_slices(self) -> range:
        return range(0, len(self) * self.batch_size, self.batch_size)


class TensorLoader(EpochBatches):
    """Batches of normalised images from an in-memory uint8 tensor.

    The order of epoch ``e`` depends only on ``(seed, e)``, so a run can be resumed with
    the same data order (see :meth:`set_epoch`). Each ``iter()`` starts the next epoch
    unless :meth:`set_epoch` was called just before.

    Args:
        images: uint8 ``[N, C, H, W]`` already at the model's input size.
        labels: int64 ``[N]``.
        preprocess: supplies mean/std for normalisation.
        batch_size: images per batch.
        shuffle: draw a new permutation every epoch.
        augment: batched train-time augmentation (None: none).
        drop_last: drop the last incomplete batch (keeps BatchNorm happy when training).
        seed: base seed of the shuffling/augmentation RNG.
        device: where the images live and batches are produced.
        output_size: (height, width) to enlarge each batch to after augmentation
            (None: the stored size). Small images fed to a large model stay small in memory.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        preprocess: Preprocess,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: Augment | None = None,
        drop_last: bool = False,
        seed: int = 0,
        device: str | torch.device = "cpu",
        output_size: tuple[int, int] | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError("images must be a uint8 tensor [N, C, H, W]")
        super().__init__(labels.to(device=device, dtype=torch.long), batch_size, shuffle=shuffle,
                         drop_last=drop_last, seed=seed)  # fmt: skip
        self.images = images.to(device)
        self.preprocess = preprocess
        self.augment = augment
        self.output_size = output_size

    def __iter__(self) -> Iterator[Batch]:
        epoch, order = self._next_order()
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)  # drives augmentation
        order = order.to(self.images.device)
        for start in self._batch_slices():
            index = order[start : start + self.batch_size]
            images = self.images[index]  # uint8 [B, C, H, W]
            if self.augment is not None:
                images = augment_batch(images, self.augment, generator)
            if self.output_size is not None:  # [B, C, h, w] uint8 -> [B, C, H, W] float in [0, 1]
                images = F.interpolate(images.float().div_(255), size=self.output_size, mode="bilinear",
                                       align_corners=False).clamp_(0, 1)  # fmt: skip
            yield Batch(self.preprocess.normalize(images), self.labels[index])


def resize_uint8(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a uint8 ``[N, C, H, W]`` tensor once (antialiased), in chunks to bound memory."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    chunks = []
    for chunk in images.split(4096):
        resized = F.interpolate(chunk.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
        chunks.append(resized.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(chunks)


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` to 1 (ITU-R 601 luma) or 3 (repeated grey) channels."""
    if images.shape[1] == channels:
        return images
    if channels == 3 and images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1).contiguous()
    if channels == 1 and images.shape[1] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images.float() * weights).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
    raise ValueError(f"cannot convert {images.shape[1]} channels to {channels}")


def channel_stats(images: torch.Tensor, max_images: int = 20_000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std on the [0, 1] scale of (up to ``max_images`` of) a uint8 batch."""
    sample = images[:max_images].float().div_(255)
    mean = sample.mean(dim=(0, 2, 3))
    std = sample.std(dim=(0, 2, 3))
    return [round(float(v), 4) for v in mean], [round(float(v), 4) for v in std]

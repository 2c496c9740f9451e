"""The in-memory data path for small datasets (MNIST, CIFAR, the embedded default).

Images stay as one uint8 tensor ``[N, C, H, W]`` (4x smaller than float, and on the GPU
when there is one); each batch is gathered by index, augmented as a batch and normalised
in one step. No per-sample Python, no worker processes: this is why it is fast. The
random numbers of a whole epoch are drawn at its start (on the CPU, from a generator
seeded by ``(seed, epoch)``) and moved to the device in one copy, so a GPU epoch never
waits on the host and a resumed run sees the same augmentation.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cnnkit.data.spec import Batch, Preprocess
from cnnkit.data.transforms import (
    Augment,
    alternating_flips,
    apply_cutout,
    apply_erase,
    apply_geometric,
    batch_policy,
    draw_augment,
    flip_base,
    normalization_constants,
    normalize_uint8,
)


def epoch_order(
    count: int, *, shuffle: bool, seed: int, epoch: int, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Sample order of one epoch: a permutation that depends only on ``(seed, epoch)``.

    Every loader in cnnkit draws its order here, so a resumed run sees the same data order.
    With ``weights`` (``[count]``, one per sample), ``count`` samples are drawn with
    replacement in proportion to them instead (class-balanced sampling).
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    if weights is not None:
        return torch.multinomial(weights.double().cpu(), count, replacement=True, generator=generator)
    if not shuffle:
        return torch.arange(count)
    return torch.randperm(count, generator=generator)


def augment_seed(seed: int, epoch: int) -> int:
    """Seed of epoch ``epoch``'s augmentation draws: a function of ``(seed, epoch)`` alone,
    scrambled (golden-ratio multiplier) so it never equals an ``epoch_order`` seed nearby."""
    return ((seed * 1_000_003 + epoch) * 0x9E3779B97F4A7C15 + 1) % 2**63


def balanced_sample_weights(labels: torch.Tensor) -> torch.Tensor:
    """Per-sample weights ``1 / n_class`` so that each class is drawn equally often."""
    labels = labels.long().cpu()
    counts = torch.bincount(labels).double()
    return 1.0 / counts[labels]


@dataclass(frozen=True)
class Part:
    """Which share of each epoch this process takes: ``rank`` of ``world`` (data-parallel
    training sets it on the loaders; the data layer knows nothing of process groups)."""

    rank: int = 0
    world: int = 1


WHOLE = Part()


def shard_order(order: torch.Tensor, part: Part, batch_size: int | None = None) -> torch.Tensor:
    """``part``'s share of an epoch's sample order.

    Rank r takes positions r, r + world, r + 2 world...; the order is first cut to a
    multiple of the world size (and of ``world * batch_size`` when given, so every rank
    runs the same number of steps and none waits forever in an all-reduce).
    """
    if part.world == 1:
        return order
    unit = part.world * (batch_size or 1)
    usable = len(order) - len(order) % unit if len(order) >= unit else len(order) - len(order) % part.world
    return order[:usable][part.rank :: part.world]


def batch_count(count: int, batch_size: int, drop_last: bool) -> int:
    """Batches per epoch (the last incomplete one dropped when ``drop_last``)."""
    return count // batch_size if drop_last else -(-count // batch_size)


@dataclass(frozen=True)
class Batching:
    """How a loader cuts its epochs into batches.

    Attributes:
        batch_size: images per batch.
        shuffle: draw a new permutation every epoch (else the stored order).
        drop_last: drop the last incomplete batch (keeps BatchNorm happy when training);
            ignored when there is only one batch.
        seed: base seed of the order (and of the augmentation draws), see :func:`epoch_order`.
    """

    batch_size: int
    shuffle: bool = False
    drop_last: bool = False
    seed: int = 0


class EpochBatches:
    """What every in-memory loader shares: batch count, epoch bookkeeping, seeded order.

    Subclasses set ``labels`` (``[N]``) through ``__init__`` and draw each epoch's order
    with :meth:`_next_order`.
    """

    def __init__(self, labels: torch.Tensor, batching: Batching) -> None:
        self.labels = labels
        self.batch_size, self.shuffle, self.seed = batching.batch_size, batching.shuffle, batching.seed
        self.drop_last = batching.drop_last and len(labels) > batching.batch_size
        self._next_epoch = 0
        self.sample_weights: torch.Tensor | None = None
        self.part = WHOLE  # this process's share of each epoch (see shard_loaders)

    def __len__(self) -> int:
        return batch_count(self.num_samples, self.batch_size, self.drop_last)

    @property
    def num_samples(self) -> int:
        """Samples this process sees per epoch (its shard when training with torchrun)."""
        return len(self._shard(torch.arange(len(self.labels))))

    def _shard(self, order: torch.Tensor) -> torch.Tensor:
        """This process's part of ``order`` (all of it outside distributed training). Training
        loaders (``drop_last``) cut the order so every rank runs the same number of steps."""
        return shard_order(order, self.part, self.batch_size if self.drop_last else None)

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` produce epoch ``epoch``'s order (and augmentation)."""
        self._next_epoch = epoch

    def balance_classes(self) -> None:
        """Draw each epoch's samples with replacement so every class comes up equally often."""
        self.sample_weights = balanced_sample_weights(self.labels)

    def _next_order(self) -> tuple[int, torch.Tensor]:
        """The epoch this ``iter()`` produces and its sample order; advances the epoch."""
        epoch, self._next_epoch = self._next_epoch, self._next_epoch + 1
        order = epoch_order(len(self.labels), shuffle=self.shuffle, seed=self.seed, epoch=epoch,
                            weights=self.sample_weights)  # fmt: skip
        return epoch, self._shard(order)

    def _batch_slices(self) -> range:
        return range(0, len(self) * self.batch_size, self.batch_size)


class EpochAugmenter:
    """One epoch of batched augmentation: every random number drawn at the start, then
    applied batch by batch.

    Draws come from a CPU generator seeded by ``(seed, epoch)`` and reach ``device`` in one
    copy (per-batch copies would each wait for the GPU). Position ``p`` of the epoch gets
    row ``p`` of the draws; alternating flips go by dataset index instead.

    Args:
        augment: the preset.
        count: positions in the epoch (all ranks' under torchrun).
        size: (height, width) of the model input (cutout positions).
        seed: the loader's seed.
        epoch: the epoch number.
        flip_base: bool ``[N]`` epoch-0 flips by dataset index (``flip="alternate"``), or None.
        device: where the batches are.
        positions: under torchrun, the epoch positions of this rank's shard: the draws are
            made for the whole epoch and each rank keeps its rows, so the ranks together
            augment exactly as one process would (None: all positions).
    """

    def __init__(self, augment: Augment, count: int, size: tuple[int, int], *, seed: int, epoch: int,
                 flip_base: torch.Tensor | None, device: torch.device | str,
                 positions: torch.Tensor | None = None) -> None:  # fmt: skip
        # Not epoch_order's seed: the same stream would tie each position's draws to the shuffle.
        generator = torch.Generator().manual_seed(augment_seed(seed, epoch))
        self.augment = augment
        draws = draw_augment(augment, count, size, generator)
        self.draws = (draws if positions is None else draws.select(positions)).to(device)
        self.policy = batch_policy(augment, size)  # RandAugment etc.: torch's global RNG, per image
        self.flips = None if flip_base is None else alternating_flips(flip_base, epoch)  # [N] by index

    def geometric(self, images: torch.Tensor, start: int, index: torch.Tensor) -> torch.Tensor:
        """Warp/translate/flip uint8 ``images`` at epoch positions ``start, start + 1, ...``."""
        rows = self.draws.rows(start, start + len(images))
        images = apply_geometric(images, self.augment, rows, None if self.flips is None else self.flips[index])
        return images if self.policy is None else self.policy(images)

    def cutout(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """Blank the cutout squares and random-erasing boxes of the normalised batch at
        positions ``start, ...`` (in place)."""
        if self.draws.corners is not None:
            apply_cutout(x, self.augment.cutout, self.draws.corners[start : start + len(x)])
        if self.draws.erase is not None:
            apply_erase(x, self.draws.erase[start : start + len(x)])
        return x


class TensorLoader(EpochBatches):
    """Batches of normalised images from an in-memory uint8 tensor.

    The order of epoch ``e`` depends only on ``(seed, e)``, so a run can be resumed with
    the same data order (see :meth:`set_epoch`). Each ``iter()`` starts the next epoch
    unless :meth:`set_epoch` was called just before.

    Args:
        images: uint8 ``[N, C, H, W]`` already at the model's input size.
        labels: int64 ``[N]``.
        preprocess: supplies mean/std for normalisation.
        batching: batch size, shuffling, dropping the last batch, seed (of the shuffling
            and the augmentation draws).
        augment: batched train-time augmentation (None: none).
        device: where the images live and batches are produced.
        output_size: (height, width) to enlarge each batch to after augmentation
            (None: the stored size). Small images fed to a large model stay small in memory.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        preprocess: Preprocess,
        batching: Batching,
        *,
        augment: Augment | None = None,
        device: str | torch.device = "cpu",
        output_size: tuple[int, int] | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError("images must be a uint8 tensor [N, C, H, W]")
        super().__init__(labels.to(device=device, dtype=torch.long), batching)
        self.images = images.to(device)
        self.device = self.images.device  # where batches are produced
        self.preprocess = preprocess
        self.augment = augment
        self.output_size = output_size
        self._scale, self._shift = normalization_constants(preprocess, self.images.device)
        # Alternating flips start from a per-image choice that depends on the seed alone.
        self._flip_base = None
        if augment is not None and augment.flip == "alternate":
            self._flip_base = flip_base(len(self.labels), self.seed, augment.flip_p).to(self.images.device)

    def __iter__(self) -> Iterator[Batch]:
        epoch, order = self._next_order()
        order = order.to(self.images.device)
        augmenter = self._augmenter(epoch, len(self.labels))
        for start in self._batch_slices():
            index = order[start : start + self.batch_size]
            yield self._batch(self.images[index], index, start, augmenter)  # gathers uint8 [B, C, H, W]

    def _augmenter(self, epoch: int, count: int) -> EpochAugmenter | None:
        if self.augment is None:
            return None
        stored = self.preprocess.input_size if self.images is None else tuple(self.images.shape[-2:])
        positions = self._shard(torch.arange(count))  # this rank's epoch positions under torchrun
        return EpochAugmenter(self.augment, count, self.output_size or stored, seed=self.seed, epoch=epoch,
                              flip_base=self._flip_base, device=self.device,
                              positions=positions if len(positions) < count else None)  # fmt: skip

    def _batch(self, images: torch.Tensor, index: torch.Tensor, start: int, augmenter: EpochAugmenter | None) -> Batch:
        """uint8 ``[B, C, H, W]`` (epoch positions ``start``..., dataset rows ``index``) -> a Batch."""
        if augmenter is not None:
            images = augmenter.geometric(images, start, index)
        x = self._to_float(images)  # float32 [B, C, H, W], normalised
        if augmenter is not None:
            augmenter.cutout(x, start)
        return Batch(x, self.labels[index])

    def _to_float(self, images: torch.Tensor) -> torch.Tensor:
        if self.output_size is None:
            return normalize_uint8(images, self._scale, self._shift)
        # [B, C, h, w] uint8 -> [B, C, H, W] float in [0, 1], enlarged for the model
        images = F.interpolate(images.float().div_(255), size=self.output_size, mode="bilinear",
                               align_corners=False).clamp_(0, 1)  # fmt: skip
        return self.preprocess.normalize(images)


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


def sample_images(loader: object, count: int) -> torch.Tensor:
    """Up to ``count`` normalised training images ``[n, C, H, W]`` (float32) from a loader.

    In-memory loaders give their first ``count`` images un-augmented; any other loader
    gives the images of its first batches as it yields them. Used to initialise models
    from data (e.g. a whitening stem, see ``init_from_data``).
    """
    images = getattr(loader, "images", None)
    preprocess = getattr(loader, "preprocess", None)
    if isinstance(images, torch.Tensor) and isinstance(preprocess, Preprocess) and images.dtype == torch.uint8:
        scale, shift = normalization_constants(preprocess, images.device)
        return normalize_uint8(images[:count], scale, shift)
    batches, seen = [], 0
    for batch_images, _ in loader:  # type: ignore[attr-defined]
        batches.append(batch_images)
        seen += len(batch_images)
        if seen >= count:
            break
    return torch.cat(batches)[:count]

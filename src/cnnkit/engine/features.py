"""Feature caching: run a frozen backbone once per image, then train the head on vectors.

With the backbone frozen and no augmentation, every epoch would compute the same
features again; computing them once (and keeping them on disk, keyed by everything that
determines them) makes the epochs after the first cost milliseconds. The head trains
through :class:`HeadOnly`, whose checkpoints still hold the whole model.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from cnnkit.checkpoint import read_tensor_cache, save_tensor_file
from cnnkit.data.tensor_data import Batching, EpochBatches
from cnnkit.device import autocast

# Bump when the cache file layout or the extraction changes.
CACHE_FORMAT = 1


class HeadOnly(nn.Module):
    """Wraps a backbone model so ``forward`` takes features and runs only its head.

    The model is kept as ``.module`` (as DDP does), so ``unwrap`` and therefore every
    checkpoint see the whole model, not just the head.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.module = model

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Features ``[B, F]`` -> logits ``[B, num_classes]``."""
        return self.module.forward_head(features)


class FeatureLoader(EpochBatches):
    """Batches of cached feature vectors, with the same epoch-seeded order as the image loaders.

    Args:
        features: ``[N, F]`` (any float dtype; batches come out as float32).
        labels: ``[N]`` class indices.
        batch_size: vectors per batch.
        shuffle: draw a new permutation every epoch (seeded by ``seed`` and the epoch).
        drop_last: drop the last incomplete batch (when there is more than one batch).
        seed: base seed of the shuffling.
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, batch_size: int, *, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 0) -> None:  # fmt: skip
        super().__init__(labels.long(), Batching(batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed))
        self.features = features

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        _, order = self._next_order()
        for start in self._batch_slices():
            index = order[start : start + self.batch_size]
            yield self.features[index].float(), self.labels[index]


@torch.no_grad()  # inference_mode would make the channels_last weights inference tensors
def extract_features(
    model: nn.Module, loader: Iterable, *, device: torch.device, dtype: torch.dtype | None = None,
    progress: bool = True, desc: str = "features",
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``model.forward_features`` over a whole loader, in eval mode.

    Returns:
        float16 features ``[N, F]`` and int64 labels ``[N]``, on the CPU, in loader order
        (float16 halves the cache; a head does not notice the rounding).
    """
    model.eval()
    # channels_last runs depthwise/pointwise convs about 2x faster on CPUs (measured on
    # EfficientNet-Lite0) and is what CUDA tensor cores want too.
    model.to(memory_format=torch.channels_last)
    feats, labels = [], []
    total = len(loader) if hasattr(loader, "__len__") else None
    bar = tqdm(loader, total=total, desc=desc, unit="batch", leave=False, disable=None if progress else True)
    for images, targets in bar:
        with autocast(device, dtype):
            images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            out = model.forward_features(images)
        feats.append(out.flatten(1).to("cpu", torch.float16))
        labels.append(targets.cpu().long())
    return torch.cat(feats), torch.cat(labels)


def state_digest(module: nn.Module) -> str:
    """Hash of a module's tensors (names, shapes and values): any weight change changes it."""
    digest = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def cache_key(**parts: Any) -> str:
    """A file-name-safe hash of everything that determines the cached features."""
    text = json.dumps({"format": CACHE_FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def cached_features(
    path: Path, compute: Callable[[], tuple[torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor, float | None]:
    """Features from ``path`` if it holds a valid cache, else ``compute()`` and save them there.

    Returns:
        ``(features, labels, seconds)``, where ``seconds`` is the extraction time, or
        None when the cache was used. A damaged cache file is recomputed, never trusted.
        The file is written atomically (temp file, then rename).
    """
    found = read_cached_features(path)
    if found is not None:
        return (*found, None)
    start = time.perf_counter()
    features, labels = compute()
    seconds = time.perf_counter() - start
    save_tensor_file({"format": CACHE_FORMAT, "features": features, "labels": labels}, path)
    return features, labels, seconds


def read_cached_features(path: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(features [N, F], labels [N])`` from a valid cache file at ``path``; None when the
    file is missing, torn or of another format (nothing is computed or written)."""
    payload = read_tensor_cache(path)
    try:
        if payload.get("format") == CACHE_FORMAT and len(payload["features"]) == len(payload["labels"]):
            return payload["features"], payload["labels"]
    except (AttributeError, KeyError, TypeError):  # a foreign file: never trusted
        pass
    return None

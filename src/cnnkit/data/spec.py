"""What the rest of cnnkit knows about a dataset: its classes and how images are prepared.

:class:`Preprocess` travels with the weights (it is stored in every checkpoint), so
prediction never asks the user to repeat sizes or mean/std.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from cnnkit.preprocess import Preprocess as Preprocess  # defined below every layer; re-exported here


@dataclass
class DataSpec:
    """Facts about a built dataset that models, the engine and the run folder need.

    Attributes:
        name: dataset name or path as given.
        class_names: index -> readable class name.
        preprocess: evaluation preprocessing (also stored in checkpoints).
        sizes: images per split, e.g. ``{"train": 9000, "val": 1000, "test": 2000}``.
        split: JSON-able description of the split used (indices or file lists), saved
            as ``split.json`` and reusable to rebuild the same split.
        fingerprint: short hash identifying the data and split.
        notes: lines worth telling the user (e.g. "validating on the test split").
    """

    name: str
    class_names: list[str]
    preprocess: Preprocess
    sizes: dict[str, int]
    split: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return self.preprocess.channels

    @property
    def input_size(self) -> tuple[int, int]:
        return self.preprocess.input_size


class Batch(NamedTuple):
    """One batch: normalised float32 images ``[B, C, H, W]`` and int64 labels ``[B]``."""

    images: torch.Tensor
    labels: torch.Tensor


class Loaders(NamedTuple):
    """The loaders of a run. Each is an iterable of :class:`Batch`-like ``(images, labels)``
    pairs with ``len()`` = batches per pass; ``val`` may be the test loader when the dataset
    has no validation split (``DataSpec.notes`` says so); ``test`` may be None."""

    train: Iterable[Any]
    val: Iterable[Any]
    test: Iterable[Any] | None = None

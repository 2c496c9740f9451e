"""What the rest of cnnkit knows about a dataset: its classes and how images are prepared.

:class:`Preprocess` travels with the weights (it is stored in every checkpoint), so
prediction never asks the user to repeat sizes or mean/std.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import torch


@dataclass(frozen=True)
class Preprocess:
    """How one decoded image becomes the model's input tensor.

    PIL image -> convert to ``L`` (channels 1) or ``RGB`` (channels 3) -> if ``resize``:
    resize the short side to ``resize`` -> centre-crop ``input_size`` (resize first when
    ``resize`` is None and the image differs from ``input_size``) -> float in [0, 1] ->
    ``(x - mean) / std``.

    Attributes:
        channels: 1 or 3.
        input_size: (height, width) the model sees.
        mean: per-channel mean on the [0, 1] scale (length ``channels``).
        std: per-channel std on the [0, 1] scale.
        resize: short side before the centre crop (None: resize straight to input_size).
        interpolation: ``bilinear``, ``bicubic`` or ``nearest``.
    """

    channels: int
    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int | None = None
    interpolation: str = "bilinear"

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, safe for ``torch.load(weights_only=True)`` and JSON."""
        values = asdict(self)
        values["input_size"] = list(self.input_size)
        values["mean"] = list(self.mean)
        values["std"] = list(self.std)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Preprocess:
        return cls(
            channels=int(values["channels"]),
            input_size=tuple(int(v) for v in values["input_size"]),  # type: ignore[arg-type]
            mean=tuple(float(v) for v in values["mean"]),
            std=tuple(float(v) for v in values["std"]),
            resize=None if values.get("resize") is None else int(values["resize"]),
            interpolation=str(values.get("interpolation", "bilinear")),
        )

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float ``[B, C, H, W]`` -> normalised float32 (same device)."""
        if images.dtype == torch.uint8:
            images = images.float().div_(255)
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
        return (images - mean) / std


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

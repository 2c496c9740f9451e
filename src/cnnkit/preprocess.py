"""How one decoded image becomes a model's input: the :class:`Preprocess` that travels with the weights.

It is stored in every checkpoint (:class:`cnnkit.checkpoint.Checkpoint`) and exported file, so
prediction never asks the user to repeat sizes or mean/std. It lives below every layer (it
imports nothing of cnnkit): data builds it, the checkpoint stores it, models and inference
read it, and none of them reaches another through it. ``cnnkit.data.spec.Preprocess`` is
the same class.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

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

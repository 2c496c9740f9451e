"""How much a small change of the input changes the prediction: FGSM and simple corruptions.

The seed tutorial warns that an imperceptible perturbation can flip a confident
prediction; :func:`robustness_table` measures it. Perturbations act in pixel space
([0, 1] per channel, so ``eps = 2/255`` means two grey levels), then the image is
normalised again, exactly as the model would see a perturbed photo. The model is scored
as everywhere else: through :func:`cnnkit.scoring.score` with the run's
:class:`~cnnkit.scoring.ScoringSettings` (TTA, precision, layout, device), so the
clean row equals ``cnnkit eval`` on the same images; FGSM attacks that same classifier
through the same per-batch forward (:meth:`ScoringSettings.logits`, with gradients).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from cnnkit.scoring import ScoringSettings, score

Forward = Callable[[torch.Tensor], torch.Tensor]  # normalised inputs [B, C, H, W] -> float32 logits [B, K]

# FGSM step sizes in grey levels out of 255.
FGSM_LEVELS = (1, 2, 4, 8)


@dataclass
class Normalisation:
    """The loader's per-channel normalisation, to move between pixels and model inputs."""

    mean: torch.Tensor  # [1, C, 1, 1]
    std: torch.Tensor  # [1, C, 1, 1]

    @classmethod
    def of(cls, mean: Iterable[float], std: Iterable[float]) -> Normalisation:
        return cls(torch.tensor(list(mean)).view(1, -1, 1, 1), torch.tensor(list(std)).view(1, -1, 1, 1))

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std.to(x.device) + self.mean.to(x.device)

    def to_inputs(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self.mean.to(pixels.device)) / self.std.to(pixels.device)


def fgsm(model: nn.Module | Forward, pixels: torch.Tensor, labels: torch.Tensor, eps: float,
         norm: Normalisation) -> torch.Tensor:  # fmt: skip
    """Fast gradient sign attack: ``pixels + eps * sign(grad of the loss)``, kept in [0, 1]."""
    pixels = pixels.clone().requires_grad_(True)
    loss = F.cross_entropy(model(norm.to_inputs(pixels)), labels)
    (grad,) = torch.autograd.grad(loss, pixels)
    return (pixels + eps * grad.sign()).clamp(0, 1).detach()


def corruptions(pixels: torch.Tensor, generator: torch.Generator) -> Iterator[tuple[str, torch.Tensor]]:
    """Gaussian noise (sigma 0.1), a 5x5 box blur and +30 % brightness of a pixel batch."""
    noise = torch.randn(pixels.shape, generator=generator).to(pixels.device) * 0.1
    yield "gaussian noise (sigma 0.1)", (pixels + noise).clamp(0, 1)
    channels = pixels.shape[1]
    kernel = torch.full((channels, 1, 5, 5), 1 / 25, device=pixels.device)
    yield "blur (5x5 box)", F.conv2d(F.pad(pixels, (2, 2, 2, 2), mode="replicate"), kernel, groups=channels)
    yield "brightness +30%", (pixels * 1.3).clamp(0, 1)


def robustness_table(
    model: nn.Module, loader: Iterable, norm: Normalisation, settings: ScoringSettings | None = None, *,
    max_images: int = 1000, seed: int = 0,
) -> tuple[list[tuple[str, float]], dict[str, torch.Tensor] | None]:  # fmt: skip
    """Top-1 accuracy on clean images, under FGSM at each level and under each corruption.

    ``settings``: the run's scoring settings (None: float32 on the CPU, no TTA); the model
    is already placed (:meth:`ScoringSettings.place`).

    Returns:
        ``[(perturbation, accuracy)]`` over the first ``max_images`` images, and one
        example (``clean``/``adversarial`` pixels ``[C, H, W]``, ``label``,
        ``clean_pred``, ``adv_pred``, ``eps``): the first image FGSM flips at the smallest
        level that flips any, or None.
    """
    settings = settings or ScoringSettings()
    model.eval()

    def predicted(pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Top-1 ``[B]`` of a pixel batch, scored by the one scoring path."""
        return score(model, [(norm.to_inputs(pixels), labels)], settings).logits.argmax(1).to(pixels.device)

    def forward(inputs: torch.Tensor) -> torch.Tensor:  # the same forward, with gradients, for FGSM
        return settings.logits(model, inputs)

    generator = torch.Generator().manual_seed(seed)
    correct: dict[str, int] = {}
    seen = 0
    example = None
    for inputs, labels in loader:
        take = min(len(labels), max_images - seen)
        if take <= 0:
            break
        pixels = norm.to_pixels(inputs[:take].to(settings.device).float())
        labels = labels[:take].to(settings.device)
        clean_pred = predicted(pixels, labels)
        _count(correct, "clean", clean_pred, labels)
        for level in FGSM_LEVELS:
            adv = fgsm(forward, pixels, labels, level / 255, norm)
            adv_pred = predicted(adv, labels)
            _count(correct, f"FGSM eps {level}/255", adv_pred, labels)
            flipped = ((clean_pred == labels) & (adv_pred != labels)).nonzero()
            if example is None and len(flipped):
                i = int(flipped[0])
                example = {"clean": pixels[i].cpu(), "adversarial": adv[i].cpu(), "label": int(labels[i]),
                           "clean_pred": int(clean_pred[i]), "adv_pred": int(adv_pred[i]), "eps": level}  # fmt: skip
        for name, corrupted in corruptions(pixels, generator):
            _count(correct, name, predicted(corrupted, labels), labels)
        seen += take
    return [(name, hits / max(seen, 1)) for name, hits in correct.items()], example


def _count(correct: dict[str, int], name: str, predicted: torch.Tensor, labels: torch.Tensor) -> None:
    correct[name] = correct.get(name, 0) + int((predicted == labels).sum())

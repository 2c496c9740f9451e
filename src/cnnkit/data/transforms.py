"""Augmentation presets and the two ways to apply them.

A preset is data (:class:`Augment`). Small in-memory datasets are augmented a whole batch
at a time on uint8 tensors (:func:`augment_batch`); file datasets use per-sample
torchvision v2 transforms built from the same preset (:func:`train_transform`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode, v2

from cnnkit.data.spec import Preprocess
from cnnkit.errors import unknown_name


@dataclass(frozen=True)
class Augment:
    """Train-time augmentation, applied before normalisation.

    Attributes:
        crop_padding: random crop back to the input size after zero-padding this many
            pixels on each side (the CIFAR standard is 4).
        flip_p: probability of a horizontal flip.
        rotate_deg: random rotation in [-rotate_deg, rotate_deg] degrees.
        translate: random shift as a fraction of the side, in [-translate, translate].
        scale: random zoom range (min, max); (1, 1) disables it.
    """

    crop_padding: int = 0
    flip_p: float = 0.0
    rotate_deg: float = 0.0
    translate: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)

    @property
    def is_identity(self) -> bool:
        return self == Augment()

    @property
    def has_affine(self) -> bool:
        return bool(self.rotate_deg or self.translate or self.scale != (1.0, 1.0))


AUGMENT_PRESETS: dict[str, Augment] = {
    "none": Augment(),
    "flip": Augment(flip_p=0.5),
    # cifar10-cnn seed: RandomCrop(32, padding=4) + RandomHorizontalFlip.
    "crop-flip": Augment(crop_padding=4, flip_p=0.5),
    # animals-cnn seed: RandomHorizontalFlip(p=0.3) + RandomRotation(40).
    "animals": Augment(flip_p=0.3, rotate_deg=40.0),
    # flowers-transfer seed: random rotation, translation and scaling (+ flip).
    "flowers": Augment(flip_p=0.5, rotate_deg=30.0, translate=0.1, scale=(0.9, 1.1)),
    # Small shifts and rotations for digits (never flip a digit).
    "digits": Augment(rotate_deg=10.0, translate=0.08, scale=(0.9, 1.1)),
}


def get_augment(name: str) -> Augment:
    """The preset called ``name``; unknown names list the valid ones."""
    if name not in AUGMENT_PRESETS:
        raise unknown_name("augmentation preset", name, list(AUGMENT_PRESETS))
    return AUGMENT_PRESETS[name]


_INTERPOLATION = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


def eval_transform(pre: Preprocess) -> v2.Compose:
    """PIL image (already in the right mode) -> normalised float tensor ``[C, H, W]``."""
    return v2.Compose(_resize_crop(pre) + _to_normalized(pre))


def train_transform(pre: Preprocess, augment: Augment) -> v2.Compose:
    """Per-sample train transform: geometric augmentation, resize/crop, then normalise.

    Rotation and flips act on the decoded image before the resize (as the seeds do);
    padding-crop acts on the final size.
    """
    steps: list[v2.Transform] = []
    if augment.flip_p:
        steps.append(v2.RandomHorizontalFlip(p=augment.flip_p))
    if augment.has_affine:
        steps.append(
            v2.RandomAffine(
                degrees=augment.rotate_deg,
                translate=(augment.translate, augment.translate) if augment.translate else None,
                scale=augment.scale if augment.scale != (1.0, 1.0) else None,
                interpolation=InterpolationMode.BILINEAR,
            )
        )
    steps += _resize_crop(pre)
    if augment.crop_padding:
        steps.append(v2.RandomCrop(pre.input_size, padding=augment.crop_padding))
    return v2.Compose(steps + _to_normalized(pre))


def _resize_crop(pre: Preprocess) -> list[v2.Transform]:
    mode = _INTERPOLATION[pre.interpolation]
    resize = pre.resize if pre.resize is not None else list(pre.input_size)
    return [v2.Resize(resize, interpolation=mode, antialias=True), v2.CenterCrop(pre.input_size)]


def _to_normalized(pre: Preprocess) -> list[v2.Transform]:
    return [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(pre.mean), list(pre.std)),
    ]


def augment_batch(images: torch.Tensor, augment: Augment, generator: torch.Generator) -> torch.Tensor:
    """Augment a uint8 batch ``[B, C, H, W]`` with independent random draws per image.

    Returns a uint8 tensor of the same shape on the same device. Random numbers come from
    ``generator`` (a CPU generator), so the result is reproducible for a given state.
    """
    if augment.is_identity:
        return images
    if augment.has_affine:
        images = _random_affine(images, augment, generator)
    if augment.crop_padding:
        images = _random_crop(images, augment.crop_padding, generator)
    if augment.flip_p:
        flip = torch.rand(images.shape[0], generator=generator) < augment.flip_p
        images = torch.where(flip.to(images.device).view(-1, 1, 1, 1), images.flip(-1), images)
    return images


def _random_crop(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``pad`` and crop each image at its own random offset (exact, no resampling)."""
    batch, _, height, width = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))  # [B, C, H+2p, W+2p]
    dy = torch.randint(0, 2 * pad + 1, (batch,), generator=generator).to(images.device)
    dx = torch.randint(0, 2 * pad + 1, (batch,), generator=generator).to(images.device)
    rows = (dy.view(-1, 1) + torch.arange(height, device=images.device)).view(batch, 1, height, 1)
    cols = (dx.view(-1, 1) + torch.arange(width, device=images.device)).view(batch, 1, 1, width)
    batch_index = torch.arange(batch, device=images.device).view(batch, 1, 1, 1)
    channel_index = torch.arange(images.shape[1], device=images.device).view(1, -1, 1, 1)
    return padded[batch_index, channel_index, rows, cols]  # [B, C, H, W]


def _random_affine(images: torch.Tensor, augment: Augment, generator: torch.Generator) -> torch.Tensor:
    """Per-image rotation, translation and zoom with one bilinear ``grid_sample`` call."""
    batch = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(batch, generator=generator)

    angle = uniform(-augment.rotate_deg, augment.rotate_deg) * (math.pi / 180)
    zoom = uniform(*augment.scale)
    shift_x = uniform(-augment.translate, augment.translate) * 2  # grid units span [-1, 1]
    shift_y = uniform(-augment.translate, augment.translate) * 2
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1
    ).to(images.device)  # [B, 2, 3]
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    warped = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return warped.round_().clamp_(0, 255).to(torch.uint8)

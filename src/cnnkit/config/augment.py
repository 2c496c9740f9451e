"""The augmentation presets: the one definition of each (``--augment NAME``), free of torch.

A preset is data (:class:`Augment`); :mod:`cnnkit.data.transforms` applies it, a batch at a
time on uint8 tensors or per sample with torchvision's v2 transforms. The table lives with
the config schema because the schema needs it too: ``--augment``'s choices are its names,
and resolving a config asks whether a run's training images are augmented at all
(:attr:`Augment.is_identity`) without loading torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from cnnkit.errors import UsageError, unknown_name

AUGMENT_POLICIES = ("none", "randaugment", "trivialaugment", "autoaugment")
AUGMENT_BACKENDS = ("torchvision", "kornia")
FLIP_MODES = ("random", "alternate")
PAD_MODES = ("zeros", "reflect")


@dataclass(frozen=True)
class Augment:
    """Train-time augmentation, applied before normalisation (cutout: after).

    Attributes:
        crop_padding: random translation by up to this many pixels each way: pad this many
            pixels on each side, then crop back to the input size at a random offset (the
            CIFAR standard is 4 with zeros; airbench translates by 2 with reflection).
        flip_p: probability of a horizontal flip.
        rotate_deg: random rotation in [-rotate_deg, rotate_deg] degrees.
        translate: random shift as a fraction of the side, in [-translate, translate].
        scale: random zoom range (min, max); (1, 1) disables it.
        pad_mode: what the crop padding holds: ``zeros`` or ``reflect`` (mirrored pixels,
            so a translated image has no black border).
        flip: ``random`` (each image flips with ``flip_p``, independently every epoch) or
            ``alternate`` (airbench's alternating flip: epoch 0 flips each image with
            ``flip_p``; every later epoch flips it exactly when the previous epoch did not,
            so every image is seen both ways every two epochs). The per-image choice of epoch
            0 is a function of the loader's seed and the image's index alone, so a resumed
            run sees the same flips.
        cutout: side in pixels of a square set to 0 after normalisation (the mean colour),
            at a uniformly random position inside each image (DeVries & Taylor, 2017);
            0 disables it.
        policy: a learned or random augmentation policy applied per image after the
            geometric steps: ``randaugment`` (2 ops at magnitude 9), ``trivialaugment``
            (TrivialAugmentWide: 1 op, random magnitude), ``autoaugment`` (the CIFAR-10
            policy for small images, ImageNet's otherwise) or ``none``.
        policy_backend: who applies ``policy`` to in-memory batches: ``torchvision`` (one
            image at a time, on the batch's device) or ``kornia`` (the whole batch at once,
            per-image draws; faster, above all on a GPU; needs ``cnnkit[kornia]``). Per-sample
            file loading always uses torchvision.
        erase_p: random erasing: probability that a rectangle of 2-33 % of the image (aspect
            0.3-3.3) is set to 0 after normalisation (Zhong et al., 2017); 0 disables it.
    """

    crop_padding: int = 0
    flip_p: float = 0.0
    rotate_deg: float = 0.0
    translate: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)
    pad_mode: str = "zeros"
    flip: str = "random"
    cutout: int = 0
    policy: str = "none"
    policy_backend: str = "torchvision"
    erase_p: float = 0.0

    def __post_init__(self) -> None:
        if self.pad_mode not in PAD_MODES:
            raise unknown_name("padding mode", self.pad_mode, PAD_MODES)
        if self.flip not in FLIP_MODES:
            raise unknown_name("flip mode", self.flip, FLIP_MODES)
        if self.policy not in AUGMENT_POLICIES:
            raise unknown_name("augmentation policy", self.policy, AUGMENT_POLICIES)
        if self.policy_backend not in AUGMENT_BACKENDS:
            raise unknown_name("augmentation policy backend", self.policy_backend, AUGMENT_BACKENDS)
        if not 0.0 <= self.erase_p <= 1.0:
            raise UsageError(f"--random-erasing must be a probability in [0, 1], got {self.erase_p}")

    @property
    def is_identity(self) -> bool:
        """Whether no image is ever changed (the policy backend alone changes nothing)."""
        return dataclasses.replace(self, policy_backend="torchvision") == Augment()

    @property
    def has_affine(self) -> bool:
        return bool(self.rotate_deg or self.translate or self.scale != (1.0, 1.0))

    @property
    def flips(self) -> bool:
        """Whether any image is ever flipped (alternating flips always flip some)."""
        return bool(self.flip_p) or self.flip == "alternate"


PRESETS: dict[str, Augment] = {
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
    # crop-flip plus a 16-pixel cutout (DeVries & Taylor's CIFAR-10 setting).
    "crop-flip-cutout": Augment(crop_padding=4, flip_p=0.5, cutout=16),
    # airbench94 (Keller Jordan): 2-pixel translation with reflected borders and the
    # alternating flip, which shows each image both ways every two epochs.
    "airbench": Augment(crop_padding=2, pad_mode="reflect", flip_p=0.5, flip="alternate"),
    # crop-flip followed by a policy (timm's and torchvision's recipes; Cubuk et al. 2019/2020,
    # Mueller & Hutter 2021). Add --random-erasing P for timm's usual companion.
    "randaugment": Augment(crop_padding=4, flip_p=0.5, policy="randaugment"),
    "trivialaugment": Augment(crop_padding=4, flip_p=0.5, policy="trivialaugment"),
    "autoaugment": Augment(crop_padding=4, flip_p=0.5, policy="autoaugment"),
}
# The names, in the table's order: ``--augment``'s choices.
AUGMENT_PRESETS = tuple(PRESETS)


def preset(name: str, *, policy: str | None = None, erase_p: float | None = None,
           backend: str | None = None) -> Augment:  # fmt: skip
    """The preset called ``name``, with its policy, random-erasing probability and policy
    backend replaced where given (``--augment-policy``, ``--random-erasing``,
    ``--augment-backend``); unknown names list the valid ones.

    Raises:
        UsageError: unknown preset, policy or backend; a probability outside [0, 1].
    """
    if name not in PRESETS:
        raise unknown_name("augmentation preset", name, AUGMENT_PRESETS)
    changes = {key: value for key, value in (("policy", policy), ("erase_p", erase_p), ("policy_backend", backend))
               if value is not None}  # fmt: skip
    return dataclasses.replace(PRESETS[name], **changes)


def config_preset(data: Any) -> Augment:
    """The train augmentation a :class:`~cnnkit.config.DataConfig` asks for: its preset with
    ``augment_policy``, ``random_erasing`` and ``augment_backend`` applied."""
    return preset(data.augment, policy=data.augment_policy, erase_p=data.random_erasing, backend=data.augment_backend)

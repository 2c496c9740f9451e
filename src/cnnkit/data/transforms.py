"""Augmentation presets and the two ways to apply them.

A preset is data (:class:`Augment`; the table of presets is :mod:`cnnkit.config.augment`).
In-memory datasets (and folder datasets read from the decode cache) are augmented a whole
batch at a time on uint8 tensors, on whatever device holds them: :func:`draw_augment`
draws every random number of an epoch at once on the CPU (one generator, so the result
does not depend on the device), :func:`apply_geometric` crops, translates, flips and
warps, :func:`normalize_uint8` turns uint8 into normalised floats in one fused step and
:func:`apply_cutout` blanks squares after normalisation. :func:`augment_batch` chains the
geometric part for one batch. File datasets decoded per sample use torchvision v2
transforms built from the same preset (:func:`train_transform`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode, v2

from cnnkit.config.augment import AUGMENT_POLICIES as POLICIES  # noqa: F401 (bench/augment_policy.py)
from cnnkit.config.augment import PRESETS, Augment, config_preset, preset
from cnnkit.data.spec import Preprocess
from cnnkit.errors import UsageError

# RandAugment's setting in timm's and torchvision's ImageNet recipes: 2 ops at magnitude 9 of 30.
RANDAUGMENT_OPS, RANDAUGMENT_MAGNITUDE = 2, 9
# Random erasing's box: 2-33 % of the image, aspect ratio 0.3-3.3 (Zhong et al., 2017; torchvision's defaults).
ERASE_AREA, ERASE_RATIO = (0.02, 0.33), (0.3, 3.3)
# kornia's policies pick one op sequence per call: images per call (see batch_policy).
KORNIA_GROUP = 16
# The presets by name (defined once, in cnnkit.config.augment).
AUGMENT_PRESETS: dict[str, Augment] = PRESETS


def get_augment(name: str, *, policy: str | None = None, erase_p: float | None = None,
                backend: str | None = None) -> Augment:  # fmt: skip
    """The preset called ``name`` with its overrides (:func:`cnnkit.config.augment.preset`),
    checked against what is installed: the kornia backend needs kornia.

    Raises:
        UsageError: unknown preset, policy or backend; a probability outside [0, 1]; the
            kornia backend without kornia installed.
    """
    return _installed(preset(name, policy=policy, erase_p=erase_p, backend=backend))


def config_augment(cfg) -> Augment:
    """The train augmentation a :class:`~cnnkit.config.DataConfig` asks for: its preset with
    ``augment_policy``, ``random_erasing`` and ``augment_backend`` applied."""
    return _installed(config_preset(cfg))


def _installed(augment: Augment) -> Augment:
    if augment.policy_backend == "kornia" and augment.policy != "none":
        _import_kornia()
    return augment


def _import_kornia():
    try:
        from kornia.augmentation import auto
    except ImportError:
        raise UsageError("--augment-backend kornia needs kornia: pip install 'cnnkit[kornia]' "
                         "(or use the default torchvision backend)") from None  # fmt: skip
    return auto


def policy_transform(policy: str, size: tuple[int, int]) -> v2.Transform | None:
    """torchvision's op for ``policy`` (None for ``none``); works on PIL images and on uint8
    ``[C, H, W]`` tensors. AutoAugment uses the CIFAR-10 policy up to 64 px, ImageNet's above."""
    if policy == "randaugment":
        return v2.RandAugment(num_ops=RANDAUGMENT_OPS, magnitude=RANDAUGMENT_MAGNITUDE)
    if policy == "trivialaugment":
        return v2.TrivialAugmentWide()
    if policy == "autoaugment":
        small = max(size) <= 64
        return v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10 if small else v2.AutoAugmentPolicy.IMAGENET)
    return None


def batch_policy(augment: Augment, size: tuple[int, int]):
    """A callable uint8 ``[B, C, H, W]`` -> uint8 ``[B, C, H, W]`` applying ``augment.policy``
    to every image with its own random draws (None when there is no policy).

    torchvision's ops, given a batch, would apply one draw to all of it; they run image by
    image. kornia's run on many images at once (floats in [0, 1], rounded back to uint8)
    but choose the op sequence once per call (magnitudes and parameters per image), so they
    are called on groups of :data:`KORNIA_GROUP` images: a batch of 128 gets 8 independent
    op choices. Both draw from torch's global RNG, which checkpoints save.
    """
    if augment.policy == "none":
        return None
    if augment.policy_backend == "kornia":
        auto = _import_kornia()
        if augment.policy == "randaugment":
            op = auto.RandAugment(n=RANDAUGMENT_OPS, m=RANDAUGMENT_MAGNITUDE)
        elif augment.policy == "trivialaugment":
            op = auto.TrivialAugment()
        else:
            op = auto.AutoAugment("cifar10" if max(size) <= 64 else "imagenet")

        def kornia_batch(images: torch.Tensor) -> torch.Tensor:
            grey = images.shape[1] == 1  # kornia's colour ops want 3 channels
            x = (images.expand(-1, 3, -1, -1) if grey else images).float().div_(255)
            out = torch.cat([op(group) for group in x.split(KORNIA_GROUP)]) if len(x) else x
            out = out.mul_(255).round_().clamp_(0, 255).to(torch.uint8)
            return out[:, :1] if grey else out

        return kornia_batch
    op = policy_transform(augment.policy, size)
    return lambda images: torch.stack([op(image) for image in images]) if len(images) else images


_INTERPOLATION = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


def eval_transform(pre: Preprocess) -> v2.Compose:
    """PIL image (already in the right mode) -> normalised float tensor ``[C, H, W]``."""
    return v2.Compose(_resize_crop(pre) + _to_normalized(pre))


def eval_pixels(pre: Preprocess) -> v2.Compose:
    """PIL image (already in the right mode) -> resized, cropped uint8 tensor ``[C, H, W]``:
    :func:`eval_transform` without the normalisation, which :func:`normalize_batch` then
    does once per batch (the same float32 values, in a fraction of the time)."""
    return v2.Compose([*_resize_crop(pre), v2.ToImage()])


def normalize_batch(pixels: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` from :func:`eval_pixels` -> exactly the float32 tensors
    :func:`eval_transform` gives image by image (the same element-wise operations), so
    ``cnnkit predict`` scores what ``cnnkit eval`` scores bit for bit. :func:`normalize_uint8`,
    the in-memory loaders' fused form, rounds differently in the last bit. In place on the new
    float tensor: a second batch-sized allocation was half of this function's time."""
    floats = v2.functional.to_dtype(pixels, torch.float32, scale=True)  # a new tensor: normalise it in place
    return v2.functional.normalize(floats, list(pre.mean), list(pre.std), inplace=True)


def train_transform(pre: Preprocess, augment: Augment) -> v2.Compose:
    """Per-sample train transform: geometric augmentation, resize/crop, then normalise.

    Rotation and flips act on the decoded image before the resize (as the seeds do);
    padding-crop acts on the final size and cutout on the normalised tensor. A sample knows
    neither its epoch nor its index, so ``flip="alternate"`` becomes a random flip here
    (the batched path, :func:`apply_geometric`, alternates).
    """
    steps: list[v2.Transform] = []
    if augment.flips:
        steps.append(v2.RandomHorizontalFlip(p=augment.flip_p or 0.5))
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
        fill = "constant" if augment.pad_mode == "zeros" else "reflect"
        steps.append(v2.RandomCrop(pre.input_size, padding=augment.crop_padding, padding_mode=fill))
    policy = policy_transform(augment.policy, pre.input_size)
    if policy is not None:
        steps.append(policy)
    steps += _to_normalized(pre)
    if augment.cutout:
        # An area of exactly cutout**2 with aspect ratio 1 is a cutout x cutout square.
        area = augment.cutout**2 / (pre.input_size[0] * pre.input_size[1])
        steps.append(v2.RandomErasing(p=1.0, scale=(area, area), ratio=(1.0, 1.0), value=0))
    if augment.erase_p:
        steps.append(v2.RandomErasing(p=augment.erase_p, scale=ERASE_AREA, ratio=ERASE_RATIO, value=0))
    return v2.Compose(steps)


def resize_crop_transform(pre: Preprocess) -> v2.Compose:
    """PIL image -> PIL image at ``pre.input_size``: the resize and centre crop of
    :func:`eval_transform`, without the conversion to a normalised tensor."""
    return v2.Compose(_resize_crop(pre))


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


@dataclass
class AugmentDraws:
    """The random parameters of a run of images, one row per position in the run.

    A loader draws a whole epoch's rows at once on the CPU and moves them to the device in
    one copy: the random stream is then the same on every device, and the GPU never waits
    for a small host-to-device copy in the middle of an epoch.

    Attributes:
        theta: ``[N, 2, 3]`` float affine matrices in ``affine_grid`` units (affine only).
        offsets: ``[N, 2]`` int64 crop offsets ``(dy, dx)`` in ``[0, 2 * crop_padding]``.
        flips: ``[N]`` bool, whether to mirror (``flip="random"`` only).
        corners: ``[N, 2]`` int64 top-left ``(y, x)`` of each cutout square.
        erase: ``[N, 4]`` int64 random-erasing box ``(top, left, height, width)``; height 0:
            this image is not erased.
    """

    theta: torch.Tensor | None = None
    offsets: torch.Tensor | None = None
    flips: torch.Tensor | None = None
    corners: torch.Tensor | None = None
    erase: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> AugmentDraws:
        return AugmentDraws(*(None if t is None else t.to(device) for t in self._fields()))

    def rows(self, start: int, stop: int) -> AugmentDraws:
        """The rows of positions ``start`` to ``stop - 1`` (views, no copy)."""
        return AugmentDraws(*(None if t is None else t[start:stop] for t in self._fields()))

    def select(self, positions: torch.Tensor) -> AugmentDraws:
        """The rows of ``positions`` (a copy), in that order."""
        return AugmentDraws(*(None if t is None else t[positions] for t in self._fields()))

    def _fields(self) -> tuple[torch.Tensor | None, ...]:
        return (self.theta, self.offsets, self.flips, self.corners, self.erase)


def draw_augment(
    augment: Augment, count: int, size: tuple[int, int], generator: torch.Generator
) -> AugmentDraws:
    """Draw the random parameters of ``count`` images of ``size`` (height, width).

    Draws happen in a fixed order (affine, crop, flip, cutout) from ``generator`` (a CPU
    generator), so a seed gives the same augmentation on the CPU and on a GPU.
    """
    draws = AugmentDraws()

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(count, generator=generator)

    if augment.has_affine:
        angle = uniform(-augment.rotate_deg, augment.rotate_deg) * (math.pi / 180)
        zoom = uniform(*augment.scale)
        shift_x = uniform(-augment.translate, augment.translate) * 2  # grid units span [-1, 1]
        shift_y = uniform(-augment.translate, augment.translate) * 2
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        draws.theta = torch.stack(
            [torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1
        )  # [N, 2, 3]
    if augment.crop_padding:
        draws.offsets = torch.randint(0, 2 * augment.crop_padding + 1, (count, 2), generator=generator)
    if augment.flip == "random" and augment.flip_p:
        draws.flips = torch.rand(count, generator=generator) < augment.flip_p
    if augment.cutout:
        height, width = size
        if augment.cutout > min(height, width):
            raise UsageError(f"cutout {augment.cutout} is larger than the {height}x{width} input; use a smaller cutout")
        draws.corners = torch.stack([
            torch.randint(0, height - augment.cutout + 1, (count,), generator=generator),
            torch.randint(0, width - augment.cutout + 1, (count,), generator=generator),
        ], 1)  # fmt: skip
    if augment.erase_p:
        draws.erase = _draw_erase_boxes(count, size, augment.erase_p, generator)
    return draws


def _draw_erase_boxes(count: int, size: tuple[int, int], p: float, generator: torch.Generator) -> torch.Tensor:
    """Random-erasing boxes ``[count, 4]`` (top, left, height, width; height 0 = none):
    torchvision's distribution, with an oversized box clipped to the image instead of redrawn."""
    height, width = size
    erase = torch.rand(count, generator=generator) < p
    area = (ERASE_AREA[0] + (ERASE_AREA[1] - ERASE_AREA[0]) * torch.rand(count, generator=generator)) * height * width
    log_ratio = math.log(ERASE_RATIO[0]) + (math.log(ERASE_RATIO[1]) - math.log(ERASE_RATIO[0])) * torch.rand(
        count, generator=generator)  # fmt: skip
    ratio = log_ratio.exp()
    box_h = (area * ratio).sqrt().round().long().clamp(1, height)
    box_w = (area / ratio).sqrt().round().long().clamp(1, width)
    top = (torch.rand(count, generator=generator) * (height - box_h + 1)).long()
    left = (torch.rand(count, generator=generator) * (width - box_w + 1)).long()
    return torch.stack([top, left, box_h * erase, box_w], 1)


def flip_base(count: int, seed: int, p: float = 0.5) -> torch.Tensor:
    """Epoch-0 flips of an alternating flip: bool ``[count]``, image ``i``'s depends on ``seed`` only."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + 999_983)  # apart from the epoch seeds
    return torch.rand(count, generator=generator) < p


def alternating_flips(base: torch.Tensor, epoch: int) -> torch.Tensor:
    """Which images to flip in ``epoch``: ``base`` in even epochs, its opposite in odd ones."""
    return base ^ bool(epoch % 2)


def apply_geometric(
    images: torch.Tensor, augment: Augment, draws: AugmentDraws, flips: torch.Tensor | None = None
) -> torch.Tensor:
    """Warp, translate and flip a uint8 batch ``[B, C, H, W]`` with the given draws.

    ``flips`` (bool ``[B]``) overrides ``draws.flips``: alternating flips come from the
    image index, not the batch position. Returns uint8 ``[B, C, H, W]``, same device.
    """
    if draws.theta is not None:
        images = _affine(images, draws.theta)
    flips = draws.flips if flips is None else flips
    if draws.offsets is not None:
        return _shift_crop(images, augment.crop_padding, augment.pad_mode, draws.offsets, flips)
    if flips is not None:
        images = torch.where(flips.view(-1, 1, 1, 1), images.flip(-1), images)
    return images


def apply_cutout(images: torch.Tensor, size: int, corners: torch.Tensor) -> torch.Tensor:
    """Set a ``size`` x ``size`` square of each normalised image to 0, in place.

    ``corners`` is int64 ``[B, 2]``, the top-left ``(y, x)`` of each square.
    """
    height, width = images.shape[-2:]
    rows = torch.arange(height, device=images.device).view(1, height, 1)
    cols = torch.arange(width, device=images.device).view(1, 1, width)
    top, left = corners[:, 0].view(-1, 1, 1), corners[:, 1].view(-1, 1, 1)
    inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)  # [B, H, W]
    return images.masked_fill_(inside.unsqueeze(1), 0.0)


def apply_erase(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Set each normalised image's box (``[B, 4]`` top, left, height, width) to 0, in place."""
    height, width = images.shape[-2:]
    rows = torch.arange(height, device=images.device).view(1, height, 1)
    cols = torch.arange(width, device=images.device).view(1, 1, width)
    top, left, box_h, box_w = (boxes[:, i].view(-1, 1, 1) for i in range(4))
    inside = (rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w)  # [B, H, W]
    return images.masked_fill_(inside.unsqueeze(1), 0.0)


def normalize_uint8(images: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` -> ``images * scale + shift`` in float32 (one kernel on CUDA).

    With ``scale = 1 / (255 * std)`` and ``shift = -mean / std`` (both ``[1, C, 1, 1]``, see
    :func:`normalization_constants`) this is ``(images / 255 - mean) / std`` without the
    intermediate [0, 1] tensor.
    """
    if images.is_cuda:
        return torch.addcmul(shift, images, scale)  # reads uint8, writes float: one kernel
    # On CPUs the mixed-dtype broadcast above is ~6x slower than converting first and
    # scaling in place (vectorised loops), so two passes win there.
    return images.float().mul_(scale).add_(shift)


def normalization_constants(pre: Preprocess, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` for :func:`normalize_uint8`, each float32 ``[1, C, 1, 1]`` on ``device``."""
    mean = torch.tensor(pre.mean, dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float64).view(1, -1, 1, 1)
    return (1 / (255 * std)).float().to(device), (-mean / std).float().to(device)


def augment_batch(
    images: torch.Tensor,
    augment: Augment,
    generator: torch.Generator,
    *,
    epoch: int = 0,
    flip_base: torch.Tensor | None = None,
) -> torch.Tensor:
    """Augment a uint8 batch ``[B, C, H, W]`` with independent random draws per image.

    Returns a uint8 tensor of the same shape on the same device. Random numbers come from
    ``generator`` (a CPU generator), so the result is reproducible for a given state.
    Cutout is not applied: it acts on normalised images (:func:`apply_cutout`). For
    ``flip="alternate"``, ``flip_base`` holds the batch's epoch-0 flips (default: drawn
    from ``generator``) and ``epoch`` picks them or their opposite.
    """
    if augment.is_identity:
        return images
    draws = draw_augment(augment, images.shape[0], tuple(images.shape[-2:]), generator)
    flips = None
    if augment.flip == "alternate":
        base = flip_base if flip_base is not None else torch.rand(images.shape[0], generator=generator) < augment.flip_p
        flips = alternating_flips(base, epoch)
    return apply_geometric(images, augment, draws.to(images.device), None if flips is None else flips.to(images.device))


def _shift_crop(
    images: torch.Tensor, pad: int, mode: str, offsets: torch.Tensor, flips: torch.Tensor | None
) -> torch.Tensor:
    """Translate each image by its offset minus ``pad`` (exact, no resampling), mirroring
    the images marked in ``flips`` in the same gather.

    Equivalent to padding by ``pad`` (zeros or reflection) and cropping at ``offsets``.
    """
    batch, chans, height, width = images.shape
    device = images.device
    rows = offsets[:, :1] - pad + torch.arange(height, device=device)  # [B, H] source rows, may fall outside
    cols = offsets[:, 1:] - pad + torch.arange(width, device=device)  # [B, W]
    if flips is not None:  # mirroring the output = reading the columns right to left
        cols = torch.where(flips.view(-1, 1), cols.flip(1), cols)
    if mode == "reflect":
        rows, cols = _reflect(rows, height), _reflect(cols, width)
        source = images
    else:  # zeros: read from a zero-padded copy
        source = F.pad(images, (pad, pad, pad, pad))  # [B, C, H+2p, W+2p]
        rows, cols = rows + pad, cols + pad
    # One gather over flattened planes: 2.5x faster on a CPU than 4-tensor advanced indexing.
    flat = (rows[:, :, None] * source.shape[-1] + cols[:, None, :]).view(batch, 1, height * width)  # [B, 1, H*W]
    out = source.reshape(batch, chans, -1).gather(2, flat.expand(batch, chans, height * width))
    return out.view(batch, chans, height, width)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Mirror out-of-range indices back inside ``[0, size)`` (numpy's 'reflect', edge not repeated)."""
    index = index.abs()
    return (size - 1) - ((size - 1) - index).abs()


def _affine(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Per-image rotation, translation and zoom with one bilinear ``grid_sample`` call."""
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    warped = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return warped.round_().clamp_(0, 255).to(torch.uint8)

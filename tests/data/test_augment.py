"""Batched augmentation on uint8 tensors: translate with reflection, alternating flip, cutout,
fused normalisation, determinism per (seed, epoch), and the per-sample equivalents.

Images are real CIFAR-10 PNGs (a few hundred, decoded here) or real digits; a label that
is the image's index lets each test find which image a batch row came from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cnnkit.data import AUGMENT_PRESETS, Augment, Preprocess
from cnnkit.data.tensor_data import Batching, TensorLoader
from cnnkit.data.transforms import (
    augment_batch,
    eval_pixels,
    eval_transform,
    normalization_constants,
    normalize_batch,
    normalize_uint8,
    train_transform,
)
from cnnkit.errors import UsageError

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
PLAIN = Preprocess(3, (32, 32), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # normalised = x / 255


@pytest.fixture(scope="module")
def photos(shared_data: Path) -> torch.Tensor:
    """96 real CIFAR-10 training images, uint8 [96, 3, 32, 32] (no two alike, none symmetric)."""
    folder = shared_data / "cifar10" / "train"
    if not folder.is_dir():
        pytest.skip(f"CIFAR-10 PNGs not found under {folder}")
    paths = [p for klass in sorted(folder.iterdir()) for p in sorted(klass.glob("*.png"))[:10]][:96]
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    assert not any(torch.equal(im, im.flip(-1)) for im in images)  # a mirror is always visible
    return images


def _loader(images: torch.Tensor, augment: Augment, *, seed: int = 0, shuffle: bool = True) -> TensorLoader:
    labels = torch.arange(len(images))  # the label is the index: rows reveal their image
    return TensorLoader(images, labels, PLAIN, Batching(32, shuffle=shuffle, seed=seed), augment=augment)


def _epoch(loader: TensorLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """One epoch as uint8 images in dataset order (undoing the shuffle) and the row order."""
    xs, ys = zip(*loader, strict=True)
    x, y = torch.cat(xs), torch.cat(ys)
    images = torch.empty(len(y), *x.shape[1:], dtype=torch.uint8)
    images[y] = x.mul(255).round().to(torch.uint8)
    return images, y


def _reflect_shifts(image: torch.Tensor, pad: int) -> dict[tuple[int, int], torch.Tensor]:
    """``image`` moved by each (dy, dx) in [-pad, pad]^2, the uncovered border mirrored."""
    padded = F.pad(image[None].float(), (pad,) * 4, mode="reflect")[0].to(torch.uint8)
    h, w = image.shape[-2:]
    return {(dy, dx): padded[:, pad - dy : pad - dy + h, pad - dx : pad - dx + w]
            for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1)}  # fmt: skip


# ----------------------------------------------------------------------------- translate


def test_reflect_translate_moves_pixels_exactly(photos: torch.Tensor) -> None:
    pad = 2
    out = augment_batch(photos, Augment(crop_padding=pad, pad_mode="reflect"), torch.Generator().manual_seed(1))

    assert out.shape == photos.shape and out.dtype == torch.uint8
    shifts = []
    for original, moved in zip(photos, out, strict=True):
        matches = [shift for shift, expected in _reflect_shifts(original, pad).items() if torch.equal(moved, expected)]
        assert len(matches) == 1, "not exactly one reflect-padded shift of its image"
        shifts.append(matches[0])
    assert len(set(shifts)) >= 20  # each image draws its own offset in [-2, 2]^2...
    assert {dy for dy, _ in shifts} == {dx for _, dx in shifts} == {-2, -1, 0, 1, 2}  # ...over the full range
    assert not (out == 0).flatten(1).all(1).any()  # no black borders: reflection fills them


def test_translate_and_flip_fold_into_one_gather(photos: torch.Tensor) -> None:
    both = augment_batch(
        photos, Augment(crop_padding=2, pad_mode="reflect", flip_p=1.0), torch.Generator().manual_seed(1)
    )
    moved = augment_batch(photos, Augment(crop_padding=2, pad_mode="reflect"), torch.Generator().manual_seed(1))

    assert torch.equal(both, moved.flip(-1))  # same offsets, then mirrored


# ----------------------------------------------------------------------------- alternating flip


def _flipped(epoch_images: torch.Tensor, photos: torch.Tensor) -> torch.Tensor:
    """bool [N]: which images of an epoch are mirrored (each is either mirrored or not)."""
    same = (epoch_images == photos).flatten(1).all(1)
    mirrored = (epoch_images == photos.flip(-1)).flatten(1).all(1)
    assert (same ^ mirrored).all()
    return mirrored


def test_alternating_flip_flips_each_image_every_other_epoch(photos: torch.Tensor) -> None:
    loader = _loader(photos, Augment(flip_p=0.5, flip="alternate"), seed=3)
    flips = [_flipped(_epoch(loader)[0], photos) for _ in range(4)]

    assert 20 <= int(flips[0].sum()) <= 76  # epoch 0: a random half
    assert torch.equal(flips[1], ~flips[0])  # epoch 1: exactly the others
    assert torch.equal(flips[2], flips[0]) and torch.equal(flips[3], flips[1])

    resumed = _loader(photos, Augment(flip_p=0.5, flip="alternate"), seed=3)
    resumed.set_epoch(3)  # a resumed run sees the same flips
    assert torch.equal(_flipped(_epoch(resumed)[0], photos), flips[3])
    other = _loader(photos, Augment(flip_p=0.5, flip="alternate"), seed=4)
    assert not torch.equal(_flipped(_epoch(other)[0], photos), flips[0])


def test_random_flip_is_drawn_again_every_epoch(photos: torch.Tensor) -> None:
    loader = _loader(photos, Augment(flip_p=0.5), seed=3)
    first, second = (_flipped(_epoch(loader)[0], photos) for _ in range(2))

    assert not torch.equal(first, second) and not torch.equal(first, ~second)


# ----------------------------------------------------------------------------- cutout


def test_cutout_zeroes_one_square_per_image() -> None:
    size = 8
    images = torch.full((64, 3, 32, 32), 200, dtype=torch.uint8)  # 200/255 everywhere: any 0 is cutout
    out = torch.cat([x for x, _ in _loader(images, Augment(cutout=size), shuffle=False)])

    corners = set()
    for image in out:
        zero = (image == 0).all(0)  # [H, W]
        rows, cols = zero.any(1).nonzero().squeeze(1), zero.any(0).nonzero().squeeze(1)
        assert int(zero.sum()) == size * size and len(rows) == len(cols) == size
        assert (rows.diff() == 1).all() and (cols.diff() == 1).all()  # one solid square
        assert torch.allclose(image[:, ~zero], torch.tensor(200 / 255))  # the rest untouched
        corners.add((int(rows[0]), int(cols[0])))
    assert len(corners) > 40  # each image draws its own position


def test_cutout_is_the_mean_colour_after_normalisation() -> None:
    pre = Preprocess(3, (32, 32), CIFAR_MEAN, CIFAR_STD)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    loader = TensorLoader(images, torch.arange(8), pre, Batching(8), augment=Augment(cutout=10))
    x, _ = next(iter(loader))
    plain, _ = next(iter(TensorLoader(images, torch.arange(8), pre, Batching(8))))

    blank = (x == 0).all(1)  # [B, H, W]
    assert blank.flatten(1).sum(1).tolist() == [100] * 8
    torch.testing.assert_close(x[~blank.unsqueeze(1).expand_as(x)], plain[~blank.unsqueeze(1).expand_as(x)])


# ----------------------------------------------------------------------------- determinism, normalisation


def test_same_seed_and_epoch_give_the_same_batches(photos: torch.Tensor) -> None:
    augment = AUGMENT_PRESETS["airbench"]
    first, again = _loader(photos, augment, seed=5), _loader(photos, augment, seed=5)
    epoch0 = [x for x, _ in first]
    assert all(torch.equal(a, b) for a, b in zip(epoch0, [x for x, _ in again], strict=True))
    epoch1 = [x for x, _ in first]
    assert not all(torch.equal(a, b) for a, b in zip(epoch0, epoch1, strict=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_batches_equal_cpu_batches(photos: torch.Tensor) -> None:
    augment = Augment(crop_padding=2, pad_mode="reflect", flip_p=0.5, flip="alternate", cutout=8)
    cpu = TensorLoader(photos, torch.arange(len(photos)), PLAIN, Batching(32, shuffle=True, seed=2), augment=augment)
    gpu = TensorLoader(
        photos, torch.arange(len(photos)), PLAIN, Batching(32, shuffle=True, seed=2), augment=augment, device="cuda"
    )
    for (a, ya), (b, yb) in zip(cpu, gpu, strict=True):
        assert b.is_cuda and torch.equal(ya, yb.cpu())
        torch.testing.assert_close(a, b.cpu(), atol=1e-6, rtol=0)


def test_fused_normalisation_matches_the_plain_formula(photos: torch.Tensor) -> None:
    pre = Preprocess(3, (32, 32), CIFAR_MEAN, CIFAR_STD)
    scale, shift = normalization_constants(pre, "cpu")

    torch.testing.assert_close(normalize_uint8(photos, scale, shift), pre.normalize(photos), atol=2e-6, rtol=0)


# ----------------------------------------------------------------------------- presets, per-sample path


def test_existing_presets_are_unchanged() -> None:
    assert AUGMENT_PRESETS["crop-flip"] == Augment(crop_padding=4, flip_p=0.5)
    assert AUGMENT_PRESETS["flip"] == Augment(flip_p=0.5)
    assert AUGMENT_PRESETS["airbench"].flip == "alternate" and AUGMENT_PRESETS["airbench"].pad_mode == "reflect"


def test_bad_modes_list_the_valid_ones() -> None:
    with pytest.raises(UsageError, match="reflect"):
        Augment(pad_mode="mirror")
    with pytest.raises(UsageError, match="alternate"):
        Augment(flip="sometimes")


def test_per_sample_transform_reflects_and_cuts_out(photos: torch.Tensor) -> None:
    pre = Preprocess(3, (32, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    transform = train_transform(pre, Augment(crop_padding=2, pad_mode="reflect", cutout=6))
    image = Image.fromarray(photos[0].permute(1, 2, 0).numpy())
    torch.manual_seed(0)
    x = transform(image)

    assert x.shape == (3, 32, 32)
    assert int((x == 0).all(0).sum()) == 36  # one 6x6 square at the mean


@pytest.mark.parametrize(("mode", "pre"), [
    ("RGB", Preprocess(3, (224, 224), (0.498, 0.5, 0.5), (0.502, 0.5, 0.5), 256, "bicubic")),
    ("L", Preprocess(1, (28, 28), (0.1307,), (0.3081,), None, "bilinear")),
])  # fmt: skip
def test_pixels_normalised_per_batch_are_exactly_the_eval_transforms_tensors(imagenette, mode, pre) -> None:
    files = sorted((imagenette / "val" / "church").iterdir())[:6]
    images = [Image.open(file).convert(mode) for file in files]
    pixels = torch.stack([eval_pixels(pre)(image) for image in images])
    assert pixels.dtype == torch.uint8 and pixels.shape == (6, pre.channels, *pre.input_size)
    assert torch.equal(normalize_batch(pixels, pre), torch.stack([eval_transform(pre)(image) for image in images]))

"""data.build: real datasets in, loaders and a DataSpec out; batched augmentation.

CIFAR-10 comes from the shared PNG tree; decoding its 60,000 files happens once per
session (the session's CNNKIT_CACHE_DIR, see conftest) and later builds read the cache.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

import cnnkit.data.folder
from cnnkit.config import DataConfig
from cnnkit.data import Augment, Preprocess, build
from cnnkit.data.tensor_data import Batching, TensorLoader
from cnnkit.data.transforms import augment_batch
from cnnkit.errors import DataError, UsageError

DIGITS = [str(d) for d in range(10)]
# From ../shared/data/README.md.
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)


def _indices(spec, name: str) -> list[int]:
    return spec.split["indices"][name]["indices"]


# ----------------------------------------------------------------------------- embedded


def test_embedded_default_builds() -> None:
    loaders, spec = build(DataConfig(), seed=0)

    assert spec.sizes == {"train": 10_000, "val": 2_000, "test": 2_000}
    assert spec.class_names == DIGITS
    assert spec.channels == 1 and spec.input_size == (28, 28)
    assert loaders.train.images.shape == (10_000, 1, 28, 28) and loaders.train.images.dtype == torch.uint8
    assert torch.bincount(loaders.train.labels, minlength=10).min() > 800  # all ten digits, real ones
    images, labels = next(iter(loaders.train))
    assert images.shape == (64, 1, 28, 28) and images.dtype == torch.float32
    assert labels.dtype == torch.long
    assert -0.5 < float(images.mean()) < 0.5  # normalised with MNIST's mean/std


def test_val_fraction_gives_a_stratified_seeded_split() -> None:
    cfg = DataConfig(val_fraction=0.1)
    loaders, spec = build(cfg, seed=0)
    again, spec_again = build(cfg, seed=0)
    _, other = build(cfg, seed=1)

    assert spec.sizes == {"train": 9_000, "val": 1_000, "test": 2_000}
    train, val = set(_indices(spec, "train")), set(_indices(spec, "val"))
    assert not train & val and len(train | val) == 10_000
    pool = torch.bincount(torch.cat([loaders.train.labels, loaders.val.labels]), minlength=10)
    per_class = torch.bincount(loaders.val.labels, minlength=10)
    assert per_class.tolist() == [round(0.1 * int(n)) for n in pool]  # every class keeps its share
    assert spec_again.split == spec.split
    assert torch.equal(again.val.images, loaders.val.images)
    assert _indices(other, "val") != _indices(spec, "val")


def test_saved_split_rebuilds_the_same_indices() -> None:
    cfg = DataConfig(val_fraction=0.1, limit_train=3_000, limit_eval=500)
    loaders, spec = build(cfg, seed=5)
    rebuilt, spec2 = build(cfg, seed=123, split=spec.split)  # the split wins over the seed

    assert spec2.split == spec.split
    assert spec2.sizes == {"train": 3_000, "val": 500, "test": 500}
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(rebuilt, name).images, getattr(loaders, name).images)
        assert torch.equal(getattr(rebuilt, name).labels, getattr(loaders, name).labels)


# ----------------------------------------------------------------------------- MNIST


def test_mnist_from_the_raw_files(mnist_root: Path) -> None:
    loaders, spec = build(DataConfig(name="mnist", data_dir=str(mnist_root)), seed=0)

    assert spec.sizes == {"train": 60_000, "val": 10_000, "test": 10_000}
    assert spec.class_names == DIGITS
    assert int(loaders.train.labels[0]) == 5 and int(loaders.test.labels[0]) == 7
    assert torch.bincount(loaders.train.labels).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(loaders.test.labels).tolist() == MNIST_TEST_COUNTS
    assert spec.preprocess.mean == (0.1307,) and spec.preprocess.std == (0.3081,)
    assert any("test split" in note for note in spec.notes)  # no val split: says so


def test_missing_mnist_offline_names_folder_and_files(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        build(DataConfig(name="mnist", data_dir=str(tmp_path)), seed=0)

    message = str(info.value)
    assert str(tmp_path) in message
    assert "MNIST/raw/train-images-idx3-ubyte" in message
    assert "--data-dir" in message


def test_unknown_dataset_lists_the_valid_names() -> None:
    with pytest.raises(UsageError, match="unknown dataset 'nope'.*mnist"):
        build(DataConfig(name="nope"), seed=0)


def test_unknown_augmentation_fails_before_loading() -> None:
    with pytest.raises(UsageError, match="crop-flip"):
        build(DataConfig(name="mnist", data_dir="/nonexistent", augment="jitter"), seed=0)


# ----------------------------------------------------------------------------- CIFAR-10


@pytest.fixture(scope="session")
def cifar10(shared_data: Path, cnnkit_cache: Path):
    """The full CIFAR-10 PNG tree, decoded once into the session cache."""
    if not (shared_data / "cifar10" / "train").is_dir():
        pytest.skip(f"CIFAR-10 PNGs not found under {shared_data / 'cifar10'}")
    cfg = DataConfig(name="cifar10", data_dir=str(shared_data), shuffle=False)
    return cfg, *build(cfg, seed=0)


def test_cifar10_from_png_tree(cifar10) -> None:
    _, loaders, spec = cifar10

    assert spec.sizes == {"train": 50_000, "val": 10_000, "test": 10_000}
    assert spec.class_names == CIFAR_CLASSES
    assert spec.channels == 3 and spec.input_size == (32, 32)
    train = loaders.train.images
    assert train.shape == (50_000, 3, 32, 32) and train.dtype == torch.uint8
    assert loaders.test.images.shape == (10_000, 3, 32, 32)
    assert torch.bincount(loaders.train.labels).tolist() == [5_000] * 10
    assert torch.bincount(loaders.test.labels).tolist() == [1_000] * 10
    mean = train.sum(dim=(0, 2, 3), dtype=torch.int64).double() / (50_000 * 32 * 32 * 255)
    assert mean.tolist() == pytest.approx(CIFAR_MEAN, abs=5e-4)  # the decode is faithful
    images, _ = next(iter(loaders.train))
    assert images.shape == (64, 3, 32, 32)


def test_cifar10_second_build_reads_the_cache(cifar10, cnnkit_cache: Path, monkeypatch) -> None:
    cfg, loaders, _ = cifar10
    assert len(list((cnnkit_cache / "decoded").glob("*/images.npy"))) >= 2  # train and test

    def no_decoding(path, mode="RGB"):
        raise AssertionError(f"decoded {path} again instead of reading the cache")

    monkeypatch.setattr(cnnkit.data.folder, "load_image", no_decoding)
    again, spec = build(cfg, seed=0)

    assert spec.sizes["train"] == 50_000
    assert torch.equal(again.train.images, loaders.train.images)
    assert torch.equal(again.test.labels, loaders.test.labels)


# ----------------------------------------------------------------------------- augmentation


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """64 real digits, uint8 [64, 1, 28, 28]."""
    loaders, _ = build(DataConfig(limit_train=64, shuffle=False), seed=0)
    return loaders.train.images


def _shift(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``image`` moved by (dy, dx) pixels, zeros where nothing moved in."""
    out = torch.zeros_like(image)
    h, w = image.shape[-2:]
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[
        ..., max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


def test_crop_padding_shifts_each_image_exactly(digits: torch.Tensor) -> None:
    pad = 4
    out = augment_batch(digits, Augment(crop_padding=pad), torch.Generator().manual_seed(0))

    assert out.shape == digits.shape and out.dtype == torch.uint8
    shifts = []
    for original, cropped in zip(digits, out, strict=True):
        matches = [(dy, dx) for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1)
                   if torch.equal(cropped, _shift(original, dy, dx))]  # fmt: skip
        assert matches, "a crop that is not a zero-filled shift of its image"
        shifts.append(matches[0])
    assert len(set(shifts)) >= 20  # each image draws its own offset
    assert any(abs(dy) == pad or abs(dx) == pad for dy, dx in shifts)  # the full range is used


def test_flips(digits: torch.Tensor) -> None:
    always = augment_batch(digits, Augment(flip_p=1.0), torch.Generator().manual_seed(0))
    assert torch.equal(always, digits.flip(-1))

    half = augment_batch(digits, Augment(flip_p=0.5), torch.Generator().manual_seed(0))
    flipped = [torch.equal(a, b.flip(-1)) for a, b in zip(half, digits, strict=True)]
    kept = [torch.equal(a, b) for a, b in zip(half, digits, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 16 <= sum(flipped) <= 48 and sum(kept) >= 16


def test_affine_keeps_dtype_shape_and_is_reproducible(digits: torch.Tensor) -> None:
    augment = Augment(rotate_deg=15, translate=0.1, scale=(0.9, 1.1))
    out = augment_batch(digits, augment, torch.Generator().manual_seed(3))
    again = augment_batch(digits, augment, torch.Generator().manual_seed(3))

    assert out.shape == digits.shape and out.dtype == torch.uint8 and out.device == digits.device
    assert torch.equal(out, again)
    changed = (out != digits).flatten(1).any(1)
    assert changed.all()
    # Ink is moved, not created or lost wholesale (zoom and borders change it a little).
    ratio = out.flatten(1).float().sum(1) / digits.flatten(1).float().sum(1)
    assert 0.7 < float(ratio.min()) and float(ratio.max()) < 1.4


def test_identity_augment_returns_the_batch(digits: torch.Tensor) -> None:
    assert augment_batch(digits, Augment(), torch.Generator()) is digits


def test_tensor_loader_set_epoch_reproduces_order() -> None:
    images = torch.zeros(100, 1, 4, 4, dtype=torch.uint8)
    labels = torch.arange(100)  # the label is the index: batches reveal the order
    pre = Preprocess(1, (4, 4), (0.0,), (1.0,))

    def order(loader: TensorLoader) -> list[int]:
        return torch.cat([y for _, y in loader]).tolist()

    first = TensorLoader(images, labels, pre, Batching(16, shuffle=True, seed=7))
    epoch0, epoch1 = order(first), order(first)
    assert sorted(epoch0) == list(range(100)) and epoch0 != epoch1
    assert len(first) == 7  # ceil(100 / 16) without drop_last

    resumed = TensorLoader(images, labels, pre, Batching(16, shuffle=True, seed=7))
    resumed.set_epoch(1)
    assert order(resumed) == epoch1
    resumed.set_epoch(0)
    assert order(resumed) == epoch0
    plain = TensorLoader(images, labels, pre, Batching(16))
    assert order(plain) == list(range(100))
    dropping = TensorLoader(images, labels, pre, Batching(16, shuffle=True, drop_last=True))
    assert len(dropping) == 6 and len(order(dropping)) == 96


# ----------------------------------------------------------------------------- folders


def test_folder_dataset_builds_loaders(tmp_path: Path, imagenette: Path) -> None:
    classes = ["chain_saw", "church", "golf_ball"]
    for name in classes:
        (tmp_path / "photos" / name).mkdir(parents=True)
        for photo in sorted((imagenette / "train" / name).glob("*.JPEG"))[:10]:
            shutil.copy(photo, tmp_path / "photos" / name / photo.name)
    cfg = DataConfig(name=str(tmp_path / "photos"), image_size=64, batch_size=8, workers=0)

    loaders, spec = build(cfg, seed=0)

    assert spec.class_names == classes
    assert spec.sizes == {"train": 24, "val": 6}  # 20 % of each class held out
    assert spec.channels == 3 and spec.input_size == (64, 64)
    assert Counter(spec.split["files"]["val"]["labels"]) == {0: 2, 1: 2, 2: 2}
    assert len(spec.preprocess.mean) == 3 and all(0.1 < m < 0.9 for m in spec.preprocess.mean)
    batches = list(loaders.train)
    assert len(batches) == 3
    for images, labels in batches:
        assert images.shape == (8, 3, 64, 64) and images.dtype == torch.float32
        assert labels.max() < 3
    images, labels = next(iter(loaders.val))
    assert images.shape == (6, 3, 64, 64)

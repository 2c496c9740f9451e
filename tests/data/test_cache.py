"""The decode-once cache of folder datasets: bit-identical to decoding, reused by a second
build without decoding, never trusted half-written, bad files skipped.

Real JPEGs from imagenette-2k (3 classes x 8 photos, copied into a temporary folder).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import cnnkit.data.cache
from cnnkit.config import DataConfig
from cnnkit.data import build
from cnnkit.data.cache import CachedFileLoader, decode_image
from cnnkit.data.folder import ImageLoadError, load_image
from cnnkit.errors import UsageError

CLASSES = ["chain_saw", "church", "golf_ball"]


@pytest.fixture
def photos(tmp_path: Path, imagenette: Path) -> Path:
    for name in CLASSES:
        (tmp_path / "photos" / name).mkdir(parents=True)
        for photo in sorted((imagenette / "train" / name).glob("*.JPEG"))[:8]:
            shutil.copy(photo, tmp_path / "photos" / name / photo.name)
    return tmp_path / "photos"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache folder of this test's own, so every test starts with nothing decoded."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("CNNKIT_CACHE_DIR", str(folder))
    return folder


def _cfg(photos: Path, **values) -> DataConfig:
    values = {"image_size": 48, "batch_size": 4, "workers": 0, "decode_cache": "on", "augment": "crop-flip", **values}
    return DataConfig(name=str(photos), **values)


def _no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(path, mode="RGB"):
        raise AssertionError(f"decoded {path} again instead of reading the cache")

    monkeypatch.setattr(cnnkit.data.cache, "load_image", fail)


def test_cached_images_are_bit_identical_to_decoding(photos: Path, cache: Path) -> None:
    loaders, spec = build(_cfg(photos), seed=0)
    train = loaders.train
    assert isinstance(train, CachedFileLoader) and not train.from_cache

    batches = list(train)  # the first pass decodes, trains and writes the cache
    assert train.from_cache and len(batches) == len(train) == 4  # 16 training photos, batch 4
    assert all(x.shape == (4, 3, 48, 48) and x.dtype == torch.float32 for x, _ in batches)
    (folder,) = (cache / "decoded-files").iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["images.u8", "meta.json"]
    for row, path in enumerate(train.paths):
        direct = decode_image(path, spec.preprocess, "RGB")  # PIL decode, resize, centre crop
        assert torch.equal(train.images[row], direct), path
    # The eval view (no augmentation) is the eval transform's image, normalised.
    val = loaders.val
    x, _ = next(iter(val))
    decoded = [decode_image(p, spec.preprocess, "RGB") for p in val.paths[: len(x)]]
    want = spec.preprocess.normalize(torch.stack(decoded))
    torch.testing.assert_close(x, want, atol=2e-6, rtol=0)


def test_a_second_build_reads_the_cache(photos: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, _ = build(_cfg(photos), seed=0)
    list(first.train), list(first.val)

    _no_decoding(monkeypatch)
    again, _ = build(_cfg(photos), seed=0)
    assert again.train.from_cache and again.val.from_cache
    assert torch.equal(again.train.images, first.train.images)
    assert len(list(again.train)) == 4  # augmented batches straight from the memory map
    # Another size is other decoded images: a different cache, decoded afresh.
    other, _ = build(_cfg(photos, image_size=40), seed=0)
    assert not other.train.from_cache


def test_an_interrupted_first_pass_leaves_nothing_trusted(photos: Path, cache: Path) -> None:
    loaders, _ = build(_cfg(photos), seed=0)
    batches = iter(loaders.train)
    next(batches)  # decoding has started...
    batches.close()  # ...and stops, as when a run is killed

    assert not loaders.train.from_cache
    assert not [p for p in (cache / "decoded-files").iterdir()]  # no cache, no temporary left
    # A crashed process's half-written folder (and a truncated data file) is never read.
    list(loaders.train)
    (folder,) = (cache / "decoded-files").iterdir()
    with open(folder / "images.u8", "r+b") as handle:
        handle.truncate(100)
    fresh, _ = build(_cfg(photos), seed=0)
    assert not fresh.train.from_cache


def test_unreadable_files_are_skipped_and_left_out(photos: Path, cache: Path, monkeypatch) -> None:
    (photos / "church" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (photos / "church" / "empty.JPEG").write_bytes(b"")
    cfg = _cfg(photos, val_fraction=0.01)
    loaders, _ = build(cfg, seed=0)

    with pytest.warns(RuntimeWarning, match="skipping"):
        first = list(loaders.train)
    assert sum(len(y) for _, y in first) <= 24 and len(loaders.train.bad_files) >= 1
    assert len(loaders.train.labels) == len(loaders.train.paths) - len(loaders.train.bad_files)

    _no_decoding(monkeypatch)
    again, _ = build(cfg, seed=0)
    assert again.train.from_cache and again.train.bad_files == loaders.train.bad_files
    seen = sum(len(y) for _, y in again.train)
    assert seen == len(again.train) * 4


def test_decode_image_reports_a_bad_file(tmp_path: Path, imagenette: Path) -> None:
    from cnnkit.data.spec import Preprocess

    pre = Preprocess(3, (32, 32), (0.5,) * 3, (0.5,) * 3, resize=32)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 nope")
    with pytest.raises(ImageLoadError):
        decode_image(str(tmp_path / "bad.jpg"), pre, "RGB")
    photo = next((imagenette / "val" / "church").glob("*.JPEG"))
    assert decode_image(str(photo), pre, "RGB").shape == (3, 32, 32)
    assert load_image(photo, "RGB").size != (32, 32)  # it was resized


def test_off_and_auto(photos: Path, cache: Path) -> None:
    off, spec = build(_cfg(photos, decode_cache="off"), seed=0)
    assert not isinstance(off.train, CachedFileLoader)
    auto, spec = build(_cfg(photos, decode_cache="auto"), seed=0)
    assert isinstance(auto.train, CachedFileLoader)
    rotating, spec = build(_cfg(photos, decode_cache="auto", augment="animals"), seed=0)
    assert not isinstance(rotating.train, CachedFileLoader) and isinstance(rotating.val, CachedFileLoader)
    assert any("decode cache off" in note for note in spec.notes)
    with pytest.raises(UsageError, match="auto"):
        build(_cfg(photos, decode_cache="sometimes"), seed=0)

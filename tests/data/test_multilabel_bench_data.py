"""bench/multilabel_data.py: photo collages and digit canvases built from the shared data, read back
through the multi-label CSV reader and checked image by image against their sources."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

from cnnkit.data.folder import read_multilabel_csv

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def builder() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("multilabel_data", ROOT / "bench" / "multilabel_data.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _read_back(folder: Path) -> dict[str, tuple[str, list[str]]]:
    """file (relative) -> (split, label names) as the multi-label reader sees ``labels.csv``."""
    data = read_multilabel_csv(folder / "labels.csv", val_fraction=0.0, test_fraction=0.0, seed=0)
    seen = {}
    for split, files in data.splits.items():
        for path, labels in zip(files.paths, files.label_indices(), strict=True):
            seen[Path(path).relative_to(folder).as_posix()] = (split, [data.class_names[k] for k in labels])
    return seen


def test_photo_collages(builder: ModuleType, imagenette: Path, tmp_path: Path) -> None:
    plans = builder.build_collages(imagenette, tmp_path, train=16, val=4, seed=5)
    seen = _read_back(tmp_path)
    assert len(seen) == 20 and {split for split, _ in seen.values()} == {"train", "val"}
    for plan in plans:
        assert seen[plan.file] == (plan.split, plan.labels)
        assert 2 <= len(plan.photos) <= 3 and 1 <= len(plan.labels) <= 3
        assert all(f"/{plan.split}/{name}/" in photo for photo, name in zip(plan.photos, plan.classes, strict=True))
        with Image.open(tmp_path / plan.file) as image:
            assert image.size == (224, 224) and image.mode == "RGB"
            pixels = np.asarray(image, dtype=np.float32)
        for tile in range(4):
            x, y = (tile % 2) * 112, (tile // 2) * 112
            region = pixels[y : y + 112, x : x + 112]
            if tile in plan.tiles:
                photo = plan.photos[plan.tiles.index(tile)]
                with Image.open(photo) as source:
                    expected = np.asarray(source.convert("RGB").resize((112, 112), Image.Resampling.BILINEAR))
                assert np.abs(region - expected).mean() < 6, (plan.file, tile)  # JPEG noise only
            else:
                assert region.mean() < 4, (plan.file, tile)  # an empty tile stays black
    again = builder.build_collages(imagenette, tmp_path / "again", train=16, val=4, seed=5)
    assert again == plans and (tmp_path / "again" / "labels.csv").read_text() == (tmp_path / "labels.csv").read_text()


def test_digit_canvases(builder: ModuleType, mnist_root: Path, tmp_path: Path) -> None:
    plans = builder.build_canvases(mnist_root, tmp_path, train=16, test=4, seed=2)
    seen = _read_back(tmp_path)
    assert len(seen) == 20 and {split for split, _ in seen.values()} == {"train", "test"}
    mnist = {split: builder._mnist(mnist_root, train=split == "train") for split in ("train", "test")}
    for plan in plans:
        images, labels = mnist[plan.split]
        assert seen[plan.file] == (plan.split, sorted({str(int(labels[i])) for i in plan.indices}))
        assert 1 <= len(plan.indices) <= 3
        with Image.open(tmp_path / plan.file) as image:
            assert image.size == (64, 64) and image.mode == "L"
            canvas = np.asarray(image)
        covered = np.zeros_like(canvas, dtype=bool)
        for index, (x, y) in zip(plan.indices, plan.corners, strict=True):
            x0, y0, x1, y1 = builder._ink_box(images[index])
            # inked boxes never overlap, so each digit's ink is on the canvas exactly
            assert np.array_equal(canvas[y + y0 : y + y1, x + x0 : x + x1], images[index][y0:y1, x0:x1])
            covered[y + y0 : y + y1, x + x0 : x + x1] = True
        assert not canvas[~covered].any(), "ink outside the placed digits"

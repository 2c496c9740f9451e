"""Real data for the studio tests: Imagenette photos by class (tests/studio/)."""

from __future__ import annotations

from pathlib import Path

PHOTO_CLASSES = ("cassette_player", "chain_saw", "church")
PHOTOS_PER_CLASS = 20


def photos(imagenette: Path, split: str, name: str, count: int | None = None) -> list[Path]:
    """The first ``count`` photos of class ``name`` in Imagenette's ``split`` (sorted by name)."""
    return sorted((imagenette / split / name).glob("*.JPEG"))[:count]

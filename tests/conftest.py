"""Shared fixtures: the real datasets under ../shared/data (or $CNNKIT_DATA) and offline mode."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CNNKIT_DATA", ROOT.parent / "shared" / "data")).resolve()

# Tests never touch the network: datasets must come from disk.
os.environ["CNNKIT_OFFLINE"] = "1"
torch.set_num_threads(min(2, os.cpu_count() or 1))


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set CNNKIT_DATA to the shared data folder)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder holding MNIST/, cifar10/ and imagenette-2k/."""
    return _require(SHARED_DATA)


@pytest.fixture(scope="session")
def imagenette(shared_data: Path) -> Path:
    return _require(shared_data / "imagenette-2k")


@pytest.fixture(scope="session")
def mnist_root(shared_data: Path) -> Path:
    """Folder that holds MNIST/raw/ (pass as data_dir)."""
    _require(shared_data / "MNIST" / "raw")
    return shared_data

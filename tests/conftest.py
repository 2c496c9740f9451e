"""Shared fixtures: the real datasets under ../shared/data (or $CNNKIT_DATA) and offline mode."""

from __future__ import annotations

import builtins
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CNNKIT_DATA", ROOT.parent / "shared" / "data")).resolve()

# Tests never touch the network: datasets must come from disk.
os.environ["CNNKIT_OFFLINE"] = "1"
torch.set_num_threads(min(2, os.cpu_count() or 1))


def _chromium_path() -> str | None:
    from screenshot_report import chromium_path  # scripts/ (pyproject: pytest's pythonpath)

    return chromium_path()


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


@pytest.fixture(scope="session", autouse=True)
def cnnkit_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh ``CNNKIT_CACHE_DIR`` for the whole session: tests never read or write the
    user's cache, and slow decodes (CIFAR-10 PNGs) happen once per session."""
    folder = tmp_path_factory.mktemp("cnnkit-cache")
    previous = os.environ.get("CNNKIT_CACHE_DIR")
    os.environ["CNNKIT_CACHE_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("CNNKIT_CACHE_DIR", None)
    else:
        os.environ["CNNKIT_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def mnist_digits(mnist_root: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Real MNIST as uint8 images ``[N, 28, 28]`` and int64 labels, per official split."""
    from torchvision.datasets import MNIST

    return {
        split: (ds.data, ds.targets)
        for split, ds in (
            ("train", MNIST(str(mnist_root), train=True, download=False)),
            ("test", MNIST(str(mnist_root), train=False, download=False)),
        )
    }


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium; installed here (apt, as root) when missing, as CI needs it."""
    if _chromium_path() is None and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        apt = ["apt-get", "-q", "-o", "DPkg::Lock::Timeout=600"]  # waits if another apt runs
        for step in (["install", "-y", "chromium"], ["update"], ["install", "-y", "chromium"]):
            subprocess.run(apt + step, check=False, capture_output=True, timeout=900, env=env)
            if step[0] == "install" and _chromium_path() is not None:
                break
    path = _chromium_path()
    if path is None:
        pytest.fail("the browser test needs Chromium: apt-get install chromium (Debian) or put `chromium` on PATH")
    return path


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator:
    """A headless Chromium context (Playwright) with a fresh profile, for the page tests."""
    import tempfile

    from playwright.sync_api import sync_playwright
    from screenshot_report import CHROMIUM_FLAGS

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=chromium,
            headless=True,
            # a fake camera (a moving test pattern), granted without a prompt: the studio's webcam
            args=[*CHROMIUM_FLAGS, "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"],
            permissions=["camera"],
            viewport={"width": 1200, "height": 940},
        )
        yield context
        context.close()


@pytest.fixture(scope="session")
def mnist_png(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The first embedded MNIST test digit as a PNG file, and its label."""
    from PIL import Image

    from cnnkit.data.datasets import load_source

    images, labels = load_source("embedded-mnist", None, False).test
    path = tmp_path_factory.mktemp("digit") / "digit.png"
    Image.fromarray(images[0, 0].numpy()).save(path)
    return path, str(int(labels[0]))


@pytest.fixture
def hide_package(monkeypatch: pytest.MonkeyPatch):
    """``hide_package(NAME)``: importing NAME or NAME.x raises ImportError for the rest of the
    test, as when the optional extra that brings it is not installed."""
    real_import = builtins.__import__
    hidden: set[str] = set()

    def importing(name, *args, **kwargs):
        if name.split(".")[0] in hidden:
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", importing)
    return hidden.add

"""A trained digit model shared by the serve tests, and `cnnkit serve` in its own process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from local_server import Server, kill_all, start_cnnkit_server
from PIL import Image

import cnnkit


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LeNet on the embedded MNIST subset (the default run), 2 epochs: about 96 % on the
    held-out digits, seeded, so every prediction the tests make is deterministic."""
    out = tmp_path_factory.mktemp("runs")
    run = cnnkit.train(
        epochs=2,
        output_dir=str(out),
        name="demo",
        report=False,
        progress=False,
        log=lambda line: None,
    )
    return run.dir


@pytest.fixture(scope="session")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Server]]:
    """``start_server(RUN, *flags)``: ``cnnkit serve RUN --port P *flags`` on 127.0.0.1 in
    its own process, returned once its page answers; every server still running is killed
    when the session ends."""
    started: list[Server] = []

    def start(run: Path, *flags: str) -> Server:
        server = start_cnnkit_server("serve", [str(run), *flags], tmp_path_factory.mktemp("serve") / "server.log")
        started.append(server)
        return server

    yield start
    kill_all(started)


@pytest.fixture(scope="session")
def bad_uploads(tmp_path_factory: pytest.TempPathFactory, blank_png) -> dict[str, tuple[Path, str]]:
    """File name -> (a bad upload, what the demo's message about it must say)."""
    import io

    import numpy as np

    folder = tmp_path_factory.mktemp("bad-uploads")
    (folder / "notes.png").write_text("these are notes, not an image\n" * 20)
    ramp = np.add.outer(np.arange(240), np.arange(320)).astype(np.uint8)  # [240, 320]
    jpeg = io.BytesIO()
    Image.fromarray(np.stack([ramp, 255 - ramp, ramp // 2], -1)).save(jpeg, "JPEG")  # [240, 320, 3]
    (folder / "photo.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])  # its first half
    blank_png(folder / "huge.png", 20000, 20000)  # 400 MP, 388 kB on disk
    (folder / "empty.png").write_bytes(b"")
    says = {"notes.png": "not an image", "photo.jpg": "truncated", "huge.png": "at most 40 MP",
            "empty.png": "zero bytes"}  # fmt: skip
    return {name: (folder / name, words) for name, words in says.items()}


@pytest.fixture(scope="session")
def blank_png() -> Callable[[Path, int, int], None]:
    """``blank_png(path, width, height)``: a valid all-black greyscale PNG of any size,
    compressed a row at a time (no image of that size is ever in memory)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    def write(path: Path, width: int, height: int) -> None:
        packer = zlib.compressobj(9)
        row = bytes(width + 1)  # filter byte 0, then the row's pixels
        pixels = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
        header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))

    return write

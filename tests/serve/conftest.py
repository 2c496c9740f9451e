"""A trained digit model shared by the serve tests."""

from __future__ import annotations

from pathlib import Path

import pytest

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

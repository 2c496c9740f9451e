"""A trained digit model for the export, precision and runtime tests."""

from __future__ import annotations

from pathlib import Path

import pytest

import cnnkit


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LeNet after one epoch of the default recipe (embedded MNIST, no augmentation: ~2 s).

    One per test module: the modules export into the run's ``export/`` folder and edit
    copies of it, so they must not share one.
    """
    out = tmp_path_factory.mktemp("runs")
    run = cnnkit.train(epochs=1, augment="none", output_dir=str(out), name="mnist", report=False, progress=False,
                       log=lambda line: None)  # fmt: skip
    return run.dir

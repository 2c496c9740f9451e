"""Real digits as a user's folder of scans: the embedded MNIST subset written as PNG files."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

import cnnkit

EMBEDDED = Path(cnnkit.__file__).parent / "data" / "embedded" / "mnist_subset.npz"


def write_digits(root: Path, digits: Iterable[int], count: int, *, split: str = "train", skip: int = 0) -> Path:
    """``root/<digit>/<i>.png`` for each of ``digits``: ``count`` real greyscale digits of the
    embedded subset's ``split`` (``train`` or ``test``), after the first ``skip`` of each."""
    data = np.load(EMBEDDED)
    images, labels = data[f"{split}_images"], data[f"{split}_labels"]
    for digit in digits:
        folder = root / str(digit)
        folder.mkdir(parents=True, exist_ok=True)
        for i, index in enumerate(np.flatnonzero(labels == digit)[skip : skip + count]):
            Image.fromarray(images[index]).save(folder / f"{i}.png")
    return root

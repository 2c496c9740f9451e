"""Derive the embedded default dataset (src/cnnkit/data/embedded/mnist_subset.npz).

A class-balanced subset of real MNIST: the first N training images of each digit (in the
original file order) and the first M test images of each digit from the official test set,
stored as uint8 arrays with np.savez_compressed (loaded with allow_pickle=False).

Usage: python scripts/make_embedded_mnist.py [MNIST_PARENT_DIR] [--train-per-class N] [--test-per-class M]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "src" / "cnnkit" / "data" / "embedded" / "mnist_subset.npz"


def read_idx(path: Path) -> np.ndarray:
    """Read an uncompressed IDX file (MNIST's own format)."""
    raw = path.read_bytes()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def first_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first ``per_class`` examples of each class, in original order."""
    keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])
    return np.sort(keep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", nargs="?", default="../shared/data", help="folder holding MNIST/raw/")
    parser.add_argument("--train-per-class", type=int, default=1000)
    parser.add_argument("--test-per-class", type=int, default=200)
    args = parser.parse_args()
    raw = Path(args.root) / "MNIST" / "raw"
    arrays = {}
    for split, prefix, per_class in (("train", "train", args.train_per_class), ("test", "t10k", args.test_per_class)):
        images = read_idx(raw / f"{prefix}-images-idx3-ubyte")
        labels = read_idx(raw / f"{prefix}-labels-idx1-ubyte")
        keep = first_per_class(labels, per_class)
        arrays[f"{split}_images"] = images[keep]
        arrays[f"{split}_labels"] = labels[keep].astype(np.uint8)
        arrays[f"{split}_source_index"] = keep.astype(np.int32)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB): "
          f"{len(arrays['train_labels'])} train, {len(arrays['test_labels'])} test")


if __name__ == "__main__":
    main()

"""Images/s of decoding + augmenting a folder of JPEGs: per-sample PIL vs cnnkit's decode-once cache.

imagenette-2k's 1,500 training photos (10 classes), resized (short side) and centre-cropped
to ``--image-size`` (default 160), then random crop (4-pixel padding) + horizontal flip,
normalised, in batches of 64, with 2 worker processes on both sides. No model: this is the
data pipeline alone, what a training loop waits for.

* **PIL per sample**: cnnkit's per-sample path (``--decode-cache off``), the same as a
  torchvision ``ImageFolder`` + ``DataLoader`` with v2 transforms: every epoch decodes
  every JPEG again, resizes it, augments it and converts it to a tensor, one image at a time.
* **decode cache**: ``--decode-cache on``: the first epoch decodes each JPEG once (in the
  workers) and writes the resized uint8 image into a memory-mapped file; later epochs
  gather uint8 batches from it and augment them a batch at a time. The cache starts empty
  (a fresh ``CNNKIT_CACHE_DIR``), so epoch 1 includes writing it.

Printed per side: images/s of epoch 1 and epoch 2 (medians over repeats); the ratio
compares epoch 2 (the steady state: every epoch after the first, and every later run).
Goal: the cache's epoch 2 at least 3x the PIL path's.

Usage::

    .venv/bin/python bench/data_pipeline.py                  # 3 repeats, ~3 min on 2 cores
    .venv/bin/python bench/data_pipeline.py --repeats 1 --image-size 96
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ["CNNKIT_OFFLINE"] = "1"

import torch  # noqa: E402
from machine import core_count, machine_lines  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GOAL = 3.0


def epoch_rates(data: Path, image_size: int, mode: str, epochs: int = 2) -> list[float]:
    """Images/s of each of ``epochs`` passes over the training loader (fresh cache folder)."""
    from cnnkit.config import DataConfig
    from cnnkit.data import build

    with tempfile.TemporaryDirectory() as cache:
        os.environ["CNNKIT_CACHE_DIR"] = cache
        cfg = DataConfig(name=str(data / "train"), image_size=image_size, batch_size=64, workers=2,
                         augment="crop-flip", decode_cache=mode, val_fraction=0.01,
                         mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])  # fmt: skip
        loaders, _ = build(cfg, seed=0)
        rates = []
        for _ in range(epochs):
            start, seen = time.perf_counter(), 0
            for _, labels in loaders.train:
                seen += len(labels)
            rates.append(seen / (time.perf_counter() - start))
        del loaders  # worker processes end before the folder goes
    return rates


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    beside = ROOT.parent / "shared" / "data"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("CNNKIT_DATA") or beside) / "imagenette-2k")
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if not (args.data / "train").is_dir():
        parser.error(f"{args.data}/train not found (set --data or $CNNKIT_DATA)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(core_count())
    print("\n".join(machine_lines(torch.get_num_threads())))
    print(f"data: {args.data}/train (1,500 JPEGs, 10 classes; 1 % held out), {args.image_size}px, "
          f"crop-flip, batch 64, 2 workers; {args.repeats} repeats")  # fmt: skip
    sides = {"PIL per sample": "off", "decode cache": "on"}
    rates: dict[str, list[list[float]]] = {side: [] for side in sides}
    for repeat in range(args.repeats):
        for side, mode in sides.items():
            rates[side].append(epoch_rates(args.data, args.image_size, mode))
            epochs = ", ".join(f"epoch {i + 1} {r:.0f} img/s" for i, r in enumerate(rates[side][-1]))
            print(f"  repeat {repeat + 1} {side}: {epochs}", flush=True)
    print("\n| path | epoch 1 images/s | epoch 2 images/s (median) |")
    print("|---|---|---|")
    medians = {}
    for side in sides:
        first = statistics.median(r[0] for r in rates[side])
        medians[side] = statistics.median(r[1] for r in rates[side])
        print(f"| {side} | {first:.0f} | {medians[side]:.0f} |")
    ratio = medians["decode cache"] / medians["PIL per sample"]
    print(f"\nepoch 2: decode cache / PIL per sample = {ratio:.1f}x "
          f"(goal >= {GOAL:g}x: {'met' if ratio >= GOAL else 'NOT met'})")


if __name__ == "__main__":
    main()

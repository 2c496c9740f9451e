"""Builds the multi-label benchmark data of issue 30 from the shared real datasets.

Two data sets, each a folder of images and a ``labels.csv`` (``path,labels,split``, labels
separated by ``;``) that ``cnnkit.data.folder.read_multilabel_csv`` reads:

* **photo collages** (``collages/``): 2 or 3 imagenette-2k photos, each shrunk to a
  112x112 tile, placed on random tiles of a 2x2 grid of a 224x224 black image (the other
  tiles stay black). Labels: the photos' distinct classes (two photos of one class give
  one label). Train collages use only imagenette-2k's train photos, val collages only its
  val photos, so no photo is shared across splits. JPEG, quality 95.
* **digit canvases** (``digits/``): 1 to 3 MNIST digits (28x28) pasted on a 64x64 black
  canvas at random places where their inked boxes do not overlap. Labels: the distinct
  digits (class names ``0``..``9``). Train canvases from MNIST train, test canvases from
  MNIST test (read with torchvision, ``download=False``). PNG (lossless).

Everything is seeded: the same sizes and seed give the same files. The plans
(:class:`CollagePlan`, :class:`CanvasPlan`) are returned, so a test can check each image
against its sources.

Usage (from the repository root)::

    .venv/bin/python bench/multilabel_data.py OUT                 # both, default sizes
    .venv/bin/python bench/multilabel_data.py OUT --only digits --train-canvases 600 --test-canvases 100
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

CSV_NAME = "labels.csv"
COLLAGE_SIZE = 224
TILE = COLLAGE_SIZE // 2
CANVAS_SIZE = 64
DIGIT = 28


def default_data_dir() -> Path:
    """``$CNNKIT_DATA`` or the shared data folder beside the repository."""
    if os.environ.get("CNNKIT_DATA"):
        return Path(os.environ["CNNKIT_DATA"])
    return Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass(frozen=True)
class CollagePlan:
    """One collage: ``photos[j]`` (a path) with class ``classes[j]`` goes on tile ``tiles[j]``.

    Tiles are numbered 0 1 / 2 3 (row by row); tile ``t`` spans ``x = (t % 2) * 112``,
    ``y = (t // 2) * 112``.
    """

    file: str  # relative to the data set's folder
    split: str
    photos: tuple[str, ...]
    classes: tuple[str, ...]
    tiles: tuple[int, ...]

    @property
    def labels(self) -> list[str]:
        return sorted(set(self.classes))


@dataclass(frozen=True)
class CanvasPlan:
    """One canvas: MNIST image ``indices[j]`` (digit ``digits[j]``), top-left corner at ``corners[j]`` (x, y)."""

    file: str
    split: str
    indices: tuple[int, ...]
    digits: tuple[int, ...]
    corners: tuple[tuple[int, int], ...]

    @property
    def labels(self) -> list[str]:
        return sorted({str(d) for d in self.digits})


def _photos(image_root: Path, split: str) -> list[tuple[str, str]]:
    """``(path, class)`` of every photo of an imagenette-style ``split/<class>/`` folder, sorted."""
    folder = image_root / split
    if not folder.is_dir():
        raise FileNotFoundError(f"no {folder}: give the imagenette-2k folder (train/ and val/ of class folders)")
    return [(str(p), c.name) for c in sorted(folder.iterdir()) if c.is_dir() for p in sorted(c.iterdir())]


def plan_collages(image_root: Path, counts: dict[str, int], seed: int) -> list[CollagePlan]:
    """Seeded plans of ``counts[split]`` collages per split (``train``/``val``, photos from the same split)."""
    rng = random.Random(seed)
    plans = []
    for split, count in counts.items():
        pool = _photos(image_root, split)
        for n in range(count):
            chosen = rng.sample(pool, rng.choice((2, 3)))
            tiles = rng.sample(range(4), len(chosen))
            plans.append(CollagePlan(f"{split}/{n:05d}.jpg", split, tuple(p for p, _ in chosen),
                                     tuple(c for _, c in chosen), tuple(tiles)))  # fmt: skip
    return plans


def render_collage(plan: CollagePlan) -> Image.Image:
    """The 224x224 RGB collage of ``plan`` (photos resized to 112x112, bilinear, antialiased)."""
    canvas = Image.new("RGB", (COLLAGE_SIZE, COLLAGE_SIZE))
    for photo, tile in zip(plan.photos, plan.tiles, strict=True):
        with Image.open(photo) as image:
            small = image.convert("RGB").resize((TILE, TILE), Image.Resampling.BILINEAR)
        canvas.paste(small, ((tile % 2) * TILE, (tile // 2) * TILE))
    return canvas


def build_collages(
    image_root: Path, out: Path, *, train: int = 1500, val: int = 300, seed: int = 0
) -> list[CollagePlan]:
    """Write ``train`` + ``val`` collages and ``out/labels.csv``; return their plans."""
    plans = plan_collages(Path(image_root), {"train": train, "val": val}, seed)
    for plan in plans:
        (out / plan.file).parent.mkdir(parents=True, exist_ok=True)
        render_collage(plan).save(out / plan.file, quality=95)
    _write_csv(out, [(p.file, p.labels, p.split) for p in plans])
    return plans


def _mnist(data_dir: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """MNIST images ``uint8 [N, 28, 28]`` and labels ``[N]`` from ``data_dir/MNIST/raw``."""
    from torchvision.datasets import MNIST

    dataset = MNIST(str(data_dir), train=train, download=False)
    return dataset.data.numpy(), dataset.targets.numpy()


def _ink_box(digit: np.ndarray) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` of the inked pixels of a 28x28 digit (exclusive ends)."""
    ys, xs = np.nonzero(digit)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _place(boxes: list[tuple[int, int, int, int]], rng: random.Random) -> list[tuple[int, int]] | None:
    """Top-left corners that keep the inked boxes apart on the canvas, or None after 100 tries."""
    corners: list[tuple[int, int]] = []
    placed: list[tuple[int, int, int, int]] = []
    for x0, y0, x1, y1 in boxes:
        for _ in range(100):
            # the 28x28 digit fits on the canvas; its inked box must not touch another's
            cx, cy = rng.randrange(CANVAS_SIZE - DIGIT + 1), rng.randrange(CANVAS_SIZE - DIGIT + 1)
            box = (cx + x0, cy + y0, cx + x1, cy + y1)
            if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for b in placed):
                corners.append((cx, cy))
                placed.append(box)
                break
        else:
            return None
    return corners


def plan_canvases(images: np.ndarray, labels: np.ndarray, split: str, count: int, seed: int) -> list[CanvasPlan]:
    """Seeded plans of ``count`` canvases of 1-3 digits drawn from ``images``/``labels``."""
    rng = random.Random(seed)
    plans = []
    while len(plans) < count:
        indices = rng.sample(range(len(images)), rng.choice((1, 2, 3)))
        corners = _place([_ink_box(images[i]) for i in indices], rng)
        if corners is None:
            continue  # rare: three wide digits that found no room; draw again
        plans.append(CanvasPlan(f"{split}/{len(plans):05d}.png", split, tuple(indices),
                                tuple(int(labels[i]) for i in indices), tuple(corners)))  # fmt: skip
    return plans


def render_canvas(plan: CanvasPlan, images: np.ndarray) -> Image.Image:
    """The 64x64 greyscale canvas of ``plan`` (digits pasted with ``max``: only ink overlaps nothing)."""
    canvas = np.zeros((CANVAS_SIZE, CANVAS_SIZE), dtype=np.uint8)
    for index, (x, y) in zip(plan.indices, plan.corners, strict=True):
        region = canvas[y : y + DIGIT, x : x + DIGIT]
        np.maximum(region, images[index], out=region)
    return Image.fromarray(canvas)  # 2-D uint8: mode L


def build_canvases(
    data_dir: Path, out: Path, *, train: int = 6000, test: int = 1000, seed: int = 0
) -> list[CanvasPlan]:
    """Write ``train`` canvases from MNIST train and ``test`` from MNIST test, and ``out/labels.csv``."""
    plans = []
    for split, count, offset in (("train", train, 0), ("test", test, 1)):
        images, labels = _mnist(Path(data_dir), train=split == "train")
        for plan in plan_canvases(images, labels, split, count, seed * 2 + offset):
            (out / plan.file).parent.mkdir(parents=True, exist_ok=True)
            render_canvas(plan, images).save(out / plan.file)
            plans.append(plan)
    _write_csv(out, [(p.file, p.labels, p.split) for p in plans])
    return plans


def _write_csv(out: Path, rows: list[tuple[str, list[str], str]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / CSV_NAME, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "labels", "split"])
        writer.writerows([file, ";".join(labels), split] for file, labels, split in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write collages/ and digits/ into")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(),
                        help="the shared data folder (imagenette-2k/, MNIST/raw/)")  # fmt: skip
    parser.add_argument("--only", choices=("collages", "digits"), help="build one data set only")
    parser.add_argument("--train-collages", type=int, default=1500)
    parser.add_argument("--val-collages", type=int, default=300)
    parser.add_argument("--train-canvases", type=int, default=6000)
    parser.add_argument("--test-canvases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.only in (None, "collages"):
        plans = build_collages(args.data_dir / "imagenette-2k", args.out / "collages", train=args.train_collages,
                               val=args.val_collages, seed=args.seed)  # fmt: skip
        print(f"{len(plans)} collages -> {args.out / 'collages' / CSV_NAME}")
    if args.only in (None, "digits"):
        plans = build_canvases(args.data_dir, args.out / "digits", train=args.train_canvases,
                               test=args.test_canvases, seed=args.seed)  # fmt: skip
        print(f"{len(plans)} digit canvases -> {args.out / 'digits' / CSV_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

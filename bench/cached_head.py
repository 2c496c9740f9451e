"""Does a frozen backbone's head on cached features converge with cnnkit's defaults?

Trains the frozen ImageNet EfficientNet-Lite0 + a new linear head on small photo sets
(20 training photos per class, held-out photos of the same classes) with the generic
defaults (10 epochs, lr 1e-3) and with the cached-head defaults a run gets when it sets
neither (``cnnkit.config.resolve.CACHED_HEAD_DEFAULTS``), over several seeds, and prints
validation accuracy and the last epoch's train loss (a head still learning has a high one).

    python bench/cached_head.py --data-dir ../shared/data --seeds 5

The first run of each set computes the backbone features (seconds to a minute on 2 CPU
cores); every later run reads them from the cache, so epochs cost milliseconds.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import cnnkit
from cnnkit.config.resolve import CACHED_HEAD_DEFAULTS

SETS = {  # name -> (dataset folder, its held-out split, classes (None: all))
    "imagenette 3 classes": ("imagenette-2k", "val", ("church", "golf_ball", "parachute")),
    "imagenette 10 classes": ("imagenette-2k", "val", None),
    "cifar10 10 classes": ("cifar10", "test", None),
}


def photo_subset(root: Path, held_out: str, classes: tuple[str, ...] | None, dest: Path, per_class: int,
                 val_per_class: int) -> Path:  # fmt: skip
    """``dest/{train,val}/<class>/``: ``per_class`` seeded-random training photos, ``val_per_class`` held out."""
    rng = random.Random(0)
    for name in classes or sorted(p.name for p in (root / "train").iterdir()):
        for split, source, count in (("train", "train", per_class), ("val", held_out, val_per_class)):
            files = sorted((root / source / name).iterdir())
            rng.shuffle(files)
            (dest / split / name).mkdir(parents=True)
            for file in files[:count]:
                shutil.copy(file, dest / split / name / file.name)
    return dest


def train_head(data: Path, out: Path, seed: int, **settings) -> tuple[float, float, float]:
    """(val accuracy, last train loss, seconds) of one frozen-Lite0 head run."""
    start = time.perf_counter()
    run = cnnkit.train(data=str(data), model="timm:efficientnet_lite0", pretrained=True, freeze=True, seed=seed,
                       output_dir=str(out), progress=False, log=lambda _: None, report=False, **settings)  # fmt: skip
    return run.history[-1]["val_acc"], run.history[-1]["train_loss"], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="folder holding imagenette-2k/ and cifar10/")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--val-per-class", type=int, default=50)
    args = parser.parse_args()
    configs = {"generic (10 epochs, lr 1e-3)": {"epochs": 10, "lr": 1e-3},
               f"cached head ({CACHED_HEAD_DEFAULTS['train.epochs']} epochs, lr {CACHED_HEAD_DEFAULTS['train.lr']:g})":
               {}}  # fmt: skip
    print(f"{'set':24} {'defaults':34} {'val acc mean [min, max]':26} {'last train loss':16} {'s/run (median)'}")
    with tempfile.TemporaryDirectory() as tmp:
        for set_name, (folder, held_out, classes) in SETS.items():
            data = photo_subset(args.data_dir / folder, held_out, classes, Path(tmp) / set_name.replace(" ", "-"),
                                args.per_class, args.val_per_class)  # fmt: skip
            train_head(data, Path(tmp) / "runs", 0, epochs=1)  # fills the feature cache: not timed below
            for config_name, settings in configs.items():
                results = [train_head(data, Path(tmp) / "runs", seed, **settings) for seed in range(args.seeds)]
                accs, losses, seconds = zip(*results, strict=True)
                print(f"{set_name:24} {config_name:34} {100 * statistics.mean(accs):5.1f} % "
                      f"[{100 * min(accs):.1f}, {100 * max(accs):.1f}]{'':6} {statistics.mean(losses):<16.3f} "
                      f"{statistics.median(seconds):.1f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

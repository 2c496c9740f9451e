"""CIFAR-10 on a CUDA GPU: ``cifar10-fast`` vs airbench94, and cnnkit vs the seed-style loop.

Three tables, all from one run of this script on one GPU:

1. **Time to 94 %**: airbench94 (the ``airbench`` package from PyPI, ``train94`` with its
   own loader; its clock covers the whitening init and training, as airbench times
   itself) against ``cnnkit.train(recipe="cifar10-fast")`` over the same seeds. cnnkit's
   figures are the sum of its epochs' training time (what airbench's clock covers) and
   the wall time of the whole call (data from the decode cache, model, whitening,
   validation with TTA every epoch, checkpoints, test). Both get one warm-up run first
   (cuDNN autotuning, CUDA context), which is not counted.
2. **Training images/s** of the seed's CifarCNN (batch 128, Adam 1e-4, crop + flip): the
   seed-style loop (a ``torchvision.datasets.CIFAR10``-style in-memory dataset, per-sample
   PIL transforms, ``DataLoader`` with 2 workers, float32) against ``cnnkit train --recipe
   cifar10-cnn`` (in-memory uint8 on the GPU, batched augmentation, bf16 autocast,
   channels-last), both measured after warm-up.
3. Optionally (``--recipes``) the seed recipes in full: ``cifar10-cnn`` (20 epochs) and
   ``cifar10-vgg16`` (30 epochs), with their per-epoch curves.

Usage (``--data-dir`` holds ``cifar10/train/<class>/*.png`` and ``cifar10/test/...``)::

    python bench/cifar10_gpu.py --data-dir ../shared/data --seeds 5 --recipes
    python bench/cifar10_gpu.py --data-dir ../shared/data --seeds 1 --quick   # smoke test (CPU too)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from machine import machine_lines

import cnnkit
from cnnkit.data.datasets import load_source
from cnnkit.models import create_model

TARGET = 0.94
QUICK = {"epochs": 1, "limit_train": 3000, "limit_eval": 1000}  # --quick: a smoke test of every code path


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def airbench_runs(data_dir: str, seeds: list[int], quick: bool) -> list[dict] | str:
    """airbench94 over ``seeds``; a reason string when the package is missing."""
    try:
        import airbench
        from airbench.lib_airbench94 import hyp
    except ImportError as exc:
        return f"airbench not installed ({exc}): pip install airbench"
    if not torch.cuda.is_available():
        return "airbench needs a CUDA GPU"
    source = load_source("cifar10", data_dir, False)
    work = Path(tempfile.mkdtemp(prefix="airbench-"))
    (work / "cifar10").mkdir()
    for name, (images, labels) in (("train", source.train), ("test", source.test)):
        # airbench's CifarLoader reads {images: uint8 [N, H, W, C], labels, classes} from cifar10/NAME.pt
        torch.save({"images": images.permute(0, 2, 3, 1).contiguous(), "labels": labels,
                    "classes": list(source.class_names)}, work / "cifar10" / f"{name}.pt")  # fmt: skip
    previous = os.getcwd()
    os.chdir(work)  # airbench opens 'cifar10/test.pt' relative to the working folder
    try:
        loader = airbench.CifarLoader("cifar10", train=True, batch_size=hyp["opt"]["batch_size"], aug=hyp["aug"],
                                      altflip=True)  # fmt: skip
        test_loader = airbench.CifarLoader("cifar10", train=False, batch_size=2000)
        epochs = 1 if quick else hyp["opt"]["train_epochs"]
        airbench.train94(loader, epochs=epochs, verbose=False)  # warm-up, not counted
        rows = []
        for seed in seeds:
            torch.manual_seed(seed)
            sync()
            start = time.perf_counter()
            model = airbench.train94(loader, epochs=epochs, verbose=False)
            sync()
            seconds = time.perf_counter() - start
            acc = airbench.evaluate(model, test_loader, tta_level=hyp["net"]["tta_level"])
            rows.append({"seed": seed, "seconds": seconds, "acc": float(acc)})
            print(f"  airbench94 seed {seed}: {acc:.2%} in {seconds:.2f}s", flush=True)
        return rows
    finally:
        os.chdir(previous)


def cnnkit_runs(data_dir: str, seeds: list[int], quick: bool, out: Path) -> list[dict]:
    extra = QUICK if quick else {}
    cnnkit.train(recipe="cifar10-fast", data_dir=data_dir, seed=99, output_dir=str(out), name="warmup",
                 report=False, progress=False, log=lambda _: None, **extra)  # fmt: skip
    rows = []
    for seed in seeds:
        sync()
        start = time.perf_counter()
        run = cnnkit.train(recipe="cifar10-fast", data_dir=data_dir, seed=seed, output_dir=str(out),
                           name=f"fast-{seed}", report=False, progress=False, log=lambda _: None, **extra)  # fmt: skip
        sync()
        wall = time.perf_counter() - start
        train_seconds, reached = 0.0, None
        for row in run.history:
            train_seconds += row["train_time_s"]
            if reached is None and row["val_acc"] >= TARGET:
                reached = (row["epoch"], train_seconds)
        rows.append({"seed": seed, "acc": run.test.acc, "train_seconds": train_seconds, "wall": wall,
                     "reached": reached, "history": run.history})  # fmt: skip
        print(f"  cnnkit cifar10-fast seed {seed}: {run.test.acc:.2%}, train {train_seconds:.2f}s, wall {wall:.1f}s, "
              f"94% at {reached}", flush=True)  # fmt: skip
    return rows


class SeedStyleCIFAR10(torch.utils.data.Dataset):
    """What ``torchvision.datasets.CIFAR10`` does per sample: uint8 HWC array -> PIL -> transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        self.data = images.permute(0, 2, 3, 1).contiguous().numpy()  # [N, 32, 32, 3] uint8, as torchvision holds it
        self.targets = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


def seed_loop_throughput(data_dir: str, steps: int) -> float:
    """Training images/s of the tutorial's CifarCNN loop (torchvision CIFAR10-style dataset,
    per-sample PIL transforms, DataLoader with 2 workers, float32)."""
    from torchvision import transforms

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    transform = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                    transforms.ToTensor(),
                                    transforms.Normalize((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))])  # fmt: skip
    images, labels = load_source("cifar10", data_dir, False).train
    loader = torch.utils.data.DataLoader(SeedStyleCIFAR10(images, labels, transform), batch_size=128, shuffle=True,
                                         num_workers=2)  # fmt: skip
    torch.manual_seed(0)
    model = create_model("cifar_cnn", num_classes=10).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    warmup, done, start = 10, 0, None
    for step, (images, labels) in enumerate(loader):
        if step == warmup:
            sync()
            start = time.perf_counter()
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        loss = loss_fn(model(images), labels)
        loss.backward()
        optimizer.step()
        if step >= warmup:
            done += len(labels)
        if step >= warmup + steps:
            break
    sync()
    return done / (time.perf_counter() - start)


def recipe_run(recipe: str, data_dir: str, out: Path, epochs: int | None = None, quick: bool = False) -> cnnkit.Run:
    extra = {"epochs": epochs} if epochs else {}
    if quick:
        extra = {**QUICK, **extra}
    lines: list[str] = []
    run = cnnkit.train(recipe=recipe, data_dir=data_dir, output_dir=str(out), name=recipe, report=False,
                       progress=False, log=lines.append, **extra)  # fmt: skip
    for line in lines:
        if line.startswith(("epoch", "done", "compile", "note")):
            print(f"  {line}", flush=True)
    return run


def time_to_94(args: argparse.Namespace, seeds: list[int], out: Path) -> None:
    print("\n== time to 94 % ==", flush=True)
    air = airbench_runs(args.data_dir, seeds, args.quick)
    fast = cnnkit_runs(args.data_dir, seeds, args.quick, out)
    print("\n| method | test acc (mean) | runs >= 94 % | training s | wall s |")
    print("|---|---|---|---|---|")
    if isinstance(air, str):
        print(f"| airbench94 | {air} | | | |")
    else:
        accs = [r["acc"] for r in air]
        print(f"| airbench94 | {statistics.mean(accs):.2%} | {sum(a >= TARGET for a in accs)}/{len(accs)} | "
              f"{statistics.median(r['seconds'] for r in air):.2f} | - |")  # fmt: skip
    accs = [r["acc"] for r in fast]
    print(f"| cnnkit cifar10-fast | {statistics.mean(accs):.2%} | {sum(a >= TARGET for a in accs)}/{len(accs)} | "
          f"{statistics.median(r['train_seconds'] for r in fast):.2f} | {statistics.median(r['wall'] for r in fast):.1f} |")  # fmt: skip
    print("per-epoch test accuracy of cnnkit seed 0:", [f"{row['val_acc']:.4f}" for row in fast[0]["history"]])


def throughput(args: argparse.Namespace, seeds: list[int], out: Path) -> None:
    print("\n== training images/s, CifarCNN, batch 128 ==", flush=True)
    naive = seed_loop_throughput(args.data_dir, args.steps)
    run = recipe_run("cifar10-cnn", args.data_dir, out / "throughput", epochs=2, quick=args.quick)
    ours = run.history[-1]["train_images_per_s"]
    print(f"| seed-style loop | {naive:,.0f} img/s |\n| cnnkit cifar10-cnn (epoch 2) | {ours:,.0f} img/s |\n"
          f"ratio: {ours / naive:.1f}x")  # fmt: skip


def recipes(args: argparse.Namespace, seeds: list[int], out: Path) -> None:
    if not args.recipes:
        return
    for recipe in ("cifar10-cnn", "cifar10-vgg16"):
        print(f"\n== recipe {recipe} ==", flush=True)
        start = time.perf_counter()
        run = recipe_run(recipe, args.data_dir, out / "recipes", quick=args.quick)
        print(f"  {recipe}: test {run.test.acc:.2%} after {len(run.history)} epochs, {time.perf_counter() - start:.0f}s wall")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="folder holding cifar10/train|test/<class>/*.png")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="1 epoch on 5,000 images: a smoke test")
    parser.add_argument("--recipes", action="store_true", help="also run cifar10-cnn and cifar10-vgg16 in full")
    parser.add_argument("--steps", type=int, default=200, help="steps timed for the images/s table")
    parser.add_argument("--out", default=None, help="folder for the runs (default: a temp folder)")
    args = parser.parse_args(argv)
    for line in machine_lines(torch.get_num_threads()):
        print(line)
    out = Path(args.out or tempfile.mkdtemp(prefix="cifar10-gpu-"))
    seeds = list(range(args.seeds))

    for section in (time_to_94, throughput, recipes):
        try:
            section(args, seeds, out)
        except Exception:  # one failing section must not cost the others' figures (a GPU lease is short)
            traceback.print_exc()
            print(f"section {section.__name__} failed; continuing", flush=True)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())

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
4. Optionally (``--seed-accuracy N``) ``cifar10-cnn``'s accuracy question: 20 epochs of the
   seed's own loop (per-sample PIL transforms, float32) against cnnkit in float32 and in
   bf16, over N seeds, with train and test accuracy per epoch. ``--only seed_accuracy``
   skips the other sections.

Usage (``--data-dir`` holds ``cifar10/train/<class>/*.png`` and ``cifar10/test/...``)::

    python bench/cifar10_gpu.py --data-dir ../shared/data --seeds 5 --recipes
    python bench/cifar10_gpu.py --data-dir ../shared/data --seed-accuracy 3 --only seed_accuracy
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


SEED_NORMALIZE = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))


def seed_loader(
    images: torch.Tensor, labels: torch.Tensor, *, train: bool, workers: int = 2
) -> torch.utils.data.DataLoader:
    """The tutorial's loaders: per-sample PIL transforms (crop + flip for training), batch 128."""
    from torchvision import transforms

    steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if train else []
    transform = transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(*SEED_NORMALIZE)])
    return torch.utils.data.DataLoader(SeedStyleCIFAR10(images, labels, transform), batch_size=128, shuffle=train,
                                       num_workers=workers, persistent_workers=workers > 0)  # fmt: skip


def seed_model_and_optimizer(seed: int, device: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = create_model("cifar_cnn", num_classes=10).to(device)
    return model, torch.optim.Adam(model.parameters(), lr=1e-4)


def seed_loop_throughput(data_dir: str, steps: int) -> float:
    """Training images/s of the tutorial's CifarCNN loop (torchvision CIFAR10-style dataset,
    per-sample PIL transforms, DataLoader with 2 workers, float32)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loader = seed_loader(*load_source("cifar10", data_dir, False).train, train=True)
    model, optimizer = seed_model_and_optimizer(0, device)
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


def seed_loop_curve(data_dir: str, seed: int, epochs: int, limit_steps: int | None = None) -> list[tuple[float, float]]:
    """The tutorial's whole training, float32: per epoch (train acc counted during the epoch,
    test acc after it). ``limit_steps`` cuts each epoch short (smoke tests)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    workers = min(8, os.cpu_count() or 2)  # more workers change nothing but the speed
    source = load_source("cifar10", data_dir, False)
    train_loader = seed_loader(*source.train, train=True, workers=workers)
    test_loader = seed_loader(*source.test, train=False)
    model, optimizer = seed_model_and_optimizer(seed, device)
    loss_fn = torch.nn.CrossEntropyLoss()
    curve = []
    for _ in range(epochs):
        model.train()
        correct = total = 0
        for step, (images, labels) in enumerate(train_loader):
            if limit_steps is not None and step >= limit_steps:
                break
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad()
            logits = model(images)
            loss_fn(logits, labels).backward()
            optimizer.step()
            correct += int((logits.argmax(1) == labels).sum())
            total += len(labels)
        model.eval()
        hits = seen = 0
        with torch.no_grad():
            for images, labels in test_loader:
                hits += int((model(images.to(device)).argmax(1).cpu() == labels).sum())
                seen += len(labels)
        curve.append((correct / total, hits / seen))
    return curve


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
          f"{statistics.median(r['train_seconds'] for r in fast):.2f} | "
          f"{statistics.median(r['wall'] for r in fast):.1f} |")  # fmt: skip
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
        print(f"  {recipe}: test {run.test.acc:.2%} after {len(run.history)} epochs, "
              f"{time.perf_counter() - start:.0f}s wall")


def seed_accuracy(args: argparse.Namespace, seeds: list[int], out: Path) -> None:
    """Does cnnkit's fast path train the seed's CifarCNN as well as the seed's own loop?
    20 epochs each, same seeds: the seed loop (float32), cnnkit in float32, cnnkit in bf16;
    cnnkit without the recipe's EMA and flip TTA, so that both train and score as the seed does."""
    if not args.seed_accuracy:
        return
    epochs, limit = (1, 20) if args.quick else (20, None)
    print(f"\n== cifar10-cnn accuracy: seed loop vs cnnkit, {epochs} epochs ==", flush=True)
    rows: dict[str, list[tuple[float, float]]] = {}
    for seed in seeds[: args.seed_accuracy]:
        start = time.perf_counter()
        curve = seed_loop_curve(args.data_dir, seed, epochs, limit)
        rows[f"seed loop fp32, seed {seed}"] = curve
        print(f"  seed loop seed {seed}: {time.perf_counter() - start:.0f}s, test per epoch "
              f"{[round(100 * test, 2) for _, test in curve]}, train at the end {curve[-1][0]:.2%}",
              flush=True)  # fmt: skip
        for amp in ("off", "bf16"):
            extra = {**QUICK, "limit_train": 20 * 128} if args.quick else {}
            run = cnnkit.train(recipe="cifar10-cnn", data_dir=args.data_dir, seed=seed, amp=amp, ema=0, tta="none",
                               output_dir=str(out), name=f"cnn-{amp}-{seed}", report=False, progress=False,
                               log=lambda _: None, **extra)  # fmt: skip
            curve = [(row["train_acc"], row["val_acc"]) for row in run.history]
            rows[f"cnnkit amp {amp}, seed {seed}"] = curve
            print(f"  cnnkit amp {amp} seed {seed}: test per epoch {[round(100 * test, 2) for _, test in curve]}, "
                  f"train at the end {curve[-1][0]:.2%}", flush=True)  # fmt: skip
    print("\n| run | test, last epoch | best test | train, last epoch |\n|---|---|---|---|")
    for name, curve in rows.items():
        print(f"| {name} | {curve[-1][1]:.2%} | {max(t for _, t in curve):.2%} | {curve[-1][0]:.2%} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="folder holding cifar10/train|test/<class>/*.png")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="1 epoch on 5,000 images: a smoke test")
    parser.add_argument("--recipes", action="store_true", help="also run cifar10-cnn and cifar10-vgg16 in full")
    parser.add_argument("--seed-accuracy", type=int, default=0, metavar="N",
                        help="train cifar10-cnn 20 epochs with the seed's own loop and with cnnkit (fp32, bf16) "
                             "over N seeds")  # fmt: skip
    parser.add_argument("--steps", type=int, default=200, help="steps timed for the images/s table")
    parser.add_argument("--only", default=None, choices=["time_to_94", "throughput", "recipes", "seed_accuracy"],
                        help="run this section alone")  # fmt: skip
    parser.add_argument("--out", default=None, help="folder for the runs (default: a temp folder)")
    args = parser.parse_args(argv)
    for line in machine_lines(torch.get_num_threads()):
        print(line)
    out = Path(args.out or tempfile.mkdtemp(prefix="cifar10-gpu-"))
    seeds = list(range(args.seeds))

    for section in (time_to_94, throughput, recipes, seed_accuracy):
        if args.only and section.__name__ != args.only:
            continue
        try:
            section(args, seeds, out)
        except Exception:  # one failing section must not cost the others' figures (a GPU lease is short)
            traceback.print_exc()
            print(f"section {section.__name__} failed; continuing", flush=True)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())

"""Wall time to 99 % MNIST test accuracy: two hand-written loops vs ``cnnkit train --recipe mnist-fast``.

All three train on the full MNIST training set (60,000 digits) and test on the 10,000
test digits after every epoch; the clock stops at the first test result of 99.0 % or more.

* **seed-style**: the mnist-lenet tutorial's loop: LeNet-5, SGD lr 1e-3 momentum 0.9,
  batch 4, torchvision ``MNIST`` + ``ToTensor`` + ``Normalize`` through a ``DataLoader``
  (2 workers). Capped at ``--seed-epochs`` (default 2, the tutorial's length); LeNet
  usually ends near 98.7 %, so the table says whether and when it got to 99 %.
* **examples-style**: PyTorch's examples/mnist: its ``Net`` (conv 32, conv 64, max-pool,
  dropout 0.25, fc 128, dropout 0.5), Adadelta lr 1.0, ``StepLR(gamma=0.7)`` per epoch,
  batch 64, test batch 1000, a shuffled ``DataLoader`` with 1 worker (the example on CUDA). Capped at
  ``--examples-epochs`` (default 6; the example runs 14).
* **cnnkit**: ``cnnkit train --recipe mnist-fast --seed S --no-report`` as a subprocess:
  its wall time includes starting Python and importing torch and cnnkit (about 3 s), which
  the hand-written loops, timed in this process after their imports, do not pay.

The baselines' clocks start before their datasets are opened and include every test pass
(one must test to know when 99 % is reached). Each repeat uses its own seed (repeat i:
seed i) on every side; the table gives medians and each repeat's figures.

Goal: cnnkit at least 10x faster than the examples-style loop, at >= 99.0 %.

Usage (from the repository root)::

    .venv/bin/python bench/mnist_time_to_acc.py --repeats 3     # ~25 min on 2 cores
    .venv/bin/python bench/mnist_time_to_acc.py --quick         # smoke run: 1 repeat, 1 epoch caps

``--data-dir`` holds ``MNIST/raw`` (default: ``$CNNKIT_DATA`` or ``../shared/data``).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ["CNNKIT_OFFLINE"] = "1"  # never time a download

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from machine import core_count, machine_lines  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision import datasets, transforms  # noqa: E402

TARGET = 0.99
ROOT = Path(__file__).resolve().parents[1]
GOAL_SPEEDUP = 10.0


@dataclass
class Result:
    """One side's run: test accuracy after each epoch, and the wall time at each test."""

    method: str
    accs: list[float] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # seconds since the start, after each test
    wall_s: float = 0.0

    @property
    def time_to_target(self) -> float | None:
        return next((t for a, t in zip(self.accs, self.times, strict=True) if a >= TARGET), None)

    @property
    def epochs_to_target(self) -> int | None:
        return next((i + 1 for i, a in enumerate(self.accs) if a >= TARGET), None)


# ----------------------------------------------------------------------------- hand-written loops


class LeNet(nn.Module):
    """The mnist-lenet tutorial's network."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2, self.fc3 = nn.Linear(256, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class ExamplesNet(nn.Module):
    """PyTorch examples/mnist's ``Net`` (log-softmax output, NLL loss)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 32, 3, 1), nn.Conv2d(32, 64, 3, 1)
        self.dropout1, self.dropout2 = nn.Dropout(0.25), nn.Dropout(0.5)
        self.fc1, self.fc2 = nn.Linear(9216, 128), nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        x = self.dropout1(torch.flatten(F.max_pool2d(x, 2), 1))
        x = self.dropout2(F.relu(self.fc1(x)))
        return F.log_softmax(self.fc2(x), dim=1)


def _test(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in loader:
            correct += int((model(images).argmax(1) == labels).sum())
    model.train()
    return correct / len(loader.dataset)


def hand_loop(method: str, data_dir: Path, seed: int, epochs: int, batch: int, workers: int,
              make: Callable[[nn.Module], tuple], loss_fn: Callable, model: nn.Module, log) -> Result:  # fmt: skip
    """The common shape of both tutorials' loops; ``make(model)`` gives (optimizer, scheduler)."""
    result = Result(method)
    start = time.perf_counter()
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    if method == "seed-style":  # the tutorial normalises with (0.5, 0.5)
        tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    train = datasets.MNIST(str(data_dir), train=True, download=False, transform=tf)
    test = datasets.MNIST(str(data_dir), train=False, download=False, transform=tf)
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(train, batch_size=batch, shuffle=True, num_workers=workers, generator=generator)
    test_loader = DataLoader(test, batch_size=1000, num_workers=workers)
    optimizer, scheduler = make(model)
    model.train()
    for epoch in range(epochs):
        for images, labels in train_loader:
            optimizer.zero_grad()
            loss = loss_fn(model(images), labels)
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        result.accs.append(_test(model, test_loader))
        result.times.append(time.perf_counter() - start)
        log(f"  {method} epoch {epoch + 1}: test {result.accs[-1]:.2%} at {result.times[-1]:.1f}s")
        if result.accs[-1] >= TARGET:
            break
    result.wall_s = time.perf_counter() - start
    return result


def seed_style(data_dir: Path, seed: int, epochs: int, log) -> Result:
    torch.manual_seed(seed)
    return hand_loop("seed-style", data_dir, seed, epochs, 4, 2,
                     lambda m: (torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9), None),
                     nn.CrossEntropyLoss(), LeNet(), log)  # fmt: skip


def examples_style(data_dir: Path, seed: int, epochs: int, log) -> Result:
    torch.manual_seed(seed)

    def make(model: nn.Module) -> tuple:
        optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
        return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)

    return hand_loop("examples-style", data_dir, seed, epochs, 64, 1, make, F.nll_loss, ExamplesNet(), log)


# ----------------------------------------------------------------------------- cnnkit

_EPOCH = re.compile(r"^epoch 1/1 .* val loss [\d.]+ acc ([\d.]+)%")
_DONE = re.compile(r"test acc ([\d.]+)%")


def cnnkit_run(data_dir: Path, seed: int, log) -> Result:
    """``cnnkit train --recipe mnist-fast`` in a fresh process; its whole wall time."""
    result = Result("cnnkit mnist-fast")
    with tempfile.TemporaryDirectory() as out:
        command = [str(Path(sys.executable).with_name("cnnkit")), "train", "--recipe", "mnist-fast",
                   "--data-dir", str(data_dir), "--seed", str(seed), "--no-report", "--no-progress",
                   "--output-dir", out]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        result.wall_s = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"cnnkit train failed:\n{done.stdout}\n{done.stderr}")
    test = [float(m.group(1)) / 100 for line in done.stdout.splitlines() if (m := _DONE.search(line))]
    result.accs, result.times = test[-1:], [result.wall_s]
    log(f"  cnnkit mnist-fast: test {result.accs[0]:.2%} in {result.wall_s:.1f}s wall")
    return result


# ----------------------------------------------------------------------------- report


def _fmt_time(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.1f}"


def print_table(runs: dict[str, list[Result]], caps: dict[str, int]) -> None:
    print("\n| method | time to 99 % (s), median | epochs to 99 % | final test acc (median) "
          "| per repeat: s to 99 % (acc) |")
    print("|---|---|---|---|---|")
    for method, results in runs.items():
        reached = [r.time_to_target for r in results if r.time_to_target is not None]
        median = statistics.median(reached) if len(reached) == len(results) else None
        epochs = sorted({r.epochs_to_target for r in results}, key=lambda e: (e is None, e))
        epochs_text = ", ".join("never" if e is None else str(e) for e in epochs)
        if method in caps:
            epochs_text += f" (cap {caps[method]})"
        accs = statistics.median(r.accs[-1] for r in results)
        each = "; ".join(f"{_fmt_time(r.time_to_target)} ({r.accs[-1]:.2%})" for r in results)
        print(f"| {method} | {_fmt_time(median)} | {epochs_text} | {accs:.2%} | {each} |")
    base = [r.time_to_target for r in runs.get("examples-style", [])]
    ours = [r.time_to_target for r in runs.get("cnnkit mnist-fast", [])]
    if base and ours and None not in base and None not in ours:
        ratio = statistics.median(base) / statistics.median(ours)
        verdict = "met" if ratio >= GOAL_SPEEDUP else "NOT met"
        print(f"\nspeed-up to 99 % (examples-style / cnnkit, medians): {ratio:.1f}x "
              f"(goal >= {GOAL_SPEEDUP:g}x: {verdict})")
    elif base and ours:
        print("\nspeed-up: not computed (a side did not reach 99 % in every repeat)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    beside = ROOT.parent / "shared" / "data"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("CNNKIT_DATA") or beside))
    parser.add_argument("--repeats", type=int, default=3, help="repeats (seeds 0..N-1), medians reported")
    parser.add_argument("--seed-epochs", type=int, default=2, help="cap of the seed-style loop (default 2)")
    parser.add_argument("--examples-epochs", type=int, default=6, help="cap of the examples-style loop (default 6)")
    parser.add_argument("--skip", action="append", default=[], choices=("seed-style", "examples-style", "cnnkit"),
                        help="leave a side out (repeatable)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 repeat, both caps 1 epoch")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.seed_epochs, args.examples_epochs = 1, 1, 1
    if not (args.data_dir / "MNIST" / "raw").is_dir():
        parser.error(f"{args.data_dir}/MNIST/raw not found (set --data-dir or $CNNKIT_DATA)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(core_count())
    print("\n".join(machine_lines(torch.get_num_threads())))
    print(f"data: {args.data_dir}/MNIST (60,000 train, 10,000 test); repeats: {args.repeats}")
    runs: dict[str, list[Result]] = {}
    for repeat in range(args.repeats):
        print(f"repeat {repeat + 1}/{args.repeats} (seed {repeat})", flush=True)
        log = lambda line: print(line, flush=True)  # noqa: E731
        if "cnnkit" not in args.skip:
            runs.setdefault("cnnkit mnist-fast", []).append(cnnkit_run(args.data_dir, repeat, log))
        if "examples-style" not in args.skip:
            result = examples_style(args.data_dir, repeat, args.examples_epochs, log)
            runs.setdefault("examples-style", []).append(result)
        if "seed-style" not in args.skip:
            runs.setdefault("seed-style", []).append(seed_style(args.data_dir, repeat, args.seed_epochs, log))
    print_table(runs, {"seed-style": args.seed_epochs, "examples-style": args.examples_epochs})


if __name__ == "__main__":
    main()

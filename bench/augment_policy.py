"""Images/s of augmentation policies on in-memory batches: torchvision image by image vs kornia.

CIFAR-10-sized uint8 batches (``--batch`` images of 3x32x32, real CIFAR-10 training images
when ``../shared/data/cifar10`` is there, random ones otherwise) go through
:func:`cnnkit.data.transforms.batch_policy` for each policy (randaugment, trivialaugment,
autoaugment), with both backends, on the CPU and, when there is one, on a CUDA GPU. The
policy alone is timed (no crop/flip, no model): it is the part the backends differ in.

* **torchvision**: the v2 op called once per image (one draw per image; what cnnkit does
  by default, and what a per-sample DataLoader transform does).
* **kornia**: kornia's policy called on groups of 16 images (kornia draws the op sequence
  once per call, magnitudes per image; ``--augment-backend kornia``).

Printed: images/s per policy and backend (median over ``--repeats``) and the ratio.

Usage::

    .venv/bin/python bench/augment_policy.py                 # ~1 min on 2 cores
    .venv/bin/python bench/augment_policy.py --batch 512 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ["CNNKIT_OFFLINE"] = "1"

import torch  # noqa: E402
from machine import machine_lines  # noqa: E402

from cnnkit.data.transforms import POLICIES, batch_policy, get_augment  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def sample_images(count: int) -> tuple[torch.Tensor, str]:
    """uint8 [count, 3, 32, 32]: CIFAR-10 training images when available."""
    try:
        from cnnkit.data.datasets import load_source

        source = load_source("cifar10", str(ROOT.parent / "shared" / "data"), False)
        return source.train[0][:count].clone(), "CIFAR-10 training images"
    except Exception:  # noqa: BLE001 (no CIFAR-10 here: random pixels time the same)
        return torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8), "random uint8 images"


def images_per_second(apply, images: torch.Tensor, repeats: int) -> float:
    apply(images[:32])  # warm-up (lazy imports, kernel caches)
    times = []
    for _ in range(repeats):
        if images.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        apply(images)
        if images.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return len(images) / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for line in machine_lines(torch.get_num_threads()):
        print(line)
    images, what = sample_images(args.batch)
    print(f"{args.batch} {what}, 3x32x32 uint8; median of {args.repeats} repeats")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"{'device':<6} {'policy':<15} {'torchvision img/s':>18} {'kornia img/s':>13} {'ratio':>6}")
    for device in devices:
        batch = images.to(device)
        for policy in (p for p in POLICIES if p != "none"):
            rates = {}
            for backend in ("torchvision", "kornia"):
                apply = batch_policy(get_augment("none", policy=policy, backend=backend), (32, 32))
                rates[backend] = images_per_second(apply, batch, args.repeats)
            print(f"{device:<6} {policy:<15} {rates['torchvision']:>18,.0f} {rates['kornia']:>13,.0f} "
                  f"{rates['kornia'] / rates['torchvision']:>5.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()

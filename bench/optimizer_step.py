"""The optimizer step alone: PyTorch's fused kernels against its multi-tensor (foreach) path.

cnnkit builds every optimizer with ``fused=True`` where the torch in use has a fused kernel
for the parameters' device (:func:`cnnkit.engine.optim.build_optimizer`), the CPU included.
This script times ``optimizer.step()`` on a model's real parameters with random gradients,
both implementations alternating in one process, for SGD (momentum 0.9), Adam and AdamW
with weight decay, as cnnkit's recipes use them. Printed: median milliseconds per step of
each, and foreach / fused.

Usage (from the repository root)::

    .venv/bin/python bench/optimizer_step.py                       # cifar_cnn, ~1 min on 2 cores
    .venv/bin/python bench/optimizer_step.py --models cifar_cnn,vgg16_bn --steps 50
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from machine import core_count, cpu_feature_line, machine_lines

from cnnkit.models import create_model

OPTIMIZERS = {
    "sgd": lambda params, **kind: torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4, **kind),
    "adam": lambda params, **kind: torch.optim.Adam(params, lr=1e-3, weight_decay=5e-4, **kind),
    "adamw": lambda params, **kind: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05, **kind),
}


def step_ms(model_name: str, optimizer: str, kind: str, steps: int) -> float:
    """Median ms of ``steps`` timed ``step()`` calls of a fresh optimizer (after 3 untimed ones)."""
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=10, in_chans=3, input_size=32)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    opt = OPTIMIZERS[optimizer](params, **{kind: True})
    times = []
    for index in range(steps + 3):
        start = time.perf_counter()
        opt.step()
        if index >= 3:
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cifar_cnn", help="comma-separated registry names")
    parser.add_argument("--optimizers", default="sgd,adam,adamw", help=f"comma-separated: {', '.join(OPTIMIZERS)}")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement (default 30)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating measurements per side (default 3)")
    args = parser.parse_args(argv)
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(core_count())
    print("\n".join(machine_lines(torch.get_num_threads())))
    print(cpu_feature_line())
    print(f"{args.steps} timed steps per measurement, {args.repeats} measurements per side, alternating; medians")
    rows = []
    for model_name in args.models.split(","):
        count = sum(p.numel() for p in create_model(model_name, num_classes=10, in_chans=3, input_size=32).parameters())
        for optimizer in args.optimizers.split(","):
            runs: dict[str, list[float]] = {"foreach": [], "fused": []}
            for _ in range(args.repeats):
                for kind in runs:
                    runs[kind].append(step_ms(model_name, optimizer, kind, args.steps))
            print(f"  {model_name} {optimizer}: foreach " + ", ".join(f"{v:.1f}" for v in runs["foreach"])
                  + " ms; fused " + ", ".join(f"{v:.1f}" for v in runs["fused"]) + " ms", flush=True)  # fmt: skip
            rows.append((model_name, count, optimizer, statistics.median(runs["foreach"]),
                         statistics.median(runs["fused"])))  # fmt: skip
    print("\n| model | parameters | optimizer | foreach ms/step | fused ms/step | foreach / fused |")
    print("|---|---|---|---|---|---|")
    for model_name, count, optimizer, foreach, fused in rows:
        print(f"| {model_name} | {count:,} | {optimizer} | {foreach:.1f} | {fused:.1f} | {foreach / fused:.2f}x |")
    print("load average at the end (1/5/15 min): " + " ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()

"""What ``torch.compile`` costs and gains when training on this CPU: eager vs compiled, one process.

For each model (default ``cifar_cnn`` on CIFAR-10 at batch 128 with crop + flip,
``mnist_fast`` on MNIST at batch 128, ``lenet`` on MNIST at batch 64; ``airbench``, the
``cifar10-fast`` net, at batch 1024 with its translate + alternating flip), in each memory
format asked for (``nchw`` PyTorch's default, ``nhwc`` channels-last), both sides run
cnnkit's own :func:`cnnkit.engine.train_one_epoch` (SGD lr 0.01 momentum 0.9; float32,
or bf16 autocast with ``--amp bf16`` / ``--amp auto`` where cnnkit picks it) over in-memory
batches of the real images:

* **eager**: one untimed warm-up pass of ``--warmup`` steps, then ``--repeats`` timed
  passes of ``--steps`` steps.
* **compiled**: ``torch.compile(model)`` (inductor, its C++ backend on the CPU); the
  first pass of ``--warmup`` steps is timed too: it pays the compile of the forward and
  backward graphs, so *compile s* = that pass minus what the same steps take eager. Then
  the same timed passes as eager.

Printed per row: median images/s of each side, compiled / eager, the compile's one-off
seconds and the break-even point (training images after which compiling has paid for
itself). ``--mkldnn-off`` adds an eager row with ``torch.backends.mkldnn`` disabled (oneDNN
off: PyTorch's own convolution kernels). Thread placement is an environment matter
(``OMP_PROC_BIND``, ``OMP_PLACES``, ``OMP_NUM_THREADS``): run the script under each
setting and compare its eager rows.

Usage (from the repository root)::

    .venv/bin/python bench/compile_cpu.py                                   # ~8 min on 2 cores
    .venv/bin/python bench/compile_cpu.py --models mnist_fast --layouts nhwc --steps 20
    .venv/bin/python bench/compile_cpu.py --amp auto --models cifar_cnn,airbench,mnist_fast --layouts nhwc
    .venv/bin/python bench/compile_cpu.py --amp auto --models cifar_cnn --eager-only --batch-sizes 64,128,256
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

os.environ["CNNKIT_OFFLINE"] = "1"

import torch  # noqa: E402
from machine import core_count, cpu_feature_line, machine_lines  # noqa: E402
from torch import nn  # noqa: E402

from cnnkit.config import TrainConfig  # noqa: E402
from cnnkit.data import AUGMENT_PRESETS, Preprocess  # noqa: E402
from cnnkit.data.datasets import load_source  # noqa: E402
from cnnkit.data.tensor_data import Batching, TensorLoader  # noqa: E402
from cnnkit.device import amp_dtype  # noqa: E402
from cnnkit.engine.epoch import EpochOptions, TrainState, train_one_epoch  # noqa: E402
from cnnkit.engine.optim import build_optimizer  # noqa: E402
from cnnkit.models import create_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    """One model's benchmark setting: its dataset, batch size and batched augmentation."""

    model: str
    dataset: str
    batch: int
    augment: str | None
    mean: tuple[float, ...]
    std: tuple[float, ...]


CASES = {
    "cifar_cnn": Case("cifar_cnn", "cifar10", 128, "crop-flip", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "mnist_fast": Case("mnist_fast", "mnist", 128, None, (0.1307,), (0.3081,)),
    "lenet": Case("lenet", "mnist", 64, None, (0.1307,), (0.3081,)),
    "airbench": Case("airbench", "cifar10", 1024, "airbench", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


class Side:
    """A model, its optimizer and a loader factory: what one side (eager or compiled) trains."""

    def __init__(self, case: Case, images: torch.Tensor, labels: torch.Tensor, channels_last: bool,
                 dtype: torch.dtype | None = None) -> None:  # fmt: skip
        torch.manual_seed(0)
        channels, size = images.shape[1], images.shape[-1]
        self.model = create_model(case.model, num_classes=10, in_chans=channels, input_size=size)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(self.model, TrainConfig(optimizer="sgd", lr=0.01, momentum=0.9))
        self.case, self.images, self.labels, self.channels_last = case, images, labels, channels_last
        self.dtype = dtype  # autocast dtype (None: float32)
        self.loss_fn = nn.CrossEntropyLoss()

    def images_per_s(self, runner: nn.Module, steps: int, seed: int) -> tuple[float, float]:
        """Train ``runner`` (this side's model or its compiled twin) ``steps`` steps; (images/s, seconds)."""
        count = steps * self.case.batch
        pick = torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(seed))[:count]
        pre = Preprocess(self.images.shape[1], tuple(self.images.shape[-2:]), self.case.mean, self.case.std)
        augment = AUGMENT_PRESETS[self.case.augment] if self.case.augment else None
        loader = TensorLoader(self.images[pick], self.labels[pick], pre, Batching(self.case.batch, True, True, seed),
                              augment=augment)  # fmt: skip
        options = EpochOptions(torch.device("cpu"), self.dtype, channels_last=self.channels_last)
        out = train_one_epoch(TrainState(runner, self.optimizer), loader, self.loss_fn, options)
        return out["images"] / out["seconds"], out["seconds"]


def measure(case: Case, images: torch.Tensor, labels: torch.Tensor, channels_last: bool, args) -> dict:
    """Eager and compiled images/s (medians of ``args.repeats``) and the compile's one-off seconds."""
    eager = Side(case, images, labels, channels_last, args.dtype)
    eager.images_per_s(eager.model, args.warmup, seed=100)
    eager_rates = [eager.images_per_s(eager.model, args.steps, seed=r)[0] for r in range(args.repeats)]
    if args.eager_only:
        nan = float("nan")
        return {"eager": statistics.median(eager_rates), "compiled": nan, "compile_s": nan, "break_even": nan,
                "runs": (eager_rates, [])}  # fmt: skip
    compiled = Side(case, images, labels, channels_last, args.dtype)
    runner = torch.compile(compiled.model)
    _, first_seconds = compiled.images_per_s(runner, args.warmup, seed=100)
    compiled_rates = [compiled.images_per_s(runner, args.steps, seed=r)[0] for r in range(args.repeats)]
    eager_rate, compiled_rate = statistics.median(eager_rates), statistics.median(compiled_rates)
    compile_seconds = first_seconds - args.warmup * case.batch / eager_rate
    saved_per_image = 1 / eager_rate - 1 / compiled_rate
    return {"eager": eager_rate, "compiled": compiled_rate, "compile_s": compile_seconds,
            "break_even": compile_seconds / saved_per_image if saved_per_image > 0 else float("inf"),
            "runs": (eager_rates, compiled_rates)}  # fmt: skip


def eager_without_mkldnn(case: Case, images: torch.Tensor, labels: torch.Tensor, channels_last: bool, args) -> float:
    """Median eager images/s with oneDNN switched off (PyTorch's native CPU convolutions)."""
    side = Side(case, images, labels, channels_last, args.dtype)
    with torch.backends.mkldnn.flags(enabled=False):
        side.images_per_s(side.model, args.warmup, seed=100)
        return statistics.median(side.images_per_s(side.model, args.steps, seed=r)[0] for r in range(args.repeats))


def batch_variants(case: Case, batch_sizes: str) -> list[Case]:
    """``case`` at each of the comma-separated ``batch_sizes`` (none given: as it is)."""
    sizes = [int(size) for size in batch_sizes.split(",") if size.strip()]
    return [dataclasses.replace(case, batch=size) for size in sizes] or [case]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    beside = ROOT.parent / "shared" / "data"
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("CNNKIT_DATA") or beside))
    parser.add_argument("--models", default="cifar_cnn,mnist_fast,lenet", help=f"comma-separated: {', '.join(CASES)}")
    parser.add_argument("--layouts", default="nchw,nhwc", help="comma-separated memory formats: nchw, nhwc")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per pass (default 8)")
    parser.add_argument("--warmup", type=int, default=2, help="steps of the warm-up / compile pass (default 2)")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per side, medians reported")
    parser.add_argument("--eager-only", action="store_true", help="no compiled side (layouts, thread placement)")
    parser.add_argument("--mkldnn-off", action="store_true", help="add an eager row with oneDNN disabled")
    parser.add_argument("--batch-sizes", default="",
                        help="comma-separated batch sizes to run each model at instead of its own (e.g. 64,128,256)")
    parser.add_argument("--amp", default="off", choices=("off", "bf16", "auto"),
                        help="autocast of both sides: off (float32, the default), bf16, or auto (what cnnkit train "
                             "picks here: bf16 on a CPU with AMX)")  # fmt: skip
    args = parser.parse_args(argv)
    args.dtype = amp_dtype(args.amp, torch.device("cpu"), training=True)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if "OMP_NUM_THREADS" not in os.environ:  # as set, to compare thread counts
        torch.set_num_threads(core_count())
    print("\n".join(machine_lines(torch.get_num_threads())))
    print(cpu_feature_line())
    print(f"{args.steps} timed steps per pass, {args.repeats} passes per side (medians); precision: "
          f"{'float32' if args.dtype is None else 'bf16 autocast'}; "
          f"compile pass: {args.warmup} steps; OMP_PROC_BIND={os.environ.get('OMP_PROC_BIND', '-')} "
          f"OMP_PLACES={os.environ.get('OMP_PLACES', '-')} "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}")  # fmt: skip
    rows = []
    for name in args.models.split(","):
        images, labels = load_source(CASES[name].dataset, args.data_dir, False).train  # uint8 [N, C, H, W]
        for case, layout in itertools.product(batch_variants(CASES[name], args.batch_sizes), args.layouts.split(",")):
            result = measure(case, images, labels, layout == "nhwc", args)
            eager_runs, compiled_runs = (", ".join(f"{v:.0f}" for v in runs) for runs in result["runs"])
            print(f"  {name} batch {case.batch} {layout}: eager {eager_runs} img/s; compiled {compiled_runs} img/s; "
                  f"compile {result['compile_s']:.1f}s", flush=True)  # fmt: skip
            nomkl = eager_without_mkldnn(case, images, labels, layout == "nhwc", args) if args.mkldnn_off else None
            rows.append((case, layout, result, nomkl, len(labels)))
    print("\n| model | batch | layout | eager img/s | compiled img/s | compiled / eager | compile s (one-off) "
          "| break-even | eager, oneDNN off |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case, layout, r, nomkl, train_size in rows:
        even = f"{r['break_even']:,.0f} images ({r['break_even'] / train_size:.2f} epochs)" \
            if r["break_even"] < float("inf") else ("never" if r["break_even"] > 0 else "-")  # fmt: skip
        print(f"| {case.model} | {case.batch} | {layout} | {r['eager']:.1f} | {r['compiled']:.1f} | "
              f"{r['compiled'] / r['eager']:.2f}x | {r['compile_s']:.1f} | {even} | "
              f"{f'{nomkl:.1f}' if nomkl is not None else '-'} |")  # fmt: skip
    print("load average at the end (1/5/15 min): " + " ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()

"""Prediction throughput: the tutorial loop vs ``cnnkit predict``, and PyTorch vs ONNX Runtime.

The model is a real, trained classifier: ImageNet-pretrained EfficientNet-Lite0 with a new
10-class head trained on imagenette-2k by ``cnnkit.train`` (frozen backbone, cached
features; about two minutes on 2 cores), or the checkpoint given with ``--checkpoint``.
All 2,000 JPEGs of imagenette-2k are predicted, in the same process, by:

* **naive**: the "try it on some images" loop of the seed tutorials: for each file, open
  it with PIL, apply a torchvision transform (resize, centre crop, to tensor, normalise),
  run the model on a batch of one, take the argmax.
* **cnnkit**: ``cnnkit.predict`` (what ``cnnkit predict RUN FOLDER --out
  preds.csv`` runs): decoding in threads (worker processes before 2026-12-03), batches of 64, channels-last,
  inference mode, streamed CSV output. Its clock includes loading the checkpoint and
  starting the workers.

Both sides must agree on every top-1 label. Then the network alone (pre-decoded tensors)
runs in PyTorch eager and in ONNX Runtime (the file ``cnnkit export`` writes) at batch 1
and batch 32, and ``cnnkit predict --backend onnxruntime`` runs end to end.

Goal: ``cnnkit predict`` >= 3x the naive loop's images/s. Medians over ``--repeats``.

A second table (``--memory N``, default 100,000) checks that memory stays flat: LeNet
trained on the embedded digits predicts N PNG files (links to 2,000 real test digits)
and the peak resident memory is compared with a run on 2,000 files.

Usage (from the repository root)::

    .venv/bin/python bench/predict_throughput.py                      # ~10 min on 2 cores
    .venv/bin/python bench/predict_throughput.py --repeats 1 --memory 0   # quicker
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["CNNKIT_OFFLINE"] = "1"  # never time a network probe

import torch  # noqa: E402
from machine import core_count, machine_lines  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision import transforms as T  # noqa: E402

import cnnkit  # noqa: E402
from cnnkit import predict  # noqa: E402
from cnnkit.checkpoint import (
    checkpoint_file,  # noqa: E402
    read_checkpoint,  # noqa: E402
)
from cnnkit.inference import Predictor  # noqa: E402
from cnnkit.inference.export import export_onnx  # noqa: E402
from cnnkit.inference.metadata import checkpoint_metadata  # noqa: E402
from cnnkit.inference.predictor import model_from_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BATCH = 64


def data_folder(given: str | None) -> Path:
    if given:
        return Path(given)
    shared = Path(os.environ.get("CNNKIT_DATA", ROOT.parent / "shared" / "data"))
    return shared / "imagenette-2k"


def train_model(data: Path, out: Path) -> Path:
    """A real trained model: pretrained Lite0, new head trained on imagenette-2k."""
    run = cnnkit.train(data=str(data), model="timm:efficientnet_lite0", pretrained=True, freeze=True,
                       epochs=3, batch_size=64, lr=1e-3, optimizer="adam", augment="none", device="cpu",
                       output_dir=str(out), name="lite0-imagenette", report=False, progress=False,
                       log=lambda line: None)  # fmt: skip
    print(f"trained {run.dir}: val acc {run.metrics.get('val_acc', float('nan')):.2%}")
    return run.checkpoint


def naive_loop(model: torch.nn.Module, files: list[str], pre) -> tuple[float, list[int]]:
    """The tutorial loop: one image at a time, decoded in this process."""
    interpolation = {"bicubic": T.InterpolationMode.BICUBIC, "nearest": T.InterpolationMode.NEAREST}.get(
        pre.interpolation, T.InterpolationMode.BILINEAR)  # fmt: skip
    transform = T.Compose([
        T.Resize(pre.resize or list(pre.input_size), interpolation=interpolation),
        T.CenterCrop(pre.input_size), T.ToTensor(), T.Normalize(pre.mean, pre.std),
    ])  # fmt: skip
    model.eval()
    top1 = []
    start = time.perf_counter()
    with torch.no_grad():
        for path in files:
            image = Image.open(path).convert("RGB" if pre.channels == 3 else "L")
            top1.append(int(model(transform(image).unsqueeze(0)).argmax(1)))
    return time.perf_counter() - start, top1


def cnnkit_predict(
    checkpoint: Path, folder: Path, backend: str = "torch", amp: str = "off"
) -> tuple[float, dict[str, str]]:
    """``cnnkit predict CHECKPOINT FOLDER --out preds.csv [--amp bf16]`` through its Python entry point."""
    import csv

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "preds.csv"
        start = time.perf_counter()
        summary = predict(checkpoint, [str(folder)], out=out, backend=backend, batch_size=BATCH, progress=False,
                          amp=amp)  # fmt: skip
        seconds = time.perf_counter() - start
        labels = {row["file"]: row["label"] for row in csv.DictReader(out.open())}
    assert summary.predicted == len(labels) and not summary.skipped, summary
    return seconds, labels


def model_only(run, batch: torch.Tensor, repeats: int) -> float:
    """Images/s of ``run(batch)``, median over repeats after one warm-up."""
    run(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - start)
    return len(batch) / statistics.median(times)


def throughput_table(checkpoint: Path, data: Path, repeats: int) -> None:
    payload = read_checkpoint(checkpoint)
    model = model_from_checkpoint(payload)
    meta = checkpoint_metadata(payload)
    files = sorted(str(p) for p in data.rglob("*") if p.is_file() and not p.name.startswith("."))
    names = meta.class_names
    print(f"\n{len(files):,} images from {data}; model {payload['model']['name']} "
          f"at {meta.preprocess.input_size[0]} px, {len(names)} classes")  # fmt: skip

    naive_s, cnnkit_s, bf16_s, agree, bf16_agree = [], [], [], [], []
    for repeat in range(repeats):
        seconds, top1 = naive_loop(model, files, meta.preprocess)
        naive_s.append(seconds)
        seconds, labels = cnnkit_predict(checkpoint, data)
        cnnkit_s.append(seconds)
        agree.append(sum(labels[f] == names[i] for f, i in zip(files, top1, strict=True)) / len(files))
        seconds, labels = cnnkit_predict(checkpoint, data, amp="bf16")
        bf16_s.append(seconds)
        bf16_agree.append(sum(labels[f] == names[i] for f, i in zip(files, top1, strict=True)) / len(files))
        print(f"  repeat {repeat + 1}: naive {naive_s[-1]:.1f} s, cnnkit {cnnkit_s[-1]:.1f} s, "
              f"cnnkit --amp bf16 {bf16_s[-1]:.1f} s, "
              f"top-1 agreement {agree[-1]:.2%} / {bf16_agree[-1]:.2%}")  # fmt: skip
    naive_rate = len(files) / statistics.median(naive_s)
    cnnkit_rate = len(files) / statistics.median(cnnkit_s)
    bf16_rate = len(files) / statistics.median(bf16_s)

    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = Path(tmp) / "model.onnx"
        export_onnx(model, torch.zeros(1, meta.preprocess.channels, *meta.preprocess.input_size), onnx_file, meta,
                    dynamic_batch=True)  # fmt: skip
        onnx = Predictor.from_onnx(onnx_file)
        torch_backend = Predictor.from_checkpoint(checkpoint)
        eager = model.eval()
        images = torch.stack([torch_backend.prepare(path) for path in files[:32]])
        rates = {}
        with torch.no_grad():
            for size in (1, 32):
                rates[("eager", size)] = model_only(eager, images[:size], max(repeats, 3) * (8 if size == 1 else 1))
                rates[("channels-last", size)] = model_only(torch_backend.backend, images[:size],
                                                            max(repeats, 3) * (8 if size == 1 else 1))  # fmt: skip
                rates[("onnxruntime", size)] = model_only(onnx.backend, images[:size],
                                                          max(repeats, 3) * (8 if size == 1 else 1))  # fmt: skip
        ort_s, ort_labels = cnnkit_predict(onnx_file, data, backend="onnxruntime")
        ort_agree = sum(ort_labels[f] == names[i] for f, i in zip(files, top1, strict=True)) / len(files)

    print("\nend to end (decode + preprocess + model), images/s")
    print(f"| {'pipeline':<44} | {'img/s':>7} | {'vs naive':>8} | top-1 = naive |")
    print(f"|{'-' * 46}|{'-' * 9}|{'-' * 10}|---------------|")
    print(f"| {'naive loop (PIL, transform, batch of 1)':<44} | {naive_rate:7.1f} | {'1.00x':>8} | - |")
    print(f"| {'cnnkit predict (torch)':<44} | {cnnkit_rate:7.1f} | {cnnkit_rate / naive_rate:7.2f}x "
          f"| {min(agree):.2%} |")
    print(f"| {'cnnkit predict --amp bf16':<44} | {bf16_rate:7.1f} | {bf16_rate / naive_rate:7.2f}x "
          f"| {min(bf16_agree):.2%} |")
    ort_rate = len(files) / ort_s
    print(f"| {'cnnkit predict --backend onnxruntime':<44} | {ort_rate:7.1f} | {ort_rate / naive_rate:7.2f}x "
          f"| {ort_agree:.2%} |")
    print("\nnetwork only (pre-decoded tensors), images/s")
    print("| runtime | batch 1 | batch 32 |")
    print("|---|---|---|")
    for name in ("eager", "channels-last", "onnxruntime"):
        print(f"| {name} | {rates[(name, 1)]:.1f} | {rates[(name, 32)]:.1f} |")
    print(f"ONNX Runtime / eager: batch 1 {rates[('onnxruntime', 1)] / rates[('eager', 1)]:.2f}x, "
          f"batch 32 {rates[('onnxruntime', 32)] / rates[('eager', 32)]:.2f}x")  # fmt: skip


def memory_table(count: int) -> None:
    """Peak RSS of ``cnnkit predict`` on 2,000 vs ``count`` files (child processes, fresh each)."""
    from cnnkit.data.datasets import load_source

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        run = cnnkit.train(epochs=1, output_dir=str(tmp_path / "runs"), report=False, progress=False,
                           log=lambda line: None)  # fmt: skip
        images, _ = load_source("embedded-mnist", None, False).test
        originals = []
        for i, image in enumerate(images):
            path = tmp_path / "digits" / f"{i:04d}.png"
            path.parent.mkdir(exist_ok=True)
            Image.fromarray(image[0].numpy()).save(path)
            originals.append(path)
        print("\nmemory: LeNet on PNG digits (links to the 2,000 embedded test digits)")
        print("| files | seconds | img/s | peak RSS, main process (MB) | peak RSS, largest worker (MB) |")
        print("|---|---|---|---|---|")
        for n in (len(originals), count):
            folder = tmp_path / f"many{n}"
            folder.mkdir()
            for i in range(n):
                os.symlink(originals[i % len(originals)], folder / f"{i:06d}.png")
            code = ("import resource, sys, time; from cnnkit import predict; t = time.perf_counter(); "
                    f"s = predict({str(run.checkpoint)!r}, [{str(folder)!r}], "
                    f"out={str(tmp_path / 'p.csv')!r}, progress=False); "
                    "print(s.predicted, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
                    "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")  # fmt: skip
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            predicted, seconds, self_kb, child_kb = out.split()[-4:]
            print(f"| {int(predicted):,} | {float(seconds):.1f} | {int(predicted) / float(seconds):,.0f} | "
                  f"{int(self_kb) / 1024:.0f} | {int(child_kb) / 1024:.0f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="imagenette-2k folder (default: $CNNKIT_DATA or ../shared/data)")
    parser.add_argument("--checkpoint", help="a trained run folder or .pt (default: train Lite0 on the data)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory", type=int, default=100_000, help="files for the memory check (0: skip it)")
    args = parser.parse_args()
    threads = core_count()
    torch.set_num_threads(threads)
    print("\n".join(machine_lines(threads)))
    data = data_folder(args.data)
    with tempfile.TemporaryDirectory() as runs:
        checkpoint = checkpoint_file(args.checkpoint) if args.checkpoint else train_model(data, Path(runs))
        throughput_table(checkpoint, data, args.repeats)
    if args.memory:
        memory_table(args.memory)
    print(f"\npeak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()

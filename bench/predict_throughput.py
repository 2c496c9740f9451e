"""Prediction throughput: the tutorial loop vs ``cnnkit predict``, per runtime and precision.

The model is a real, trained classifier: ImageNet-pretrained EfficientNet-Lite0 with a new
10-class head trained on imagenette-2k by ``cnnkit.train`` (frozen backbone, cached
features; about two minutes on 2 cores), or the checkpoint given with ``--checkpoint``.
All 2,000 JPEGs of imagenette-2k are predicted, in the same process, by:

* **naive**: the "try it on some images" loop of the seed tutorials: for each file, open
  it with PIL, apply a torchvision transform (resize, centre crop, to tensor, normalise),
  run the model on a batch of one, take the argmax.
* **cnnkit predict, default**: ``cnnkit.predict(RUN, [FOLDER])`` with no backend named
  (what ``cnnkit predict RUN FOLDER --out preds.csv`` runs): with the export extra
  installed, ONNX Runtime through the ONNX file it builds once per checkpoint and caches.
  The first call (which builds the file) is reported on its own; the medians are of
  the calls after it. Its clock includes loading the model.
* **cnnkit predict, per runtime and precision**: ``torch`` (float32), and the files of
  ``cnnkit export --precision fp32|fp16|int8 --dynamic-batch`` in ONNX Runtime and
  OpenVINO (when installed).

Every row gives top-1 accuracy against the folder labels and agreement with the float32
PyTorch model (the naive loop's labels). Then the network alone on pre-decoded tensors
(batch 32) for each runtime. Goals: the default ``cnnkit predict`` >= 3x the naive loop's
images/s; int8 >= 1.5x the fp32 file in ONNX Runtime at <= 1 point of accuracy lost.
Medians over ``--repeats``.

``--tune`` also measures the settings the default path uses on this machine (ONNX
Runtime's thread count and spin-waiting, decode threads, batch size), which is how
cnnkit's defaults were chosen.

A last table (``--memory N``, default 100,000) checks that memory stays flat: LeNet
trained on the embedded digits predicts N PNG files (links to 2,000 real test digits)
and the peak resident memory is compared with a run on 2,000 files.

Usage (from the repository root)::

    .venv/bin/python bench/predict_throughput.py                           # ~20 min on 2 cores
    .venv/bin/python bench/predict_throughput.py --repeats 1 --memory 0    # quicker
"""

from __future__ import annotations

import argparse
import atexit
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["CNNKIT_OFFLINE"] = "1"  # never time a network probe
# an empty cache: the default path's one-off ONNX build is timed, not found from an earlier run
os.environ["CNNKIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="cnnkit-bench-cache-")
atexit.register(shutil.rmtree, os.environ["CNNKIT_CACHE_DIR"], ignore_errors=True)

import torch  # noqa: E402
from machine import core_count, machine_lines  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision import transforms as T  # noqa: E402

import cnnkit  # noqa: E402
from cnnkit import predict  # noqa: E402
from cnnkit.checkpoint import Checkpoint, checkpoint_file  # noqa: E402
from cnnkit.inference import Predictor  # noqa: E402
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


def cnnkit_predict(model: Path, folder: Path, backend: str = "auto") -> tuple[float, dict[str, str], str]:
    """``cnnkit predict MODEL FOLDER --out preds.csv [--backend B]`` through its Python entry point:
    (seconds including loading the model, file -> label, the backend it ran on)."""
    import csv

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "preds.csv"
        start = time.perf_counter()
        summary = predict(model, [str(folder)], out=out, backend=backend, progress=False)
        seconds = time.perf_counter() - start
        with out.open() as handle:
            labels = {row["file"]: row["label"] for row in csv.DictReader(handle)}
    assert summary.predicted == len(labels) and not summary.skipped, summary
    return seconds, labels, summary.backend


def model_only(run, batch: torch.Tensor, repeats: int) -> float:
    """Images/s of ``run(batch)``, median over repeats after one warm-up."""
    run(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - start)
    return len(batch) / statistics.median(times)


class Rows:
    """The end-to-end table: per pipeline, seconds per repeat, accuracy and agreement with fp32."""

    def __init__(self, files: list[str], truth: list[str], reference: list[str]) -> None:
        self.files, self.truth, self.reference = files, truth, reference
        self.rows: dict[str, dict] = {}

    def add(self, name: str, seconds: float, labels: list[str] | dict[str, str], note: str = "") -> None:
        labels = [labels[f] for f in self.files] if isinstance(labels, dict) else labels
        row = self.rows.setdefault(name, {"seconds": [], "note": note})
        row["seconds"].append(seconds)
        row["accuracy"] = sum(a == b for a, b in zip(labels, self.truth, strict=True)) / len(labels)
        row["agreement"] = sum(a == b for a, b in zip(labels, self.reference, strict=True)) / len(labels)

    def rate(self, name: str) -> float:
        return len(self.files) / statistics.median(self.rows[name]["seconds"])

    def print(self, naive: str) -> None:
        print("\nend to end (decode + preprocess + model, loading included), images/s, medians")
        print("| pipeline | img/s | vs naive | top-1 accuracy | agreement with fp32 | seconds per repeat |")
        print("|---|---|---|---|---|---|")
        for name, row in self.rows.items():
            times = ", ".join(f"{t:.1f}" for t in row["seconds"])
            label = f"{name} ({row['note']})" if row["note"] else name
            print(f"| {label} | {self.rate(name):.1f} | {self.rate(name) / self.rate(naive):.2f}x | "
                  f"{row['accuracy']:.2%} | {row['agreement']:.2%} | {times} |")  # fmt: skip


def export_files(checkpoint: Path, folder: Path) -> dict[str, Path]:
    """``cnnkit export --precision P --dynamic-batch`` for fp32, fp16 and int8, with their checks."""
    from cnnkit.commands.export import export_checkpoint

    files = {}
    for precision in ("fp32", "fp16", "int8"):
        out = folder / f"model.{precision}.onnx"
        result = export_checkpoint(checkpoint, out=out, dynamic_batch=True, precision=precision, allow_drop=100)
        size = out.stat().st_size / 1e6
        print(f"export {precision}: {size:.1f} MB, {result.exported.seconds:.1f} s; check on "
              f"{result.accuracy.images} {result.checked}: {result.accuracy.summary()}")  # fmt: skip
        files[precision] = out
    return files


def throughput_table(checkpoint: Path, data: Path, repeats: int, exported: dict[str, Path]) -> None:
    ckpt = Checkpoint.load(checkpoint)
    model = model_from_checkpoint(ckpt)
    meta = checkpoint_metadata(ckpt)
    files = sorted(str(p) for p in data.rglob("*") if p.is_file() and not p.name.startswith("."))
    truth = [Path(f).parent.name for f in files]
    names = meta.class_names
    print(f"\n{len(files):,} images from {data}; model {ckpt.model.name} "
          f"at {meta.preprocess.input_size[0]} px, {len(names)} classes")  # fmt: skip

    seconds, top1 = naive_loop(model, files, meta.preprocess)
    reference = [names[i] for i in top1]
    rows = Rows(files, truth, reference)
    rows.add("naive loop (PIL, transform, batch of 1)", seconds, reference)
    first_s, first_labels, first_backend = cnnkit_predict(checkpoint, data)  # builds and caches the ONNX file
    print(f"first `cnnkit predict RUN` (builds the ONNX file once): {first_s:.1f} s on {first_backend}")
    openvino = _has("openvino")
    for repeat in range(repeats):
        if repeat:
            rows.add("naive loop (PIL, transform, batch of 1)", naive_loop(model, files, meta.preprocess)[0], reference)
        seconds, labels, backend = cnnkit_predict(checkpoint, data)
        rows.add("`cnnkit predict RUN` (default)", seconds, labels, backend)
        rows.add("`cnnkit predict RUN --backend torch`", *cnnkit_predict(checkpoint, data, "torch")[:2])
        for precision, path in exported.items():
            rows.add(f"{precision} file, onnxruntime", *cnnkit_predict(path, data, "onnxruntime")[:2])
            if openvino:
                rows.add(f"{precision} file, openvino", *cnnkit_predict(path, data, "openvino")[:2])
        print(f"  repeat {repeat + 1} done (load average {os.getloadavg()[0]:.2f})", flush=True)
    rows.print("naive loop (PIL, transform, batch of 1)")
    default = rows.rate("`cnnkit predict RUN` (default)") / rows.rate("naive loop (PIL, transform, batch of 1)")
    int8 = rows.rate("int8 file, onnxruntime") / rows.rate("fp32 file, onnxruntime")
    lost = 100 * (rows.rows["fp32 file, onnxruntime"]["accuracy"] - rows.rows["int8 file, onnxruntime"]["accuracy"])
    print(f"\ngoal: default cnnkit predict >= 3x the naive loop: {default:.2f}x "
          f"({'met' if default >= 3 else 'NOT met'})")  # fmt: skip
    print(f"goal: int8 >= 1.5x fp32 in ONNX Runtime at <= 1 point lost: {int8:.2f}x, {lost:+.2f} points lost "
          f"({'met' if int8 >= 1.5 and lost <= 1 else 'NOT met'})")  # fmt: skip
    network_table(model, meta, files, exported, openvino)


def network_table(model: torch.nn.Module, meta, files: list[str], exported: dict[str, Path], openvino: bool) -> None:
    """The network alone on 32 pre-decoded images, per runtime and precision."""
    torch_backend = Predictor.from_model(model, meta)
    images = torch.stack([torch_backend.prepare(path) for path in files[:32]])
    runs = {"PyTorch eager": model.eval(), "PyTorch channels-last (torch backend)": torch_backend.backend}
    for precision, path in exported.items():
        runs[f"onnxruntime {precision}"] = Predictor.from_onnx(path).backend
        if openvino:
            runs[f"openvino {precision}"] = Predictor.from_openvino(path).backend
    print("\nnetwork only (32 pre-decoded images in one batch), images/s")
    print("| runtime | img/s |")
    print("|---|---|")
    with torch.no_grad():
        for name, run in runs.items():
            print(f"| {name} | {model_only(run, images, 5):.1f} |")


def tune_table(checkpoint: Path, data: Path) -> None:
    """The default path's settings, measured: ONNX Runtime threads and spinning, decode threads, batch."""
    import onnxruntime as ort

    from cnnkit.inference.backends import OnnxBackend
    from cnnkit.inference.runtime import load_predictor, onnx_cache_path

    files = sorted(str(p) for p in data.rglob("*") if p.is_file())[:1000]
    built = load_predictor(checkpoint)  # builds or finds the cached ONNX file of the default path
    path = str(onnx_cache_path(built.metadata))
    cores = core_count()
    print(f"\ntuning the default path on {len(files)} files ({path}), images/s, best of 2")
    print("| ORT threads | ORT spin-wait | decode threads | batch | img/s |")
    print("|---|---|---|---|---|")
    for threads, spin, workers, batch in [(0, 1, cores, 64), (0, 0, cores, 64), (0, 0, 1, 64), (1, 0, 1, 64),
                                          (0, 0, cores + 1, 64), (0, 0, cores, 16), (0, 0, cores, 32)]:  # fmt: skip
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", str(spin))
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        predictor = Predictor(OnnxBackend(session), built.metadata)
        rates = []
        for _ in range(2):
            start = time.perf_counter()
            count = sum(1 for _ in predictor.predict_files(files, workers=workers, batch_size=batch))
            rates.append(count / (time.perf_counter() - start))
        print(f"| {threads or 'default'} | {'on' if spin else 'off'} | {workers} | {batch} | {max(rates):.1f} |")


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


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
    parser.add_argument("--tune", action="store_true", help="also measure the default path's thread settings")
    args = parser.parse_args()
    threads = core_count()
    torch.set_num_threads(threads)
    print("\n".join(machine_lines(threads)))
    data = data_folder(args.data)
    with tempfile.TemporaryDirectory() as runs:
        checkpoint = checkpoint_file(args.checkpoint) if args.checkpoint else train_model(data, Path(runs))
        exported = export_files(checkpoint, Path(runs))
        throughput_table(checkpoint, data, args.repeats, exported)
        if args.tune:
            tune_table(checkpoint, data)
    if args.memory:
        memory_table(args.memory)
    print(f"\npeak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()

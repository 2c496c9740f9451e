"""Lean runs: how much of a command's wall time is the command's own work.

Each scenario runs the real ``cnnkit`` command in a fresh process (``python -m cnnkit``,
this checkout's sources), timed from the outside; its own work is the figure the command
prints about itself. The ratio own work / wall says how much goes to start-up (imports,
model build) and extras (report, graph, data check) instead:

* ``--version`` against ``python -c "import torch"`` (cnnkit must return first).
* ``predict`` of 500 imagenette JPEGs, own work = ``predicted N images in X s``, for a
  LeNet trained here at 32 px (decode-bound: the cheapest model there is) and for the
  frozen EfficientNet-Lite0 run below (network-bound).
* ``train --model timm:efficientnet_lite0 --pretrained --freeze --epochs 5`` on
  imagenette-2k, twice with one fresh cache folder: the first run extracts the features,
  the second finds them cached (goal: under 20 s wall); own work = the log's
  ``done in Ns`` (training, before summary and report).
* a 1-epoch ``mnist-lenet`` run on 6,000 real MNIST digits; own work = the epoch's time in
  its log line.

Usage (from the repository root; about 5 minutes on 2 cores, most of it the first Lite0
run's feature extraction)::

    .venv/bin/python bench/lean_runs.py
    .venv/bin/python bench/lean_runs.py --repeats 3   # medians of 3 (the Lite0 first run once)
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CNNKIT_DATA", ROOT.parent / "shared" / "data"))
IMAGENETTE = DATA / "imagenette-2k"
LITE0 = ["--model", "timm:efficientnet_lite0", "--pretrained", "--freeze", "--epochs", "5"]


def run(args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    """Wall seconds and combined output of one command in a fresh process (raises on failure)."""
    start = time.perf_counter()
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return wall, done.stdout + done.stderr


def figure(pattern: str, text: str) -> float:
    """The number a command printed about itself (the first group of ``pattern``)."""
    found = re.search(pattern, text)
    if found is None:
        raise SystemExit(f"no {pattern!r} in the output:\n{text[-2000:]}")
    return float(found.group(1).replace(",", ""))


def cnnkit(*args: str) -> list[str]:
    return [sys.executable, "-m", "cnnkit", *args]


def median_runs(repeats: int, args: list[str], env: dict[str, str], cwd: Path,
                pattern: str | None) -> tuple[float, float | None, str]:  # fmt: skip
    """Median wall and median own-work figure over ``repeats`` runs, and the last output."""
    walls, own, text = [], [], ""
    for _ in range(repeats):
        wall, text = run(args, env, cwd)
        walls.append(wall)
        if pattern is not None:
            own.append(figure(pattern, text))
    return statistics.median(walls), (statistics.median(own) if own else None), text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="runs per scenario (medians)")
    args = parser.parse_args()
    if not IMAGENETTE.is_dir():
        raise SystemExit(f"imagenette-2k not found at {IMAGENETTE} (set CNNKIT_DATA)")
    sys.path.insert(0, str(ROOT / "bench"))
    import torch
    from machine import machine_lines

    work = Path(tempfile.mkdtemp(prefix="cnnkit-lean-"))
    env = {**os.environ, "CNNKIT_OFFLINE": "1", "CNNKIT_CACHE_DIR": str(work / "cache"),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    runs = work / "runs"
    photos = sorted(str(p) for p in (IMAGENETTE / "val").rglob("*.JPEG"))[:500]
    rows: list[tuple[str, float, float | None, str]] = []
    print("\n".join(machine_lines(threads=torch.get_num_threads())))
    print(f"working folder: {work}\n")

    torch_wall, _, _ = median_runs(max(args.repeats, 3), [sys.executable, "-c", "import torch"], env, work, None)
    version_wall, _, _ = median_runs(max(args.repeats, 3), cnnkit("--version"), env, work, None)
    rows.append(('python -c "import torch"', torch_wall, None, "-"))
    rows.append(("cnnkit --version", version_wall, None, f"{version_wall / torch_wall:.2f}x import torch"))

    train = cnnkit("train", "--data", str(IMAGENETTE), *LITE0, "--no-progress", "--output-dir", str(runs))
    done = r"done in (\d+)s"
    wall, own, _ = median_runs(1, [*train, "--name", "lite0-first"], env, work, done)
    rows.append(("frozen Lite0, first run (extracts features)", wall, own, "log: done in"))
    wall, own, text = median_runs(args.repeats, [*train, "--name", "lite0-cached"], env, work, done)
    how = ("features from the cache" if text.count(" from the cache; ") == 2 else "features NOT from the cache!") \
        + ("; report: no backbone pass" if "no backbone pass" in text else "; report: backbone over val")
    rows.append(("frozen Lite0 rerun, features cached (goal < 20 s)", wall, own, f"log: done in ({how})"))

    run(cnnkit("train", "--data", str(IMAGENETTE), "--model", "lenet", "--image-size", "32", "--epochs", "1",
               "--no-report", "--no-progress", "--output-dir", str(runs), "--name", "lenet32"), env, work)  # fmt: skip
    predicted = r"predicted [\d,]+ images in ([\d.]+) s"
    for name, label in (("lenet32", "LeNet 32 px"), ("lite0-cached", "frozen Lite0 224 px")):
        wall, own, _ = median_runs(args.repeats, cnnkit("predict", str(runs / name), *photos, "--out",
                                                        str(work / f"{name}.csv"), "--no-progress"), env, work,
                                   predicted)  # fmt: skip
        rows.append((f"predict 500 photos, {label}", wall, own, "printed: predicted ... in"))

    epoch = r"epoch 1/1 .*?([\d.]+)s +[\d,]+ img/s"
    wall, own, _ = median_runs(args.repeats, cnnkit("train", "--recipe", "mnist-lenet", "--data-dir", str(DATA),
                                                    "--epochs", "1", "--limit-train", "6000", "--no-progress",
                                                    "--output-dir", str(runs)), env, work, epoch)  # fmt: skip
    rows.append(("mnist-lenet, 1 epoch on 6,000 digits", wall, own, "log: the epoch's time"))

    print("| scenario | wall s | own work s | own / wall | own work from |\n|---|---|---|---|---|")
    for name, wall, own, source in rows:
        share = "-" if own is None else f"{own / wall:.0%}"
        print(f"| {name} | {wall:.1f} | {'-' if own is None else f'{own:.1f}'} | {share} | {source} |")


if __name__ == "__main__":
    main()

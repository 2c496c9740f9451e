"""cnnkit studio's promise on a CPU: 20 photos per class of three Imagenette classes, the
default photo model ("photos: pretrained backbone, fast"), trained in under a minute and
scoring at least 90 % on held-out photos of the same classes.

Each seed builds a fresh studio project (the first 20 training photos of each class,
uploaded through ``Project.add_files``), starts the job the page starts
(``start_training(project, "photos", Settings(seed=SEED))``) with an empty feature cache
(a fresh ``CNNKIT_CACHE_DIR``: the seed changes the split, so a real first run computes the
features too) and waits for it. The clock covers the whole job: data check, weights,
features, 30 head epochs, test, report. Then the best checkpoint predicts the 150
held-out photos of Imagenette's val/ for those classes.

Printed: per seed the job's wall time, the run's validation accuracy (12 photos) and the
held-out accuracy; then min / median / max, and the machine.

Usage (from the repository root)::

    .venv/bin/python bench/studio_photos.py                  # 5 seeds, about 2 minutes on 2 cores
    .venv/bin/python bench/studio_photos.py --seeds 0 1 --classes tench,church,parachute
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

os.environ.setdefault("CNNKIT_OFFLINE", "1")

from machine import machine_lines  # noqa: E402

from cnnkit.inference import Predictor  # noqa: E402
from cnnkit.studio.jobs import start_training  # noqa: E402
from cnnkit.studio.kinds import Settings  # noqa: E402
from cnnkit.studio.project import Project  # noqa: E402


def default_data() -> Path:
    if os.environ.get("CNNKIT_DATA"):
        return Path(os.environ["CNNKIT_DATA"]) / "imagenette-2k"
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette-2k"


def one_seed(data: Path, classes: list[str], per_class: int, seed: int, work: Path) -> tuple[float, float, float]:
    """(job seconds, val accuracy, held-out accuracy) of one fresh project and run."""
    os.environ["CNNKIT_CACHE_DIR"] = str(work / f"cache-{seed}")
    project = Project.open(work / f"project-{seed}")
    for name in classes:
        project.add_class(name)
        project.add_files(name, sorted((data / "train" / name).glob("*.JPEG"))[:per_class])
    start = time.perf_counter()
    job = start_training(project, "photos", Settings(seed=seed))
    status = job.wait()
    seconds = time.perf_counter() - start
    if status["state"] != "completed":
        raise SystemExit(f"seed {seed}: the job {status['state']}: {status['error']}")
    held = [(str(p), name) for name in classes for p in sorted((data / "val" / name).glob("*.JPEG"))]
    predictor = Predictor.from_checkpoint(job.run_dir / "checkpoints" / "best.pt")
    labels = [p.label for p in predictor.predict_files([path for path, _ in held], workers=0)]
    correct = sum(label == name for label, (_, name) in zip(labels, held, strict=True))
    return seconds, status["best_val_acc"], correct / len(held)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=default_data())
    parser.add_argument("--classes", default="cassette_player,chain_saw,church")
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args()
    classes = args.classes.split(",")
    rows = []
    with tempfile.TemporaryDirectory(prefix="studio-bench-") as work:
        for seed in args.seeds:
            rows.append((seed, *one_seed(args.data, classes, args.per_class, seed, Path(work))))
            _, seconds, val, held_out = rows[-1]
            print(f"seed {seed}: {seconds:5.1f} s   val {val:6.1%}   held-out {held_out:6.1%}", flush=True)
    for label, column in (("job seconds", 1), ("held-out accuracy", 3)):
        values = [row[column] for row in rows]
        fmt = "{:.1f}" if column == 1 else "{:.1%}"
        print(f"{label}: min {fmt.format(min(values))}  median {fmt.format(statistics.median(values))}  "
              f"max {fmt.format(max(values))}  over {len(values)} seeds")  # fmt: skip
    print(f"{len(classes)} classes x {args.per_class} photos ({', '.join(classes)}); "
          "held-out: val/ of the same classes")
    import torch

    for line in machine_lines(torch.get_num_threads()):
        print(line)


if __name__ == "__main__":
    main()

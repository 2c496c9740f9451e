"""How much evidence should a suspect need? The thresholds of ``select_suspects``, calibrated.

``cnnkit check --labels`` and the report's "likely label errors" list an image only when the
data passes two gates (enough images; an out-of-sample accuracy of at least
``MIN_ACCURACY``) and the image passes two thresholds (its given label's out-of-sample
probability under ``MAX_GIVEN_PROB``, another class's over ``MIN_SUGGESTED_PROB``). This
script measures, in one process on imagenette-2k's cached Lite0 features (the check's own
feature cache, so a second run takes a few minutes), what each pair of thresholds does:

* **flips**: the 1,500 training photos with 5 % and 10 % of the labels flipped (the method of
  ``bench/label_issues.py``), cross-validated as the check does: precision and recall;
* **clean 20 a class**: seeded draws of 20 photos of each of the 10 classes: share flagged
  (every one a false alarm);
* **the hard pair** (``--pair``): 20 a class (seeded draws) and all 300 photos: share flagged;
* **barely learned**: the same clean draws and 5 % flips with Gaussian noise added to the
  features (``sigma`` times each feature's std), so that the model is right on 95 % down to
  about 50 %: what the gates and thresholds do when the model is the weak part;
* **report**: a head fitted on the clean training photos scores the 500 val photos (5 %
  flipped, or clean), as ``cnnkit report`` scores a run's held-out split.

Each row is the mean (worst) over seeds; "gated" applies the image and accuracy gates too.

    PYTHONPATH=src .venv/bin/python bench/label_evidence.py            # about 10 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import os
import random
import warnings
from pathlib import Path

os.environ["CNNKIT_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402
from machine import machine_lines  # noqa: E402

from cnnkit.data.audit import labels as L  # noqa: E402
from cnnkit.evaluation import label_probs as lp  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GRID = [(1.0, 0.0)] + [(t, u) for t in (0.05, 0.10, 0.20) for u in (0.4, 0.5, 0.6, 0.7)]


def split_features(root: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    classes = sorted(p.name for p in (root / split).iterdir())
    files = [(str(f), i) for i, c in enumerate(classes) for f in sorted((root / split / c).iterdir())]
    feats, _, _, _ = lp.image_features([p for p, _ in files], lp.DEFAULT_BACKBONE, device=torch.device("cpu"),
                                       progress=False)  # fmt: skip
    return feats, np.asarray([y for _, y in files]), classes


def cv_probs(x: np.ndarray, y: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """The check's out-of-sample probabilities: a linear head per fold (5 folds, fewer for tiny classes)."""
    folds = min(5, int(np.bincount(y).min()))
    probs, xt, yt = np.zeros((len(y), k)), torch.from_numpy(x).float(), torch.from_numpy(y).long()
    for train_rows, test_rows in lp.fold_splits(y, folds, seed):
        probs[test_rows] = lp.linear_head_probs(xt[train_rows], yt[train_rows], xt[test_rows], k).double().numpy()
    return probs


def scores(probs: np.ndarray, given: np.ndarray, truth: np.ndarray) -> dict:
    """Per image: cleanlab proposed it, its given label's probability, the best other's, wrong label."""
    probs = probs / probs.sum(1, keepdims=True)
    proposed = np.zeros(len(given), bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proposed[[row for row, _ in L.label_issues(given, probs)]] = True
    rows = np.arange(len(given))
    other = probs.copy()
    other[rows, given] = -1
    return {"proposed": proposed, "given": probs[rows, given], "other": other.max(1), "wrong": given != truth,
            "accuracy": float((probs.argmax(1) == given).mean()), "n": len(given), "k": probs.shape[1]}  # fmt: skip


def flip(y: np.ndarray, fraction: float, seed: int, k: int) -> np.ndarray:
    rng, out = random.Random(seed), y.copy()
    for row in rng.sample(range(len(y)), round(fraction * len(y))):
        out[row] = rng.choice([c for c in range(k) if c != y[row]])
    return out


def draw(y: np.ndarray, per: int, seed: int, classes: list[int]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.choice(np.flatnonzero(y == c), per, replace=False) for c in classes])


def blur(x: np.ndarray, sigma: float, seed: int, std: np.ndarray) -> np.ndarray:
    return x + sigma * std * np.random.default_rng(seed).standard_normal(x.shape).astype(np.float32)


def cases(x, y, xv, yv, names, pair, seeds) -> dict[str, list[dict]]:
    """Every scenario's per-seed scores."""
    out: dict[str, list[dict]] = {}
    std, a, b = x.std(0), names.index(pair[0]), names.index(pair[1])
    for seed in seeds:
        for fraction in (0.05, 0.10):
            noisy = flip(y, fraction, seed + 1, 10)
            out.setdefault(f"flips {fraction:.0%}", []).append(scores(cv_probs(x, noisy, 10), noisy, y))
        rows = draw(y, 20, seed, list(range(10)))
        out.setdefault("clean, 20 a class", []).append(scores(cv_probs(x[rows], y[rows], 10), y[rows], y[rows]))
        rows = draw(y, 20, seed, [a, b])
        two = (y[rows] == b).astype(np.int64)
        out.setdefault(f"clean {pair[0]}/{pair[1]}, 20 a class", []).append(scores(cv_probs(x[rows], two, 2), two, two))
        for sigma in (2.0, 3.0, 4.0):
            rows = draw(y, 20, seed, list(range(10)))
            xs = blur(x[rows], sigma, seed, std)
            out.setdefault(f"clean, 20 a class, blurred x{sigma:g}", []).append(
                scores(cv_probs(xs, y[rows], 10), y[rows], y[rows]))  # fmt: skip
            noisy = flip(y, 0.05, seed + 1, 10)
            out.setdefault(f"flips 5%, blurred x{sigma:g}", []).append(
                scores(cv_probs(blur(x, sigma, seed, std), noisy, 10), noisy, y))  # fmt: skip
        for sigma in (0.0, 3.0):  # the report: a head fitted on train scores val
            xt, xvt = (blur(x, sigma, seed, std), blur(xv, sigma, seed + 100, std)) if sigma else (x, xv)
            probs = lp.linear_head_probs(torch.from_numpy(xt).float(), torch.from_numpy(y).long(),
                                         torch.from_numpy(xvt).float(), 10).double().numpy()  # fmt: skip
            noisy = flip(yv, 0.05, seed + 1, 10)
            out.setdefault(f"report: val 5% flipped, blurred x{sigma:g}", []).append(scores(probs, noisy, yv))
            out.setdefault(f"report: val clean, blurred x{sigma:g}", []).append(scores(probs, yv, yv))
    both = np.flatnonzero((y == a) | (y == b))
    two = (y[both] == b).astype(np.int64)
    out[f"clean {pair[0]}/{pair[1]}, all"] = [scores(cv_probs(x[both], two, 2), two, two)]
    return out


def flagged(s: dict, t: float, u: float, gated: bool) -> np.ndarray:
    if gated and (s["n"] < L.MIN_IMAGES or s["n"] < L.MIN_PER_CLASS * s["k"] or s["accuracy"] < L.MIN_ACCURACY):
        return np.zeros(s["n"], bool)
    return s["proposed"] & (s["given"] < t) & (s["other"] > u)


def cell(runs: list[dict], t: float, u: float, gated: bool) -> str:
    marks = [flagged(s, t, u, gated) for s in runs]
    if runs[0]["wrong"].any():
        p = [(m & s["wrong"]).sum() / max(m.sum(), 1) for m, s in zip(marks, runs, strict=True)]
        r = [(m & s["wrong"]).sum() / s["wrong"].sum() for m, s in zip(marks, runs, strict=True)]
        return f"P {np.mean(p):.3f} ({min(p):.2f}), R {np.mean(r):.3f} ({min(r):.2f})"
    share = [m.mean() for m in marks]
    return f"{np.mean(share):.1%} ({max(share):.1%})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("CNNKIT_DATA", ROOT.parent / "shared" /
                                                                               "data")))  # fmt: skip
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--pair", nargs=2, default=["chain_saw", "parachute"])
    args = parser.parse_args()
    print("\n".join(machine_lines(torch.get_num_threads())))
    root = args.data_dir / "imagenette-2k"
    x, y, names = split_features(root, "train")
    xv, yv, _ = split_features(root, "val")
    results = cases(x, y, xv, yv, names, args.pair, args.seeds)
    chosen = (L.MAX_GIVEN_PROB, L.MIN_SUGGESTED_PROB)
    print(f"\nseeds {args.seeds}; gates: {L.MIN_IMAGES} images, {L.MIN_PER_CLASS} a class, accuracy "
          f"{L.MIN_ACCURACY:.0%}; chosen thresholds: given < {chosen[0]}, other > {chosen[1]}")  # fmt: skip
    print("\n| case | accuracy, mean (min-max) | cleanlab alone | chosen thresholds | chosen, gated |")
    print("|---|---|---|---|---|")
    for case, runs in results.items():
        acc = [s["accuracy"] for s in runs]
        print(f"| {case} | {np.mean(acc):.1%} ({min(acc):.1%}-{max(acc):.1%}) | {cell(runs, 1.0, 0.0, False)} | "
              f"{cell(runs, *chosen, False)} | {cell(runs, *chosen, True)} |")  # fmt: skip
    print("\nthe grid (given < t and other > u; ungated): flagged share, or P (worst), R (worst)")
    for t, u in GRID:
        print(f"t {t:.2f} u {u:.2f}: " + "; ".join(f"{c}: {cell(r, t, u, False)}" for c, r in results.items()))


if __name__ == "__main__":
    main()

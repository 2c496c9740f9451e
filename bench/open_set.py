"""Which "looks known" score tells a model's own classes from images of other classes ("none of these")?

Two single-label models, each trained on half of its classes, score images of the other
half (the *near* unknowns) and of another dataset (the *far* unknowns):

* **photo**: the frozen ImageNet EfficientNet-Lite0 with a new head (``cnnkit.train(...,
  model="timm:efficientnet_lite0", pretrained=True, freeze=True)``) on 5 imagenette-2k
  classes; near: the val photos of the other 5 classes; far: CIFAR-10 test photos.
* **digits**: cnnkit's default MNIST network and recipe (LeNet-5, ``cnnkit train`` with no
  recipe) from scratch on MNIST digits 0-4 (PNG folders written from the IDX files); near:
  test digits 5-9; far: CIFAR-10 test photos as 28x28 grey.

For every score of :mod:`cnnkit.confidence` (and a few variants: the k-th neighbour's
similarity, the top logit, a z-scored sum), each seed: the AUROC of known held-out images
against each unknown set, and, at the threshold that keeps 95 % of the known images it is
set on (:func:`cnnkit.confidence.threshold_keeping`), the share of unknown images accepted
and of other known images kept. The temperature is fitted on the same known images as the
threshold; the expected calibration error (ECE) is measured before and after it.

Held-out known images: the digits model sets temperature and threshold on its val split
(from MNIST train) and is judged on the test digits 0-4. The photo model has one held-out
known split (imagenette val, 50 per class): it is judged twice, on the very images the
threshold was set on (as the lead's first measurement did) and on a seeded 50/50 split of
them ("fit half" sets, "check half" judges).

    python bench/open_set.py                       # both models, 3 seeds (about 30 min on 2 loaded cores)
    python bench/open_set.py --quick               # a smoke run: few images, 1 seed, 1 epoch
    python bench/open_set.py --models digits --seeds 5
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from sklearn.metrics import roc_auc_score
from torch.nn import functional as F

import cnnkit
from cnnkit.confidence import (
    calibrated,
    feature_bank,
    fit_temperature,
    known_score,
    last_linear,
    penultimate_features,
    threshold_keeping,
)
from cnnkit.evaluation.metrics import expected_calibration_error
from cnnkit.inference import Predictor
from cnnkit.inference.loading import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
KNOWN_PHOTOS = ("tench", "english_springer", "cassette_player", "chain_saw", "church")
KNOWN_DIGITS = (0, 1, 2, 3, 4)
KNN_MEAN_KS = (1, 5, 10, 50)
KNN_KTH_KS = (5, 10, 50)
KNN_CENTRED_KS = (5, 10)
METRICS = ("auroc near", "auroc far", "near accepted", "far accepted", "known kept")
Image_ = Image.Image | str | Path  # what Predictor.prepare takes


@dataclass
class Sizes:
    """How many images each part of a benchmark uses (``None``: all there are)."""

    train_per_class: int | None
    val_per_class: int | None
    test_per_class: int | None  # digits only: known test digits
    near_per_class: int | None
    far: int
    epochs: int | None = None  # None: the recipe's own


FULL = {"photo": Sizes(None, None, None, None, 500), "digits": Sizes(2000, 500, None, None, 1000)}
QUICK = {"photo": Sizes(20, 20, None, 10, 50, epochs=5), "digits": Sizes(100, 40, 40, 40, 100, epochs=1)}


@dataclass
class Outputs:
    """Logits ``[N, K]`` and penultimate features ``[N, D]`` of a set of images, with their labels
    (``[N]``, the known class index; None for unknown images)."""

    logits: torch.Tensor
    features: torch.Tensor
    labels: torch.Tensor | None = None

    def subset(self, index: torch.Tensor) -> Outputs:
        labels = None if self.labels is None else self.labels[index]
        return Outputs(self.logits[index], self.features[index], labels)


@dataclass
class Judged:
    """One model's figures over seeds: ``scores[protocol][score][metric]`` and ``calibration[protocol][what]``
    (lists, one value per seed)."""

    scores: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=dict)
    calibration: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def add(self, protocol: str, figures: dict[str, dict[str, float]], calibration: dict[str, float]) -> None:
        for score, values in figures.items():
            for metric, value in values.items():
                self.scores.setdefault(protocol, {}).setdefault(score, {}).setdefault(metric, []).append(value)
        for what, value in calibration.items():
            self.calibration.setdefault(protocol, {}).setdefault(what, []).append(value)


# ----------------------------------------------------------------------------- data


def photo_data(imagenette: Path, cifar_test: Path, dest: Path, sizes: Sizes) -> tuple[Path, list[Path], list[Path]]:
    """``dest/{train,val}/<class>/`` (symlinks to the 5 known classes), the near unknowns (val photos
    of the other classes) and the far ones (seeded CIFAR-10 test photos)."""
    for split, count in (("train", sizes.train_per_class), ("val", sizes.val_per_class)):
        for name in KNOWN_PHOTOS:
            (dest / split / name).mkdir(parents=True)
            for file in sorted((imagenette / split / name).iterdir())[:count]:
                (dest / split / name / file.name).symlink_to(file)
    others = sorted(p.name for p in (imagenette / "val").iterdir() if p.name not in KNOWN_PHOTOS)
    near = [f for name in others for f in sorted((imagenette / "val" / name).iterdir())[: sizes.near_per_class]]
    return dest, near, far_photos(cifar_test, sizes.far)


def far_photos(cifar_test: Path, count: int) -> list[Path]:
    """``count`` CIFAR-10 test photos drawn at random (seed 0) over all classes."""
    files = sorted(cifar_test.glob("*/*.png"))
    return sorted(random.Random(0).sample(files, count))


def mnist_digits(data_dir: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST images ``[N, 28, 28]`` uint8 and labels from the IDX files under ``data_dir/MNIST/raw``."""
    from torchvision.datasets import MNIST

    data = MNIST(str(data_dir), train=train, download=False)
    return data.data, data.targets


def first_per_digit(labels: torch.Tensor, digits: Sequence[int], start: int, count: int | None,
                    order: torch.Tensor) -> list[int]:  # fmt: skip
    """Indices of the ``start``-th to ``start + count``-th image of each digit in ``order``."""
    picked = []
    for digit in digits:
        of_digit = order[labels[order] == digit]
        picked += of_digit[start: None if count is None else start + count].tolist()
    return picked


def digit_data(data_dir: Path, cifar_test: Path, dest: Path, sizes: Sizes) -> tuple[Path, list[Image_], list[Image_]]:
    """``dest/{train,val,test}/<digit>/*.png`` of digits 0-4 (train and val drawn apart from MNIST train,
    seeded; test from MNIST test), the near unknowns (test digits 5-9) and the far ones (CIFAR-10 test
    photos as 28x28 grey), as PIL images."""
    images, labels = mnist_digits(data_dir, train=True)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    train = first_per_digit(labels, KNOWN_DIGITS, 0, sizes.train_per_class, order)
    val = first_per_digit(labels, KNOWN_DIGITS, sizes.train_per_class or 0, sizes.val_per_class, order)
    if sizes.train_per_class is None:
        raise ValueError("the digits benchmark needs a number of training digits per class")
    test_images, test_labels = mnist_digits(data_dir, train=False)
    in_order = torch.arange(len(test_labels))
    test = first_per_digit(test_labels, KNOWN_DIGITS, 0, sizes.test_per_class, in_order)
    for split, (source, source_labels, picked) in {"train": (images, labels, train), "val": (images, labels, val),
                                                     "test": (test_images, test_labels, test)}.items():  # fmt: skip
        for index in picked:
            folder = dest / split / str(int(source_labels[index]))
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(source[index].numpy()).save(folder / f"{index}.png")
    unknown = first_per_digit(test_labels, (5, 6, 7, 8, 9), 0, sizes.near_per_class, in_order)
    near: list[Image_] = [Image.fromarray(test_images[i].numpy()) for i in unknown]
    far: list[Image_] = [Image.open(p).convert("L").resize((28, 28), Image.BILINEAR)
                         for p in far_photos(cifar_test, sizes.far)]  # fmt: skip
    return dest, near, far


def folder_images(folder: Path) -> tuple[list[Path], torch.Tensor]:
    """The images of a class-per-folder split and their class indices (classes in sorted order)."""
    classes = sorted(p.name for p in folder.iterdir())
    files = [(f, i) for i, name in enumerate(classes) for f in sorted((folder / name).iterdir())]
    return [f for f, _ in files], torch.tensor([i for _, i in files])


# ----------------------------------------------------------------------------- model outputs


@torch.no_grad()
def model_outputs(model: torch.nn.Module, predictor: Predictor, images: Sequence[Image_],
                  batch_size: int = 64) -> Outputs:  # fmt: skip
    """Logits and penultimate features (:func:`cnnkit.confidence.penultimate_features`) of ``images``,
    each prepared as ``cnnkit predict`` prepares it."""
    logits = []
    with penultimate_features(model) as collected:
        for start in range(0, len(images), batch_size):
            batch = torch.stack([predictor.prepare(image) for image in images[start: start + batch_size]])
            logits.append(model(batch).float())
    return Outputs(torch.cat(logits), torch.cat(collected))


def head_logits(model: torch.nn.Module, features: torch.Tensor) -> torch.Tensor:
    """The logits the model's last Linear makes of penultimate ``features`` (a frozen backbone's head is only that)."""
    with torch.no_grad():
        return last_linear(model)(features).float()


class Scorer:
    """The outputs of one trained model on every image set. A frozen backbone gives the same features
    whatever the head's seed: after the first seed only the head is re-run, once the new model is
    checked to give the first one's features and its own logits on a few images."""

    def __init__(self, sets: dict[str, tuple[Sequence[Image_], torch.Tensor | None]], frozen: bool) -> None:
        self.sets = sets
        self.frozen = frozen
        self.first: dict[str, Outputs] | None = None

    def __call__(self, run_dir: Path) -> dict[str, Outputs]:
        model = load_checkpoint(run_dir).model
        predictor = Predictor.from_checkpoint(run_dir)
        if self.first is not None and self._same_features(model, predictor):
            return {name: Outputs(head_logits(model, out.features), out.features, out.labels)
                    for name, out in self.first.items()}  # fmt: skip
        outputs = {}
        for name, (images, labels) in self.sets.items():
            outputs[name] = model_outputs(model, predictor, images)
            outputs[name].labels = labels
        if self.frozen and self.first is None:
            self.first = outputs
        return outputs

    def _same_features(self, model: torch.nn.Module, predictor: Predictor) -> bool:
        name, (images, _) = next(iter(self.sets.items()))
        probe = model_outputs(model, predictor, images[:8])
        known = self.first[name]
        return bool(torch.allclose(probe.features, known.features[:8], atol=1e-4)
                    and torch.allclose(probe.logits, head_logits(model, probe.features), atol=1e-4))  # fmt: skip


# ----------------------------------------------------------------------------- scores


def kth_similarity(features: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """The cosine similarity to the ``k``-th nearest bank vector (Sun et al. 2022's own score)."""
    similarity = F.normalize(features.float(), dim=-1) @ bank.float().T
    return similarity.topk(min(k, bank.shape[0]), dim=-1).values[:, -1]


@dataclass
class Banks:
    """The training features the knn scores compare with: as they are, and less their mean (so that
    the cosine measures the direction from the centre of the training data, not from the origin
    that ReLU features all lie on one side of)."""

    plain: torch.Tensor
    centre: torch.Tensor
    centred: torch.Tensor

    @classmethod
    def of(cls, train: Outputs) -> Banks:
        centre = train.features.mean(0)
        return cls(feature_bank(train.features, train.labels), centre,
                   feature_bank(train.features - centre, train.labels))  # fmt: skip


def base_scores(out: Outputs, temperature: float, banks: Banks) -> dict[str, torch.Tensor]:
    """Every score measured, higher = more known, ``[N]`` each."""
    bank = banks.plain
    scores = {
        "msp (T=1)": known_score("msp", out.logits),
        "msp (fitted T)": known_score("msp", out.logits, temperature=temperature),
        # the same ranking as msp in exact arithmetic, but float32 rounds every top probability
        # within ~6e-8 of 1 to exactly 1.0: a confident model's best images all tie
        "msp (fitted T), log space": (out.logits.float() / temperature).log_softmax(-1).max(-1).values,
        "max logit": out.logits.max(-1).values,
        "energy (T=1)": known_score("energy", out.logits),
        "energy (fitted T)": known_score("energy", out.logits, temperature=temperature),
    }
    for k in KNN_MEAN_KS:
        scores[f"knn mean of top {k}"] = known_score("knn", out.logits, features=out.features, bank=bank, k=k)
    for k in KNN_KTH_KS:
        scores[f"knn {k}-th neighbour"] = kth_similarity(out.features, bank, k)
    for k in KNN_CENTRED_KS:
        scores[f"knn mean of top {k}, centred"] = known_score("knn", out.logits, features=out.features - banks.centre,
                                                              bank=banks.centred, k=k)  # fmt: skip
    return scores


COMBINED = {"msp (fitted T) + knn top 10, z-sum": ("msp (fitted T)", "knn mean of top 10"),
            "energy (T=1) + knn top 10, z-sum": ("energy (T=1)", "knn mean of top 10")}  # fmt: skip


Scores = dict[str, dict[str, torch.Tensor]]  # scores[set][score]: [N]


def all_scores(sets: dict[str, Outputs], fit: str, temperature: float, banks: Banks) -> Scores:
    """``scores[set][score]``, with the combinations: the sum of two scores each z-scored on the ``fit`` set."""
    scores = {name: base_scores(out, temperature, banks) for name, out in sets.items()}
    for combined, parts in COMBINED.items():
        stats = {p: (scores[fit][p].mean(), scores[fit][p].std().clamp_min(1e-12)) for p in parts}
        for per_set in scores.values():
            per_set[combined] = sum((per_set[p] - stats[p][0]) / stats[p][1] for p in parts)
    return scores


def auroc(known: torch.Tensor, unknown: torch.Tensor) -> float:
    """Area under the ROC curve of telling ``known`` scores (positive) from ``unknown`` ones."""
    truth = [1] * len(known) + [0] * len(unknown)
    return float(roc_auc_score(truth, torch.cat([known, unknown]).double().numpy()))


def judge(scores: Scores, fit: str, check: str, known_rate: float) -> dict[str, dict[str, float]]:
    """Per score: AUROC of ``check`` against near/far, and with the threshold keeping ``known_rate``
    of ``fit``: the share of near/far accepted and of ``check`` kept."""
    figures = {}
    for name in scores[fit]:
        threshold = threshold_keeping(scores[fit][name], known_rate)
        known, near, far = scores[check][name], scores["near"][name], scores["far"][name]
        figures[name] = {"auroc near": auroc(known, near), "auroc far": auroc(known, far),
                         "near accepted": float((near >= threshold).float().mean()),
                         "far accepted": float((far >= threshold).float().mean()),
                         "known kept": float((known >= threshold).float().mean())}  # fmt: skip
    return figures


def calibration(fit: Outputs, check: Outputs) -> tuple[float, dict[str, float]]:
    """The temperature fitted on ``fit`` and ``check``'s accuracy and ECE before/after it."""
    temperature = fit_temperature(fit.logits, fit.labels)
    before = expected_calibration_error(calibrated(check.logits), check.labels).ece
    after = expected_calibration_error(calibrated(check.logits, temperature), check.labels).ece
    accuracy = float((check.logits.argmax(-1) == check.labels).float().mean())
    saturated = float((known_score("msp", check.logits, temperature=temperature) == 1.0).float().mean())
    return temperature, {"T": temperature, "accuracy": accuracy, "ECE before": before, "ECE after": after,
                         "msp = 1.0": saturated}


def halves(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of ``range(count)`` into two halves."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return order[: count // 2], order[count // 2:]


def judge_seed(outputs: dict[str, Outputs], protocols: dict[str, tuple[str, str]], known_rate: float,
               result: Judged) -> None:  # fmt: skip
    """Add one seed's figures to ``result``: per protocol (``name -> (fit set, check set)``), the
    temperature and threshold are set on the fit set and judged on the check set."""
    banks = Banks.of(outputs["train"])
    for protocol, (fit, check) in protocols.items():
        temperature, calibrated_figures = calibration(outputs[fit], outputs[check])
        scores = all_scores(outputs, fit, temperature, banks)
        result.add(protocol, judge(scores, fit, check, known_rate), calibrated_figures)


# ----------------------------------------------------------------------------- the two models


def quiet_train(data: Path, out: Path, seed: int, **settings) -> Path:
    """Train with cnnkit's own ``train`` and return the run folder."""
    run = cnnkit.train(data=str(data), seed=seed, output_dir=str(out), name=f"seed{seed}", progress=False,
                       log=lambda _: None, report=False, check=False, **settings)  # fmt: skip
    return run.dir


def photo_benchmark(data_dir: Path, work: Path, sizes: Sizes, seeds: Sequence[int], known_rate: float = 0.95,
                    say: Callable[[str], None] = print) -> Judged:  # fmt: skip
    """The frozen EfficientNet-Lite0 on 5 imagenette-2k classes."""
    known, near, far = photo_data(data_dir / "imagenette-2k", data_dir / "cifar10" / "test", work / "known", sizes)
    train_files, train_labels = folder_images(known / "train")
    val_files, val_labels = folder_images(known / "val")
    scorer = Scorer({"val": (val_files, val_labels), "train": (train_files, train_labels), "near": (near, None),
                     "far": (far, None)}, frozen=True)  # fmt: skip
    settings = {"epochs": sizes.epochs} if sizes.epochs else {}
    result = Judged()
    for seed in seeds:
        start = time.perf_counter()
        run_dir = quiet_train(known, work / "runs", seed, model="timm:efficientnet_lite0", pretrained=True,
                              freeze=True, **settings)  # fmt: skip
        outputs = scorer(run_dir)
        fit_half, check_half = halves(len(val_labels), seed)
        outputs["fit half"], outputs["check half"] = outputs["val"].subset(fit_half), outputs["val"].subset(check_half)
        judge_seed(outputs, {"set on val, judged on val": ("val", "val"),
                             "set on fit half, judged on check half": ("fit half", "check half")}, known_rate, result)
        say(f"photo seed {seed}: {time.perf_counter() - start:.0f} s")
    return result


def digits_benchmark(data_dir: Path, work: Path, sizes: Sizes, seeds: Sequence[int], known_rate: float = 0.95,
                     say: Callable[[str], None] = print) -> Judged:  # fmt: skip
    """cnnkit's default MNIST run (LeNet-5, the default recipe) on digits 0-4."""
    known, near, far = digit_data(data_dir, data_dir / "cifar10" / "test", work / "digits", sizes)
    sets: dict[str, tuple[Sequence[Image_], torch.Tensor | None]] = {}
    for split in ("train", "val", "test"):
        sets[split] = folder_images(known / split)
    sets["near"], sets["far"] = (near, None), (far, None)
    scorer = Scorer(sets, frozen=False)
    settings = {"epochs": sizes.epochs} if sizes.epochs else {}
    result = Judged()
    for seed in seeds:
        start = time.perf_counter()
        run_dir = quiet_train(known, work / "digit-runs", seed, **settings)
        judge_seed(scorer(run_dir), {"set on val, judged on test": ("val", "test")}, known_rate, result)
        say(f"digits seed {seed}: {time.perf_counter() - start:.0f} s")
    return result


# ----------------------------------------------------------------------------- the table


def spread(values: list[float], percent: bool) -> str:
    """``mean [min, max]`` (just the value for one seed)."""
    scale, digits = (100, 1) if percent else (1, 3)
    mean = f"{scale * statistics.mean(values):.{digits}f}"
    return mean if len(values) == 1 else f"{mean} [{scale * min(values):.{digits}f}, {scale * max(values):.{digits}f}]"


def table(title: str, result: Judged) -> str:
    """The printed table of one model: per protocol, a row per score and the calibration line."""
    lines = []
    for protocol, per_score in result.scores.items():
        cal = result.calibration[protocol]
        lines += ["", f"{title}: temperature and threshold {protocol}",
                  f"  known accuracy {spread(cal['accuracy'], True)} %, fitted T {spread(cal['T'], False)}, "
                  f"ECE {spread(cal['ECE before'], True)} % -> {spread(cal['ECE after'], True)} % (T=1 -> fitted T), "
                  f"known images whose msp (fitted T) is exactly 1.0 in float32: {spread(cal['msp = 1.0'], True)} %",
                  f"  {'score':36} {'AUROC near':22} {'AUROC far':22} {'near accepted %':20} {'far accepted %':20} "
                  "known kept %"]  # fmt: skip
        for score, metrics in per_score.items():
            cells = [spread(metrics[m], percent=not m.startswith("auroc")) for m in METRICS]
            lines.append(f"  {score:36} {cells[0]:22} {cells[1]:22} {cells[2]:20} {cells[3]:20} {cells[4]}")
    return "\n".join(lines)


def default_data_dir() -> Path:
    return Path(os.environ.get("CNNKIT_DATA", ROOT.parent / "shared" / "data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(),
                        help="folder holding imagenette-2k/, cifar10/ and MNIST/ "
                             "(default: $CNNKIT_DATA or ../shared/data)")
    parser.add_argument("--models", default="photo,digits", help="comma-separated: photo, digits")
    parser.add_argument("--seeds", type=int, default=None, help="training seeds per model (default 3; --quick: 1)")
    parser.add_argument("--known-rate", type=float, default=0.95, help="share of known images the threshold keeps")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few images, 1 seed, short training")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    seeds = range(args.seeds or (1 if args.quick else 3))
    benchmarks = {"photo": ("photo model (frozen EfficientNet-Lite0, 5 imagenette-2k classes)", photo_benchmark),
                  "digits": ("digits model (default MNIST LeNet-5 from scratch, digits 0-4)", digits_benchmark)}
    print(f"seeds {list(seeds)}, threshold keeping {100 * args.known_rate:g} % of known images, torch threads "
          f"{torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            title, benchmark = benchmarks[name.strip()]
            result = benchmark(args.data_dir, Path(tmp), sizes[name.strip()], seeds, args.known_rate,
                               lambda line: print(line, flush=True))  # fmt: skip
            print(table(title, result), flush=True)


if __name__ == "__main__":
    main()

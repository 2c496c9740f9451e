"""Labels that are likely wrong, images unlike any class, and classes confused with each other.

:func:`check_labels` is ``cnnkit check DATA --labels``: it lists the training images as
training would, gets out-of-sample class probabilities for every one of them by K-fold
cross-validation (:mod:`~cnnkit.evaluation.label_probs`), and hands them to **cleanlab**
(confident learning; the optional extra ``cnnkit[labels]``):

* label issues: ``cleanlab.filter.find_label_issues`` (``filter_by="prune_by_class"``)
  proposes the images whose given label the held-out model does not believe, ranked by
  ``cleanlab.rank`` 's self-confidence (the probability of the given label, low first); each with its given label, the
  suggested one (the likeliest other class) and that score. A proposal is listed only
  with evidence strong enough on that data (:func:`select_suspects`): enough images, a
  model right on enough of them out-of-sample, and a given label the model all but rules
  out in favour of one other class; otherwise the check lists fewer or none and says why;
* outliers: cleanlab's ``OutOfDistribution`` score (average cosine distance to the 10
  nearest neighbours in the backbone's features, or the predictions' confidence on the
  network path); the lowest :data:`OUTLIER_FRACTION` are listed, least typical first;
* confused pairs: the off-diagonal of the out-of-sample confusion matrix, added in both
  directions (A taken for B plus B taken for A).

Why cross-validation: a model that trained on an image has memorised its label (fastai's
top losses rank exactly that), so a wrong label looks right to it. Printing and files are
:mod:`~cnnkit.data.audit.label_output`'s job.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from cnnkit.errors import CnnkitError, DataError
from cnnkit.evaluation.label_probs import DEFAULT_EPOCHS, FoldOptions, Probs, out_of_sample_probs, plan_folds

INSTALL_HINT = 'pip install "cnnkit[labels]"'
OUTLIER_FRACTION = 0.01  # of the images listed as outliers (at least OUTLIERS_MIN, at most OUTLIERS_MAX)
OUTLIERS_MIN, OUTLIERS_MAX = 5, 50
PAIRS = 10  # most-confused class pairs kept
# cleanlab's rule for how many issues to take from each class: per class, as many as its
# estimated off-diagonal share of the confident joint. On imagenette-2k (6 flip seeds) it
# found 1-3 points more of the flipped labels than the default prune_by_noise_rate at the
# same precision.
FILTER_BY = "prune_by_class"
# The evidence a suspect needs (select_suspects). The model's disagreements with the given
# labels are label errors *and* its own mistakes; below these the mistakes dominate.
# Calibrated with bench/label_issues.py (docs/benchmarks.md, "Label issues"): clean sets
# of 20 photos a class (10 classes, a hard pair), imagenette-2k with 5 % and 10 % flips,
# and the same with the features blurred by noise until the model barely learned them.
MIN_ACCURACY = 0.80  # out-of-sample share of images whose top class is the given label
MIN_IMAGES, MIN_PER_CLASS = 50, 5  # images checked, in all and per class on average
MAX_GIVEN_PROB = 0.10  # a suspect's out-of-sample probability of its given label is below this
MIN_SUGGESTED_PROB = 0.60  # ... and that of the suggested (likeliest other) class above this


def require_cleanlab() -> Any:
    """The cleanlab module, or one clear error saying how to install it."""
    try:
        import cleanlab.filter
        import cleanlab.outlier
        import cleanlab.rank  # noqa: F401
    except ImportError:
        raise CnnkitError(
            f"`cnnkit check --labels` needs cleanlab (confident learning) and scikit-learn: {INSTALL_HINT}"
        ) from None
    return cleanlab


@dataclass
class Evidence:
    """What a list of suspects rests on; ``to_dict()`` is the ``evidence`` part of the JSON.

    Attributes:
        images: images judged.
        classes: classes among them.
        accuracy: share of them whose out-of-sample top class is the given label.
        proposed: cleanlab's proposals (confident learning), before the thresholds.
        listed: suspects listed (proposals that passed every threshold).
        reason: one line when the list is empty or cut ("" when every proposal is listed).
        min_accuracy, min_images, min_per_class, max_given_prob, min_suggested_prob: the
            thresholds applied (module constants of the same names, upper case).
    """

    images: int
    classes: int
    accuracy: float
    proposed: int = 0
    listed: int = 0
    reason: str = ""
    min_accuracy: float = MIN_ACCURACY
    min_images: int = MIN_IMAGES
    min_per_class: int = MIN_PER_CLASS
    max_given_prob: float = MAX_GIVEN_PROB
    min_suggested_prob: float = MIN_SUGGESTED_PROB

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "accuracy": round(self.accuracy, 4)}


def select_suspects(labels: np.ndarray, probs: np.ndarray, *,
                    model: str = "the cross-validated model") -> tuple[list[tuple[int, float]], Evidence]:  # fmt: skip
    """The likely label errors that out-of-sample ``probs`` are strong enough evidence for.

    A row is listed when the data passes two gates and the row passes two thresholds:

    * at least :data:`MIN_IMAGES` images and :data:`MIN_PER_CLASS` a class on average
      (fewer: the model's accuracy, and so what its disagreements mean, is unknown);
    * the model is right on at least :data:`MIN_ACCURACY` of them (below, most of its
      disagreements with the labels are its own errors);
    * cleanlab proposes the row, its given label's probability is below
      :data:`MAX_GIVEN_PROB` and the suggested class's above :data:`MIN_SUGGESTED_PROB`.

    Args:
        labels: ``[N]`` given classes.
        probs: ``[N, K]`` out-of-sample probabilities (rows sum to 1).
        model: how the reason line names the model ("the cross-validated model").

    Returns:
        ``(row, label quality)`` of the suspects, most likely wrong first, and the evidence
        (with a one-line ``reason`` when it lists fewer than cleanlab proposes, or none).
    """
    k = probs.shape[1]
    classes = len(np.unique(labels))
    evidence = Evidence(images=len(labels), classes=classes,
                        accuracy=float((probs.argmax(1) == labels).mean()) if len(labels) else 0.0)  # fmt: skip
    if len(labels) < MIN_IMAGES or len(labels) < MIN_PER_CLASS * k or classes < 2:
        evidence.reason = (f"not listing suspects: only {len(labels):,} images ({len(labels) / k:.0f} a class): "
                           f"too few to tell label errors from model errors (at least {MIN_IMAGES} images and "
                           f"{MIN_PER_CLASS} a class are needed)")  # fmt: skip
        return [], evidence
    proposed = label_issues(labels, probs)
    evidence.proposed = len(proposed)
    if evidence.accuracy < MIN_ACCURACY:
        evidence.reason = (f"not listing suspects: {model} agrees with only {evidence.accuracy:.0%} of the given "
                           f"labels; below {MIN_ACCURACY:.0%} its disagreements are mostly its own errors (or more "
                           f"than one label in five is wrong, and the labels need a review as a whole)")  # fmt: skip
        return [], evidence
    rows = np.arange(len(labels))
    given = probs[rows, labels]
    other = probs.copy()
    other[rows, labels] = -1.0
    strong = (given < MAX_GIVEN_PROB) & (other.max(1) > MIN_SUGGESTED_PROB)
    suspects = [(row, quality) for row, quality in proposed if strong[row]]
    evidence.listed = len(suspects)
    if len(suspects) < len(proposed):
        evidence.reason = (f"{'no suspects' if not suspects else f'{len(suspects)} suspect(s)'} listed of cleanlab's "
                           f"{len(proposed)} proposal(s): the others keep a probability of at least "
                           f"{MAX_GIVEN_PROB:.2f} for their given label or none above {MIN_SUGGESTED_PROB:.2f} for "
                           f"another, too weak to tell from {model}'s own errors")  # fmt: skip
    return suspects, evidence


@dataclass
class LabelReport:
    """What the label check found; ``to_dict()`` is the ``labels`` part of ``cnnkit check --json``.

    Attributes:
        source: the folder or CSV checked.
        root: folder the ``path`` entries are relative to.
        class_names: classes, as training numbers them.
        method: how the out-of-sample probabilities were made.
        folds: folds used.
        images: training images checked (readable ones).
        unreadable: training files that could not be decoded (left out).
        agreement: share of images whose out-of-sample top class is the given label.
        issues: likely label errors, most likely first: ``{path, given, suggested, score,
            suggested_prob}``; ``score`` is cleanlab's label quality (the out-of-sample
            probability of the given label: low means likely wrong). Only those the
            evidence supports (:func:`select_suspects`).
        evidence: what the issues rest on (:class:`Evidence`; its ``reason`` says why
            fewer or none are listed).
        outliers: least typical images first: ``{path, given, score}`` (cleanlab's
            out-of-distribution score in [0, 1], low means unusual).
        confused_pairs: ``{a, b, count, a_as_b, b_as_a}``, most confused first.
        notes: how the check ran (fewer folds, features cached or computed, timings).
        seconds: wall time of the label check.
    """

    source: str
    root: str
    class_names: list[str]
    method: str
    folds: int
    images: int = 0
    unreadable: int = 0
    agreement: float = 0.0
    issues: list[dict[str, Any]] = field(default_factory=list)
    evidence: Evidence | None = None
    outliers: list[dict[str, Any]] = field(default_factory=list)
    confused_pairs: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["seconds"] = round(self.seconds, 2)
        values["agreement"] = round(self.agreement, 4)
        values["evidence"] = self.evidence.to_dict() if self.evidence else None
        return values

    def absolute(self, path: str) -> str:
        """An entry's ``path`` as a file path."""
        return path if os.path.isabs(path) else os.path.join(self.root, path)


def check_labels(data: str | os.PathLike[str], *, model: str | None = None, folds: int = 5,
                 epochs: int = DEFAULT_EPOCHS, seed: int = 0, progress: bool = False,
                 device: str = "auto") -> LabelReport:  # fmt: skip
    """Find the likely label errors, outliers and confused pairs of a dataset's training images.

    Args:
        data: a class-per-folder tree (its ``train/`` split when it has split folders) or a
            CSV file (its train rows), as given to ``cnnkit train --data``.
        model: see :func:`~cnnkit.evaluation.label_probs.out_of_sample_probs` (None: chosen
            from the images).
        folds: K of the K-fold cross-validation.
        epochs: epochs per fold when a network trains from scratch.
        seed: seeds the folds and any network.
        progress: progress bars on the feature pass and the folds (on a terminal).
        device: where the model runs.

    Raises:
        CnnkitError: cleanlab is missing (the message says how to install it).
        DataError: the data is missing, has no training image, or a class with fewer than 2.
        UsageError: an unknown model or a bad option.
    """
    require_cleanlab()
    start = time.perf_counter()
    paths, labels, class_names, root, source = training_files(data)
    plan_folds(labels, class_names, folds)  # a too-small class fails before any slow work
    probs = out_of_sample_probs(paths, labels, class_names, FoldOptions(model, folds, epochs, seed, progress, device))
    report = LabelReport(source, root, class_names, probs.method, probs.folds, notes=list(probs.notes))
    rel = [_rel(p, root) for p in paths]
    rank_issues(report, rel, labels, probs)
    report.seconds = time.perf_counter() - start
    return report


def training_files(data: str | os.PathLike[str]) -> tuple[list[str], np.ndarray, list[str], str, str]:
    """``(paths, labels [N], class names, root, source)`` of the training images of ``data``."""
    from cnnkit.data.audit.scan import _listing

    listing, _, source = _listing(data, strict=True)
    files = listing.splits.get("train")
    if files is None or not len(files):
        raise DataError(f"{source} has no training images to check the labels of")
    return list(files.paths), np.asarray(files.labels, dtype=np.int64), list(listing.class_names), listing.root, source


def rank_issues(report: LabelReport, paths: list[str], labels: np.ndarray, probs: Probs) -> None:
    """Fill ``report``'s issues, outliers, confused pairs and agreement from ``probs``."""
    rows = np.flatnonzero(probs.readable)
    report.images, report.unreadable = len(rows), len(paths) - len(rows)
    if report.unreadable:
        report.notes.append(f"{report.unreadable} unreadable training file(s) left out (`cnnkit check` lists them)")
    p, y = probs.probs[rows], labels[rows]
    p = p / p.sum(1, keepdims=True)  # cleanlab wants rows summing to 1 exactly
    names = report.class_names
    report.agreement = float((p.argmax(1) == y).mean())
    suspects, report.evidence = select_suspects(y, p)
    for index, score in suspects:
        other = p[index].copy()
        other[y[index]] = -1.0  # the suggestion is the likeliest *other* class
        suggested = int(other.argmax())
        report.issues.append({"path": paths[rows[index]], "given": names[y[index]], "suggested": names[suggested],
                              "score": round(float(score), 4), "suggested_prob": round(float(p[index, suggested]), 4)})
    features = probs.features[rows] if probs.features is not None else None
    for index, score in outliers(features, y, p):
        report.outliers.append({"path": paths[rows[index]], "given": names[y[index]], "score": round(float(score), 4)})
    report.confused_pairs = confused_pairs(y, p.argmax(1), names)


def label_issues(labels: np.ndarray, probs: np.ndarray) -> list[tuple[int, float]]:
    """``(row, label quality)`` of cleanlab's label issues, most likely wrong first."""
    cleanlab = require_cleanlab()
    with warnings.catch_warnings():  # cleanlab warns about tiny classes; the notes already say
        warnings.simplefilter("ignore")
        ranked = cleanlab.filter.find_label_issues(labels, probs, filter_by=FILTER_BY,
                                                   return_indices_ranked_by="self_confidence")  # fmt: skip
        quality = cleanlab.rank.get_label_quality_scores(labels, probs, method="self_confidence")
    return [(int(i), float(quality[i])) for i in ranked]


def outliers(features: np.ndarray | None, labels: np.ndarray, probs: np.ndarray) -> list[tuple[int, float]]:
    """``(row, score)`` of the least typical images, lowest score first.

    From the features (cosine kNN distance) when there are any, else from the
    out-of-sample predictions and labels.
    """
    cleanlab = require_cleanlab()
    count = int(np.clip(round(OUTLIER_FRACTION * len(labels)), OUTLIERS_MIN, OUTLIERS_MAX))
    count = min(count, len(labels))
    ood = cleanlab.outlier.OutOfDistribution()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if features is not None and len(features) > 10:  # cleanlab's kNN uses 10 neighbours
            scores = ood.fit_score(features=np.ascontiguousarray(features, dtype=np.float32), verbose=False)
        else:
            scores = ood.fit_score(pred_probs=probs, labels=labels, verbose=False)
    order = np.argsort(scores, kind="stable")[:count]
    return [(int(i), float(scores[i])) for i in order]


def confused_pairs(labels: np.ndarray, predicted: np.ndarray, names: list[str], k: int = PAIRS) -> list[dict[str, Any]]:
    """The ``k`` class pairs most often confused either way, from given vs out-of-sample top class."""
    n = len(names)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    pairs = [
        {"a": names[a], "b": names[b], "count": int(confusion[a, b] + confusion[b, a]),
         "a_as_b": int(confusion[a, b]), "b_as_a": int(confusion[b, a])}
        for a in range(n) for b in range(a + 1, n) if confusion[a, b] + confusion[b, a]
    ]  # fmt: skip
    pairs.sort(key=lambda pair: (-pair["count"], pair["a"], pair["b"]))
    return pairs[:k]


def _rel(path: str, root: str) -> str:
    try:
        rel = os.path.relpath(path, root)
    except ValueError:  # another drive (Windows)
        return path
    return path if rel.startswith("..") else rel.replace(os.sep, "/")

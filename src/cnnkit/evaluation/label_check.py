"""``cnnkit check DATA --labels``: the training images' out-of-sample probabilities, judged.

This module wires two layers: :mod:`~cnnkit.evaluation.label_probs` makes the
probabilities (K-fold cross-validation with a model), :mod:`cnnkit.data.audit.labels`
judges them (cleanlab: label issues, outliers, confused pairs) without knowing any model.
"""

from __future__ import annotations

import os
import time

from cnnkit.data.audit.labels import LabelReport, label_report, require_cleanlab, training_files
from cnnkit.evaluation.label_probs import DEFAULT_EPOCHS, FoldOptions, out_of_sample_probs, plan_folds


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
    files = training_files(data)
    plan_folds(files.labels, files.class_names, folds)  # a too-small class fails before any slow work
    probs = out_of_sample_probs(files.paths, files.labels, files.class_names,
                                FoldOptions(model, folds, epochs, seed, progress, device))
    report = label_report(files, probs)
    report.seconds = time.perf_counter() - start
    return report

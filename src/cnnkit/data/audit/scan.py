"""The check itself: :func:`audit` lists a folder or CSV as training would and judges it.

This module owns the steps of one check: the listing (``_listing``: class-per-folder
trees, split folders, CSV files, with the errors a wrong path gets), counting images per
split and class, describing modes, formats and sizes (tiny images, the shorter-side
histogram), calling the duplicate search, and judging: ``problems`` (training cannot run)
and ``warnings`` (it can; look anyway) of the :class:`~cnnkit.data.audit.report.AuditReport`.
"""

from __future__ import annotations

import os
import statistics
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from cnnkit.data.audit.duplicates import DEFAULT_NEAR_DISTANCE, _duplicate_groups, _near_groups
from cnnkit.data.audit.examine import _Row, _worker_count, examine_files
from cnnkit.data.audit.report import DEFAULT_MIN_SIDE, AuditReport
from cnnkit.data.folder import FileDataset, read_csv, scan_folder
from cnnkit.errors import CnnkitError, DataError, UsageError

TINY_FRACTION = 8  # ...and so is one under 1/8 of the dataset's median shorter side
IMBALANCE_WARNING = 5.0  # largest/smallest training class at or above this warns
SIZE_BINS = (16, 32, 64, 128, 256, 512, 1024, 2048)  # px, shorter-side histogram edges


def audit(
    data: str | os.PathLike[str],
    *,
    quick: bool = False,
    workers: int | None = None,
    progress: bool = False,
    min_side: int = DEFAULT_MIN_SIDE,
    near_distance: int = DEFAULT_NEAR_DISTANCE,
    strict: bool = False,
) -> AuditReport:
    """Check a class-per-folder tree (with or without train/val/test folders) or a CSV.

    Args:
        data: the folder or ``.csv`` file, as given to ``cnnkit train --data``.
        quick: header-level check only (see the module docstring).
        workers: examining processes (None: one per core, at most 8; 0: this process).
        progress: show a progress bar (only on a terminal).
        min_side: shorter sides under this many pixels are tiny (raised to 1/8 of the
            median shorter side for datasets of large photos).
        near_distance: perceptual-hash distance (bits of 64) that counts as a near
            duplicate; 0 finds only identical hashes.
        strict: list the files exactly as training does, raising its errors for empty
            class folders and single-class trees (the check before training); False
            reports those as problems with everything else.

    Returns:
        The report; ``report.usable`` is False when there is no readable image, fewer
        than two classes, or a class without a readable training image.

    Raises:
        DataError: the folder or CSV is missing or cannot be listed (the message says why).
        UsageError: ``data`` is a registered dataset name or not a folder/CSV, or an
            option is out of range.
    """
    _check_options(workers, min_side, near_distance)
    if not quick:
        _require_imagehash()
    start = time.perf_counter()
    listing, layout, source = _listing(data, strict)
    entries = [
        (path, split, listing.class_names[label])
        for split, files in listing.splits.items()
        for path, label in zip(files.paths, files.labels, strict=True)
    ]
    facts = examine_files(
        [path for path, _, _ in entries], decode=not quick, workers=workers, progress=progress
    )
    report = AuditReport(
        source, layout, quick, listing.root, list(listing.class_names), list(listing.splits)
    )
    report.ignored = [
        {"path": _rel(path, listing.root), "reason": why} for path, why in listing.ignored
    ]
    rows = [
        _Row(_rel(path, listing.root), split, name, fact)
        for (path, split, name), fact in zip(entries, facts, strict=True)
    ]
    _count(report, rows)
    _describe_images(report, [row for row in rows if row.ok], min_side)
    report.exact = _duplicate_groups(rows, "exact")
    if not quick:
        report.near_distance = near_distance
        report.near = _near_groups(report, rows, near_distance)
    _judge(report)
    workers_used = _worker_count(workers, len(entries))
    how = "headers and byte hashes (quick)" if quick else "full decode and perceptual hashes"
    report.notes.append(f"{how}; {workers_used or 1} process{'es' if workers_used > 1 else ''}")
    report.seconds = time.perf_counter() - start
    return report


def _check_options(workers: int | None, min_side: int, near_distance: int) -> None:
    if workers is not None and workers < 0:
        raise UsageError(f"--workers must be 0 (this process) or more, got {workers}")
    if min_side < 1:
        raise UsageError(f"--min-side must be at least 1 pixel, got {min_side}")
    if not 0 <= near_distance <= 16:
        raise UsageError(f"--near-distance must be 0 to 16 bits (of 64), got {near_distance}")


def _require_imagehash() -> None:
    """Fail once, clearly, instead of every file failing its hash in a worker.

    Importing here also spares each forked worker the import (phash's scipy.fftpack too).
    """
    try:
        import imagehash  # noqa: F401
        import scipy.fftpack  # noqa: F401
    except ImportError:
        raise CnnkitError(
            "the full check needs the imagehash package (a cnnkit dependency): "
            "pip install imagehash, or reinstall cnnkit; `cnnkit check --quick` works without it"
        ) from None


def _listing(data: str | os.PathLike[str], strict: bool) -> tuple[FileDataset, str, str]:
    """The files of ``data`` as training lists them, its layout and its absolute path."""
    from cnnkit.data.datasets import list_datasets

    path = Path(os.fspath(data)).expanduser()
    if not path.exists():
        if os.fspath(data) in list_datasets():
            raise UsageError(
                f"{os.fspath(data)!r} is a registered dataset: it is read by its own loader "
                "(torchvision), not as image files, and `cnnkit check` has nothing to check there; "
                "give a folder of images or a CSV file"
            )
        raise DataError(
            f"data not found: {path}; give a folder with one sub-folder of images per "
            "class (optionally under train/ val/ test/) or a CSV file with path,label columns"
        )
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise UsageError(
                f"{path} is a file but not a .csv; give a folder of class folders or a "
                "CSV file with path,label columns"
            )
        return (
            read_csv(path, val_fraction=0.0, test_fraction=0.0, seed=0),
            "csv",
            str(path.resolve()),
        )
    # No held-out fractions: only the splits on disk are compared for leakage.
    listing = scan_folder(path, val_fraction=0.0, test_fraction=0.0, seed=0, strict=strict)
    layout = (
        "split folders"
        if set(listing.splits) - {"train"} or (path / "train").is_dir()
        else "folder"
    )
    return listing, layout, str(path.resolve())


def _rel(path: str, root: str) -> str:
    try:
        return os.path.relpath(path, root).replace(os.sep, "/")
    except ValueError:  # another drive (Windows)
        return path


def _count(report: AuditReport, rows: list[_Row]) -> None:
    """Images per split and class, unreadable files, empty classes and imbalance."""
    report.images = len(rows)
    report.readable = sum(row.ok for row in rows)
    report.counts = {
        split: dict.fromkeys(report.class_names, 0) for split in report.splits or ["train"]
    }
    for row in rows:
        if row.ok:
            report.counts[row.split][row.label] += 1
        else:
            report.unreadable.append(
                {**row.where(), "problem": row.facts.problem, "reason": row.facts.reason}
            )
    train = report.counts.get("train", {})
    report.empty_classes = [name for name in report.class_names if not train.get(name)]
    sizes = [train[name] for name in report.class_names if train.get(name)]
    if sizes and not report.empty_classes:
        report.imbalance = round(max(sizes) / min(sizes), 2)


def _describe_images(report: AuditReport, rows: list[_Row], min_side: int) -> None:
    """Modes, formats, size statistics and tiny images of the readable files."""
    report.modes = dict(Counter(row.facts.mode for row in rows).most_common())
    report.formats = dict(Counter(row.facts.format for row in rows).most_common())
    if not rows:
        return
    shorter = [min(row.facts.width, row.facts.height) for row in rows]
    report.tiny_side = max(min_side, int(statistics.median(shorter)) // TINY_FRACTION)
    report.tiny = [
        {**row.where(), "width": row.facts.width, "height": row.facts.height}
        for row, side in zip(rows, shorter, strict=True)
        if side < report.tiny_side
    ]
    by_area = sorted(rows, key=lambda row: (row.facts.width * row.facts.height, row.facts.width))
    common = Counter(f"{row.facts.width}x{row.facts.height}" for row in rows).most_common(5)
    report.sizes = {
        "smallest": _wh(by_area[0]),
        "median": _wh(by_area[len(by_area) // 2]),
        "largest": _wh(by_area[-1]),
        "common": dict(common),
        "shorter_side": _histogram(shorter),
    }


def _wh(row: _Row) -> str:
    return f"{row.facts.width}x{row.facts.height}"


def _histogram(values: Iterable[int]) -> dict[str, int]:
    """Counts per shorter-side bin (``"<16"``, ``"16-31"``, ..., ``">=2048"``); no empty bins."""
    edges = np.asarray(SIZE_BINS)
    labels = [f"<{SIZE_BINS[0]}"] + [
        f"{lo}-{hi - 1}" for lo, hi in zip(SIZE_BINS, SIZE_BINS[1:], strict=False)
    ]
    labels.append(f">={SIZE_BINS[-1]}")
    bins = np.searchsorted(edges, np.asarray(list(values)), side="right")
    counts = np.bincount(bins, minlength=len(labels))
    return {label: int(n) for label, n in zip(labels, counts, strict=True) if n}


def _judge(report: AuditReport) -> None:
    """Fill ``problems`` (training cannot run) and ``warnings`` (it can; look anyway)."""
    problems, warnings = report.problems, report.warnings
    if report.readable == 0:
        problems.append(f"no readable image among {report.images:,} image files")
    if len(report.class_names) < 2:
        problems.append(
            f"{len(report.class_names)} class(es) ({', '.join(report.class_names) or 'none'}); "
            "a classifier needs at least 2: add one folder (or label) per class"
        )
    elif report.empty_classes and report.readable:
        problems.append(
            f"no readable training image in class(es) {', '.join(report.empty_classes)}; "
            "add images or remove the class"
        )
    if report.unreadable:
        kinds = Counter(entry["problem"] for entry in report.unreadable)
        detail = ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())
        warnings.append(
            f"{len(report.unreadable)} unreadable file(s) ({detail}); training skips them"
        )
    if report.tiny:
        warnings.append(
            f"{len(report.tiny)} tiny image(s) (shorter side under {report.tiny_side} px)"
        )
    if report.imbalance is not None and report.imbalance >= IMBALANCE_WARNING:
        warnings.append(
            f"class imbalance {report.imbalance:.2f} (largest/smallest training class); "
            "accuracy will favour the large classes: read the per-class accuracy"
        )
    for split in report.splits:
        if split != "train":
            missing = [name for name, n in report.counts[split].items() if n == 0]
            if missing:
                warnings.append(f"no {split} image of class(es) {', '.join(missing)}")
    _warn_duplicates(report)


def _warn_duplicates(report: AuditReport) -> None:
    for kind, groups in (("exact", report.exact), ("near", report.near)):
        if not groups:
            continue
        what = "identical files" if kind == "exact" else "near-identical images"
        leaks = [g for g in groups if len(g["splits"]) > 1]
        conflicts = [g for g in groups if g["conflicting"]]
        within = [g for g in groups if len(g["splits"]) == 1 and not g["conflicting"]]
        if leaks:
            report.warnings.append(
                f"leakage: {len(leaks)} group(s) of {what} shared between "
                "train/val/test; evaluation scores will be too high"
            )
        if conflicts:
            report.warnings.append(
                f"{len(conflicts)} group(s) of {what} under different classes (conflicting labels)"
            )
        if within:
            extra = sum(len(g["files"]) - 1 for g in within)
            report.warnings.append(
                f"{len(within)} group(s) of {what} within one class and split "
                f"({extra} extra cop{'y' if extra == 1 else 'ies'})"
            )

"""What a listing of image files is, and how it is split: :class:`FileDataset`, :func:`stratified_split`.

This module owns the types every listing returns (:class:`FileList`, parallel paths and
labels; :class:`FileDataset`, classes, splits and skipped entries), the names shared by
the folder and CSV listings (:data:`IMAGE_EXTENSIONS`, :data:`SPLITS`,
:data:`SPLIT_ALIASES`, the two-class rule), the seeded, class-stratified carving of
missing val/test splits out of train (:func:`stratified_split`) and :func:`fingerprint`,
the short hash that identifies a listing's files, labels and split.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cnnkit.errors import DataError, UsageError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
"""Lower-case file suffixes treated as images (matched case-insensitively)."""

SPLITS: tuple[str, ...] = ("train", "val", "test")

# Folder or CSV split names -> canonical split name.
SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}

_HOW_TO_GIVE_DATA = "give a folder with one sub-folder of images per class, or a CSV file"


@dataclass
class FileList:
    """Parallel lists of image paths and integer labels (``labels[i]`` is ``paths[i]``'s)."""

    paths: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Sequence[int]) -> FileList:
        """The entries at ``indices``, in that order."""
        return FileList([self.paths[i] for i in indices], [self.labels[i] for i in indices])


@dataclass
class FileDataset:
    """A scanned dataset: classes, files per split, and what was skipped.

    Attributes:
        class_names: label index -> class name, sorted.
        splits: split name (``train``, ``val`` or ``test``) -> files; splits with no files
            are left out.
        ignored: ``(path, reason)`` for each entry skipped during the scan (non-image files,
            folders that are not classes or splits); hidden files are skipped silently.
        root: absolute folder the paths live in (for a CSV, the CSV's folder).
    """

    class_names: list[str]
    splits: dict[str, FileList]
    ignored: list[tuple[str, str]]
    root: str


def _require_two_classes(class_names: list[str], where: Path | str) -> None:
    if len(class_names) < 2:
        found = ", ".join(class_names) or "none"
        raise DataError(
            f"{where} has {len(class_names)} class(es) ({found}); a classifier needs at "
            "least 2: add one folder (or label) per class"
        )


def stratified_split(
    labels: list[int], fractions: dict[str, float], seed: int
) -> dict[str, list[int]]:
    """Split indices per class so that every split keeps the class balance.

    Each class with ``n`` items gives ``round(n * fraction)`` of them to each named split,
    at least 1 when ``fraction > 0`` and ``n >= 2``, and always keeps at least one for
    ``train``. Which items go where is a seeded shuffle per class.

    Not scikit-learn's ``train_test_split(stratify=...)``: it spreads one held-out count
    over the classes by largest remainder (a small class can get none), refuses a class of
    one item and a held-out count below the number of classes, and carves one split per
    call. These rules (every class in every held-out split, a lone item kept for training)
    are cnnkit's. K-fold cross-validation is scikit-learn's ``StratifiedKFold``
    (:func:`cnnkit.evaluation.label_probs.fold_splits`).

    Args:
        labels: label of each item.
        fractions: split name -> fraction of each class, e.g. ``{"val": 0.2}``; each in
            [0, 1) and summing to less than 1. ``train`` must not be a key.
        seed: same labels, fractions and seed give the same split on any machine.

    Returns:
        split name -> sorted indices into ``labels``; the remainder is under ``train``.
        Every key of ``fractions`` and ``train`` is present (possibly empty).

    Raises:
        UsageError: a fraction out of range, fractions summing to 1 or more, or a ``train``
            key.
    """
    _check_fractions(fractions)
    generator = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)

    result: dict[str, list[int]] = {name: [] for name in fractions}
    result["train"] = []
    for label in sorted(by_class):
        members = by_class[label]
        # torch's generator, not random/numpy: its permutations are stable across versions.
        order = torch.randperm(len(members), generator=generator).tolist()
        start = 0
        for name, count in _held_out_counts(len(members), fractions).items():
            result[name].extend(members[i] for i in order[start : start + count])
            start += count
        result["train"].extend(members[i] for i in order[start:])
    return {name: sorted(indices) for name, indices in result.items()}


def _check_fractions(fractions: dict[str, float]) -> None:
    if "train" in fractions:
        raise UsageError("stratified_split: 'train' is the remainder and takes no fraction")
    for name, fraction in fractions.items():
        if not 0.0 <= fraction < 1.0:
            raise UsageError(f"{name} fraction must be in [0, 1), got {fraction}")
    if sum(fractions.values()) >= 1.0:
        raise UsageError(
            f"split fractions {fractions} leave nothing for training; make them sum below 1"
        )


def _held_out_counts(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """Items of one class of size ``n`` that go to each held-out split."""
    counts: dict[str, int] = {}
    left = n - 1  # one item always stays in train so every class can be learned
    for name, fraction in fractions.items():
        count = round(n * fraction)
        if fraction > 0 and n >= 2:
            count = max(count, 1)
        counts[name] = max(0, min(count, left))
        left -= counts[name]
    return counts


def _carve_missing(
    splits: dict[str, FileList], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, FileList]:
    """Take the splits that are absent but asked for (fraction > 0) out of train."""
    _check_fractions({"val": val_fraction, "test": test_fraction})
    carved = {name: files for name, files in splits.items() if len(files)}
    wanted = {
        name: fraction
        for name, fraction in (("val", val_fraction), ("test", test_fraction))
        if fraction > 0 and name not in carved
    }
    if wanted:
        train = carved["train"]
        for name, indices in stratified_split(train.labels, wanted, seed).items():
            carved[name] = train.subset(indices)
    return {name: carved[name] for name in SPLITS if name in carved and len(carved[name])}


def fingerprint(file_dataset: FileDataset) -> str:
    """Short sha1 identifying the files, labels and split of a dataset.

    Hashes class names and, per split, each file's path relative to ``root``, its size in
    bytes and its label; file contents are not read, so it is fast on large folders. The
    same files with the same split give the same value on any machine.

    Returns:
        12 hex characters.
    """
    digest = hashlib.sha1()
    digest.update("\n".join(file_dataset.class_names).encode())
    for split in SPLITS:
        files = file_dataset.splits.get(split)
        if files is None:
            continue
        entries = sorted(
            (_relative(p, file_dataset.root), _size(p), label)
            for p, label in zip(files.paths, files.labels, strict=True)
        )
        for rel, size, label in entries:
            digest.update(f"\n{split}\t{rel}\t{size}\t{label}".encode())
    return digest.hexdigest()[:12]


def _relative(path: str, root: str) -> str:
    try:
        rel = os.path.relpath(path, root)
    except ValueError:  # another drive on Windows: no relative path exists
        rel = path
    return rel.replace(os.sep, "/")


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return -1  # a vanished file still changes the fingerprint instead of crashing

"""The dataset doctor: what is wrong with a folder or CSV of images before a model sees it.

:func:`audit` lists the files as training would (:func:`~cnnkit.data.folder.scan_folder`,
:func:`~cnnkit.data.folder.read_csv`, hidden entries ignored), examines each one in
worker processes and returns an :class:`AuditReport`:

* unreadable files (zero bytes, not an image, truncated, corrupt, decompression bomb),
  each with its reason;
* image modes, formats and sizes, and tiny images;
* exact duplicates (same bytes) and near duplicates (perceptual hash, ``imagehash.phash``),
  sorted into copies within a class, copies under different labels and copies shared by
  train/val/test (leakage);
* images per class and split, the imbalance ratio and empty classes.

A full check decodes every image (JPEGs at a reduced scale, which still reads all of the
compressed data) and hashes its look. A quick check (``quick=True``, run by ``cnnkit
train`` before it starts) reads headers, verifies what PIL can verify without decoding
(PNG checksums) and hashes the bytes: a few seconds for 60,000 files, but a truncated JPEG
is only found when training loads it (and skips it).
"""

from __future__ import annotations

import hashlib
import io
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cnnkit import atomic
from cnnkit.data.folder import (
    FileDataset,
    ImageLoadError,
    _strict_truncation,
    decode_error,
    read_csv,
    refuse_bomb,
    scan_folder,
    to_mode,
)
from cnnkit.errors import CnnkitError, DataError, UsageError

DEFAULT_MIN_SIDE = 16  # px; a shorter side below this is too small to show a class
TINY_FRACTION = 8  # ...and so is one under 1/8 of the dataset's median shorter side
# Bits of 64. Re-encoded, resized or greyscale copies of a photo differ by 0-2 bits; at 4,
# unrelated 32x32 CIFAR images with plain sky behind them already match.
DEFAULT_NEAR_DISTANCE = 2
NEAR_SEARCH_LIMIT = 200_000  # distinct images; the pairwise search grows with their square
IMBALANCE_WARNING = 5.0  # largest/smallest training class at or above this warns
SHOWN = 10  # entries of each list printed by format_report (the JSON holds all)
SIZE_BINS = (16, 32, 64, 128, 256, 512, 1024, 2048)  # px, shorter-side histogram edges
_HASH_SIDE = 32  # imagehash.phash looks at a 32x32 greyscale image; decode at least 2x that


@dataclass
class FileFacts:
    """What examining one file found (a worker's result; plain values, cheap to pickle).

    Attributes:
        path: the file.
        size: bytes on disk.
        problem: None when readable, else a :data:`~cnnkit.data.folder.LOAD_ERROR_KINDS`.
        reason: why it is unreadable (None when readable).
        format: PIL format name, e.g. ``JPEG``.
        mode: PIL mode as stored, e.g. ``RGB``, ``L``, ``P``, ``I;16``, ``CMYK``.
        width: pixels.
        height: pixels.
        digest: blake2b of the bytes, for exact duplicates.
        phash: 16 hex digits of ``imagehash.phash`` (full checks only).
    """

    path: str
    size: int = 0
    problem: str | None = None
    reason: str | None = None
    format: str | None = None
    mode: str | None = None
    width: int = 0
    height: int = 0
    digest: str | None = None
    phash: str | None = None


def examine_file(path: str, decode: bool = True) -> FileFacts:
    """Examine one image file; never raises for a bad file (the facts say what is wrong).

    Args:
        path: the file.
        decode: True decodes the pixels and computes the perceptual hash; False stops
            after the header, PIL's ``verify()`` and the byte hash.
    """
    facts = FileFacts(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
        facts.size = len(data)
        if not data:
            raise ImageLoadError(path, "zero bytes", "zero-bytes")
        facts.digest = hashlib.blake2b(data, digest_size=16).hexdigest()
        with _strict_truncation(), Image.open(io.BytesIO(data)) as image:
            facts.format, facts.mode = image.format, image.mode
            facts.width, facts.height = image.size
            refuse_bomb(path, image)
            if decode:
                facts.phash = _look_hash(image)
            else:
                image.verify()
    except ImageLoadError as error:
        facts.problem, facts.reason = error.kind, error.reason
    except Exception as error:  # every decoder failure is a fact about the file, not a crash
        bad = decode_error(path, error)
        facts.problem, facts.reason = bad.kind, bad.reason
    return facts


def _look_hash(image: Image.Image) -> str:
    """Decode ``image`` (JPEG at a reduced scale) and return its perceptual hash in hex.

    The decode goes through :func:`~cnnkit.data.folder.to_mode`, the conversion training
    uses, so a mode that breaks it is found here too.
    """
    import imagehash

    image.draft("RGB", (2 * _HASH_SIDE, 2 * _HASH_SIDE))  # JPEG only: DCT scaling, all data read
    image.load()
    return str(imagehash.phash(to_mode(image, "L")))


# ----------------------------------------------------------------------------- the report


@dataclass
class AuditReport:
    """Everything :func:`audit` found; ``to_dict()`` is the JSON of ``cnnkit check --json``.

    Attributes:
        source: the folder or CSV file checked.
        layout: ``folder``, ``split folders`` or ``csv``.
        quick: True for a header-level check (no decoding, no near duplicates).
        root: folder the ``path`` entries below are relative to.
        class_names: classes, sorted (as training numbers them).
        splits: split names present on disk (``train``, ``val``, ``test``).
        images: image files listed.
        readable: of those, the ones that passed the check.
        counts: split -> class -> readable images.
        imbalance: largest / smallest readable training class (None when a class is empty).
        empty_classes: classes with no readable training image.
        unreadable: ``{path, split, class, problem, reason}`` per bad file.
        ignored: ``{path, reason}`` per non-image file or stray folder (hidden ones are
            ignored silently).
        modes: PIL mode -> readable images (``RGB``, ``L``, ``P``, ``I;16``...).
        formats: PIL format -> readable images.
        sizes: shorter-side histogram, smallest / median / largest size, commonest sizes.
        tiny_side: shorter sides under this many pixels count as tiny.
        tiny: ``{path, split, class, width, height}`` per tiny image.
        exact: duplicate groups of identical files (see :func:`_duplicate_groups`).
        near: groups of different files that look alike (perceptual hash).
        near_distance: largest hash distance (bits of 64) counted as near.
        problems: what makes the data unusable for training (exit code 1).
        warnings: what training survives but you should look at.
        notes: how the check ran.
        seconds: wall time.
    """

    source: str
    layout: str
    quick: bool
    root: str
    class_names: list[str]
    splits: list[str]
    images: int = 0
    readable: int = 0
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    imbalance: float | None = None
    empty_classes: list[str] = field(default_factory=list)
    unreadable: list[dict[str, Any]] = field(default_factory=list)
    ignored: list[dict[str, str]] = field(default_factory=list)
    modes: dict[str, int] = field(default_factory=dict)
    formats: dict[str, int] = field(default_factory=dict)
    sizes: dict[str, Any] = field(default_factory=dict)
    tiny_side: int = DEFAULT_MIN_SIDE
    tiny: list[dict[str, Any]] = field(default_factory=list)
    exact: list[dict[str, Any]] = field(default_factory=list)
    near: list[dict[str, Any]] = field(default_factory=list)
    near_distance: int | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def usable(self) -> bool:
        """True when training can run on this data (possibly with warnings)."""
        return not self.problems

    @property
    def leakage(self) -> list[dict[str, Any]]:
        """Duplicate groups (exact and near) that span more than one split."""
        return [g for g in self.exact + self.near if len(g["splits"]) > 1]

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["usable"] = self.usable
        values["seconds"] = round(self.seconds, 2)
        return values


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


# ----------------------------------------------------------------------------- examining


def examine_files(
    paths: Sequence[str], *, decode: bool, workers: int | None = None, progress: bool = False
) -> list[FileFacts]:
    """:func:`examine_file` for each path, in order, in a pool of processes.

    Raises:
        DataError: a worker process died (out of memory, or a crash inside a decoder).
    """
    from tqdm.auto import tqdm

    job = partial(examine_file, decode=decode)
    count = _worker_count(workers, len(paths))
    bar = tqdm(
        total=len(paths),
        desc="checking",
        unit="img",
        leave=False,
        dynamic_ncols=True,
        file=sys.stderr,
        disable=None if progress else True,
    )
    try:
        if count == 0:
            return [_tick(bar, job(path)) for path in paths]
        chunk = max(1, min(64, len(paths) // (count * 8)))
        try:
            with ProcessPoolExecutor(count) as pool:
                return [_tick(bar, facts) for facts in pool.map(job, paths, chunksize=chunk)]
        except BrokenProcessPool:
            raise DataError(
                "a checking process died (out of memory, or a crash inside an image decoder); "
                "run again with --workers 0 to see which file stops it"
            ) from None
    finally:
        bar.close()


def _tick(bar: Any, facts: FileFacts) -> FileFacts:
    bar.update()
    return facts


def _worker_count(workers: int | None, files: int) -> int:
    """Processes to use: starting a pool costs more than examining a few hundred files."""
    if workers is not None:
        return workers
    if files < 500:
        return 0
    return min(os.cpu_count() or 1, 8)


# ----------------------------------------------------------------------------- analysis


@dataclass
class _Row:
    """One listed file: where it sits and what examining it found."""

    path: str  # relative to the report's root
    split: str
    label: str
    facts: FileFacts

    @property
    def ok(self) -> bool:
        return self.facts.problem is None

    def where(self) -> dict[str, str]:
        return {"path": self.path, "split": self.split, "class": self.label}


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


def _duplicate_groups(
    rows: Sequence[_Row],
    kind: str,
    sets: Iterable[Iterable[int]] | None = None,
    distance: dict[int, int] | None = None,
) -> list[dict[str, Any]]:
    """Groups of duplicate files, each described for the report.

    With ``sets`` None, groups are the readable files sharing a byte digest (``exact``);
    otherwise each set of row indices is a group (``near``, with ``distance[i]`` its
    largest hash distance). A group is ``conflicting`` when its files carry more than one
    class, and leaks when it spans more than one split.

    Returns:
        ``{kind, distance, classes, splits, conflicting, files: [{path, split, class}]}``
        per group, largest first.
    """
    if sets is None:
        by_digest: dict[str, list[int]] = {}
        for index, row in enumerate(rows):
            if row.ok:
                by_digest.setdefault(row.facts.digest, []).append(index)
        sets = [members for members in by_digest.values() if len(members) > 1]
    groups = []
    for number, members in enumerate(sets):
        files = [rows[i] for i in sorted(members)]
        classes = sorted({row.label for row in files})
        splits = [s for s in ("train", "val", "test") if any(row.split == s for row in files)]
        groups.append(
            {
                "kind": kind,
                "distance": (distance or {}).get(number, 0),
                "classes": classes,
                "splits": splits,
                "conflicting": len(classes) > 1,
                "files": [row.where() for row in files],
            }
        )
    return sorted(groups, key=lambda g: (-len(g["files"]), g["files"][0]["path"]))


def _near_groups(report: AuditReport, rows: list[_Row], max_distance: int) -> list[dict[str, Any]]:
    """Groups of readable files with different bytes whose perceptual hashes are close.

    Files with the same hash form one node (blank images collapse into one); nodes within
    ``max_distance`` bits are linked, and each connected set holding at least two
    different files (digests) is a group.
    """
    usable = [i for i, row in enumerate(rows) if row.ok and row.facts.phash]
    nodes: dict[str, list[int]] = {}
    for index in usable:
        nodes.setdefault(rows[index].facts.phash, []).append(index)
    if len(nodes) > NEAR_SEARCH_LIMIT:
        report.notes.append(
            f"near duplicates not searched: {len(nodes):,} distinct images is over "
            f"{NEAR_SEARCH_LIMIT:,}; exact duplicates were"
        )
        return []
    keys = list(nodes)
    hashes = np.array([int(key, 16) for key in keys], dtype=np.uint64)
    parent = list(range(len(keys)))
    widest: dict[int, int] = {}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, bits in close_pairs(hashes, max_distance):
        a, b = root(i), root(j)
        if a != b:
            parent[b] = a
            widest[a] = max(widest.get(a, 0), widest.pop(b, 0), bits)
        else:
            widest[a] = max(widest.get(a, 0), bits)
    components: dict[int, list[int]] = {}
    for node in range(len(keys)):
        components.setdefault(root(node), []).extend(nodes[keys[node]])
    sets, distance = [], {}
    for top, members in components.items():
        if len({rows[i].facts.digest for i in members}) > 1:  # copies of one file are `exact`
            distance[len(sets)] = widest.get(top, 0)
            sets.append(members)
    return _duplicate_groups(rows, "near", sets, distance)


def close_pairs(hashes: np.ndarray, max_distance: int) -> list[tuple[int, int, int]]:
    """``(i, j, bits)``, ``i < j``, for each pair of 64-bit hashes at most ``max_distance`` apart.

    Pigeonhole search: cut the 64 bits into ``max_distance + 1`` chunks; two hashes that
    differ in at most ``max_distance`` bits agree exactly on at least one chunk, so only
    hashes sharing a chunk value are compared. Comparing all pairs took 30 s for CIFAR-10's
    60,000 images; this takes well under one.

    Args:
        hashes: uint64 ``[n]``.
        max_distance: 0 to 63 bits.

    Returns:
        Each pair once, sorted.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    edges = np.linspace(0, 64, max_distance + 2).astype(int)  # chunk boundaries in bits
    found: dict[tuple[int, int], int] = {}
    for low, high in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True):
        keys = (hashes >> np.uint64(low)) & np.uint64((1 << (high - low)) - 1)
        order = np.argsort(keys, kind="stable")
        ordered = keys[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        ends = np.r_[starts[1:], len(ordered)]
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            if end - start > 1:
                found.update(_pairs_within(hashes, order[start:end], max_distance))
    return sorted((i, j, bits) for (i, j), bits in found.items())


def _pairs_within(
    hashes: np.ndarray, members: np.ndarray, max_distance: int, block: int = 256
) -> dict[tuple[int, int], int]:
    """All close pairs among ``members`` (indices into ``hashes``), a block of rows at a time."""
    subset = hashes[members]
    pairs: dict[tuple[int, int], int] = {}
    for start in range(0, len(subset), block):
        bits = _popcount(subset[start : start + block, None] ^ subset[None, :])  # [b, k]
        rows, cols = np.nonzero(bits <= max_distance)
        keep = start + rows < cols
        firsts, seconds = members[start + rows[keep]].tolist(), members[cols[keep]].tolist()
        for a, b, d in zip(firsts, seconds, bits[rows[keep], cols[keep]].tolist(), strict=True):
            pairs[(min(a, b), max(a, b))] = d
    return pairs


def _popcount(values: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # NumPy >= 2.0
        return np.bitwise_count(values).astype(np.int64)
    as_bytes = values.view(np.uint8).reshape(*values.shape, 8)
    return np.unpackbits(as_bytes, axis=-1).sum(axis=-1, dtype=np.int64)


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


# ----------------------------------------------------------------------------- output


def summary_line(report: AuditReport) -> str:
    """One line for the training log: counts, classes, and what needs a look."""
    counts = (
        f"{report.readable:,}/{report.images:,} images readable, {len(report.class_names)} classes"
    )
    balance = f", imbalance {report.imbalance:.2f}" if report.imbalance is not None else ""
    kind = "quick check" if report.quick else "check"
    verdict = "usable" if report.usable else "NOT usable"
    issues = f"{len(report.problems)} problem(s), {len(report.warnings)} warning(s)"
    return f"data {kind}: {counts}{balance}; {verdict}: {issues} ({report.seconds:.1f}s)"


def format_report(report: AuditReport) -> str:
    """The human summary ``cnnkit check`` prints (long lists cut at :data:`SHOWN` entries)."""
    splits = "/".join(report.splits) or "no images"
    layout = {"folder": "one folder per class", "split folders": f"split folders {splits}"}.get(
        report.layout, f"CSV file, splits {splits}"
    )
    lines = [f"dataset: {report.source} ({layout})"]
    other = f"; {len(report.ignored):,} other entries ignored" if report.ignored else ""
    lines.append(
        f"images: {report.images:,} files, {report.readable:,} readable, "
        f"{len(report.unreadable):,} unreadable{other}"
    )
    lines += _class_table(report)
    lines.append("modes: " + _pairs(report.modes))
    lines.append("formats: " + _pairs(report.formats))
    if report.sizes:
        s = report.sizes
        lines.append(
            f"sizes: smallest {s['smallest']}, median {s['median']}, largest {s['largest']}; "
            f"commonest {_pairs(s['common'])}"
        )
        lines.append(f"shorter side (px): {_pairs(s['shorter_side'])}")
    lines += _listed(
        f"unreadable files ({len(report.unreadable)})",
        report.unreadable,
        lambda e: f"{e['path']}: {e['problem']}: {e['reason']}",
    )
    lines += _listed(
        f"ignored ({len(report.ignored)})", report.ignored, lambda e: f"{e['path']}: {e['reason']}"
    )
    lines += _listed(
        f"tiny images, shorter side under {report.tiny_side} px ({len(report.tiny)})",
        report.tiny,
        lambda e: f"{e['path']}: {e['width']}x{e['height']}",
    )
    lines += _listed(f"exact duplicates ({len(report.exact)} groups)", report.exact, _group_line)
    if report.near_distance is None:
        lines.append("near duplicates: not searched (quick check)")
    else:
        lines += _listed(
            f"near duplicates, perceptual hash within {report.near_distance} bits "
            f"({len(report.near)} groups)",
            report.near,
            _group_line,
        )
    lines += [f"problem: {p}" for p in report.problems] + [f"warning: {w}" for w in report.warnings]
    verdict = "usable for training" if report.usable else "NOT usable for training"
    lines.append(
        f"verdict: {verdict} ({len(report.problems)} problems, {len(report.warnings)} warnings); "
        f"checked in {report.seconds:.1f}s, {'; '.join(report.notes)}"
    )
    return "\n".join(lines)


def _class_table(report: AuditReport) -> list[str]:
    balance = "n/a (an empty class)" if report.imbalance is None else f"{report.imbalance:.2f}"
    lines = [
        f"classes: {len(report.class_names)}; imbalance {balance} (largest/smallest training class)"
    ]
    width = max([len(name) for name in report.class_names] + [5])
    splits = list(report.counts)
    lines.append("  " + f"{'class':<{width}}" + "".join(f"  {s:>6}" for s in splits))
    for name in report.class_names:
        flag = "  <- empty" if name in report.empty_classes else ""
        cells = "".join(f"  {report.counts[s][name]:>6,}" for s in splits)
        lines.append(f"  {name:<{width}}{cells}{flag}")
    return lines


def _pairs(counts: dict[str, int]) -> str:
    return ", ".join(f"{key} {n:,}" for key, n in counts.items()) or "none"


def _listed(title: str, entries: list[Any], show: Any) -> list[str]:
    if not entries:
        return [f"{title.rsplit(' (', 1)[0]}: none"]
    lines = [f"{title}:"] + [f"  {show(entry)}" for entry in entries[:SHOWN]]
    if len(entries) > SHOWN:
        lines.append(
            f"  ... and {len(entries) - SHOWN:,} more (all are in the --json / --out report)"
        )
    return lines


def _group_line(group: dict[str, Any]) -> str:
    if len(group["splits"]) > 1:
        tag = "LEAKAGE " + "/".join(group["splits"])
    elif group["conflicting"]:
        tag = "CONFLICTING LABELS"
    else:
        tag = "same class"
    tag += f", distance {group['distance']}" if group["kind"] == "near" else ""
    return f"[{tag}] " + "  ==  ".join(f["path"] for f in group["files"])


def write_json(report: AuditReport, path: str | os.PathLike[str]) -> None:
    """Write ``report.to_dict()`` as indented JSON (temp file, then rename).

    Raises:
        UsageError: the file cannot be written there (missing folder, no permission).
    """
    path = Path(path)
    try:
        atomic.write_json(path, report.to_dict())
    except OSError as error:
        raise UsageError(f"cannot write the report to {path}: {error.strerror or error}") from None

"""Image classification data from files on disk: class-per-folder trees and CSV lists.

Scanning (:func:`scan_folder`, :func:`read_csv`) only lists files and labels; nothing is
decoded until :class:`ImageFileDataset` asks :func:`load_image` for one image. A file that
cannot be decoded is skipped with a warning and dropped by :func:`collate_skip_bad`, so
one bad photo never stops a run.

Supported layouts::

    root/<class>/*.jpg                        one tree, split here by fraction
    root/train/<class>/*.jpg                  split folders; val aliases: valid, validation
    root/val/<class>/*.jpg   root/test/<class>/*.jpg
    labels.csv with columns path,label[,split]
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from cnnkit.errors import DataError, UsageError, unknown_name

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

PATH_COLUMNS: tuple[str, ...] = ("path", "file", "filename", "image")
LABEL_COLUMNS: tuple[str, ...] = ("label", "class", "target")

# Zip archives made on macOS carry a __MACOSX/ folder of resource forks; it is never a class.
_HIDDEN_NAMES = frozenset({"__MACOSX"})

_HOW_TO_GIVE_DATA = "give a folder with one sub-folder of images per class, or a CSV file"


LOAD_ERROR_KINDS: tuple[str, ...] = (
    "zero-bytes", "not-an-image", "truncated", "corrupt", "decompression-bomb", "missing", "unreadable",
)  # fmt: skip
"""What :attr:`ImageLoadError.kind` can be, for reports that group bad files."""


class ImageLoadError(DataError):
    """An image file that cannot be decoded.

    Attributes:
        path: the file.
        reason: short reason, e.g. ``zero bytes`` or ``truncated or corrupt: ...``.
        kind: one of :data:`LOAD_ERROR_KINDS`, e.g. ``truncated``.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str, kind: str = "corrupt") -> None:
        super().__init__(f"cannot load image {os.fspath(path)}: {reason}")
        self.path = os.fspath(path)
        self.reason = reason
        self.kind = kind


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


# ----------------------------------------------------------------------------- splitting


def stratified_split(
    labels: list[int], fractions: dict[str, float], seed: int
) -> dict[str, list[int]]:
    """Split indices per class so that every split keeps the class balance.

    Each class with ``n`` items gives ``round(n * fraction)`` of them to each named split,
    at least 1 when ``fraction > 0`` and ``n >= 2``, and always keeps at least one for
    ``train``. Which items go where is a seeded shuffle per class.

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


# ----------------------------------------------------------------------------- folders


def scan_folder(
    root: str | os.PathLike[str], *, val_fraction: float, test_fraction: float, seed: int,
    strict: bool = True,
) -> FileDataset:
    """List the images of a class-per-folder tree and split them.

    If ``root`` has a ``train/`` folder next to any of ``val/``, ``valid/``,
    ``validation/`` or ``test/`` (or a ``train/`` holding class folders), those folders are
    the splits; classes are the class folders of ``train``. Otherwise ``root`` itself holds
    one folder per class. A split asked for by a fraction > 0 but absent on disk is carved
    out of train, stratified by class (see :func:`stratified_split`); a split present on
    disk wins over its fraction. Class folders may hold sub-folders; their images count
    for the class. Files are sorted, so a scan is deterministic.

    Args:
        root: the data folder.
        val_fraction: share of each class held out for validation when there is no val
            folder (0 for none).
        test_fraction: share of each class held out for testing when there is no test
            folder (0 for none).
        seed: seed of the held-out selection.
        strict: False lists empty class folders and single-class trees instead of raising
            (for ``cnnkit check``, which reports them with everything else).

    Returns:
        The classes, the non-empty splits and the skipped entries.

    Raises:
        DataError: root missing, no class folders, an empty class folder or fewer than two
            classes (only if ``strict``), a val/test class unknown to train, or two folders
            for the same split.
        UsageError: fractions out of range.
    """
    root_path = Path(os.path.abspath(os.fspath(root)))
    if not root_path.is_dir():
        raise DataError(f"data folder not found: {root_path}; {_HOW_TO_GIVE_DATA}")
    ignored: list[tuple[str, str]] = []
    split_dirs = _find_split_dirs(root_path, ignored)
    if split_dirs is None:
        class_names = _class_dirs(root_path, ignored)
        files = _scan_classes(root_path, class_names, ignored, strict=strict)
        splits = {"train": files}
    else:
        class_names, splits = _scan_split_dirs(split_dirs, ignored, strict)
    if strict:
        _require_two_classes(class_names, root_path)
    splits = _carve_missing(splits, val_fraction, test_fraction, seed)
    return FileDataset(class_names, splits, ignored, str(root_path))


def _scan_split_dirs(
    split_dirs: dict[str, Path], ignored: list[tuple[str, str]], strict: bool = True
) -> tuple[list[str], dict[str, FileList]]:
    """Class names (from train) and the files of each split folder."""
    class_names = _class_dirs(split_dirs["train"], ignored)
    splits = {"train": _scan_classes(split_dirs["train"], class_names, ignored, strict=strict)}
    for name, folder in split_dirs.items():
        if name == "train":
            continue
        # An unlabelled val/test folder (images, no class folders) is listed and skipped.
        found = _class_dirs(folder, ignored, require=False)
        unknown = sorted(set(found) - set(class_names))
        if unknown:
            raise DataError(
                f"class folder(s) {', '.join(unknown)} in {folder} have no match in "
                f"{split_dirs['train']}; every {name} class needs training images"
            )
        splits[name] = _scan_classes(folder, class_names, ignored, present=found, strict=strict)
    return class_names, splits


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name in _HIDDEN_NAMES


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _visible_entries(folder: Path) -> list[os.DirEntry[str]]:
    """Non-hidden entries of ``folder``, sorted by name."""
    with os.scandir(folder) as entries:
        return sorted((e for e in entries if not _is_hidden(e.name)), key=lambda e: e.name)


def _find_split_dirs(root: Path, ignored: list[tuple[str, str]]) -> dict[str, Path] | None:
    """Canonical split name -> folder, or None when ``root`` is a single class tree."""
    dirs = {e.name: Path(e.path) for e in _visible_entries(root) if e.is_dir()}
    found: dict[str, Path] = {}
    for name, folder in dirs.items():
        split = SPLIT_ALIASES.get(name.lower())
        if split is None:
            continue
        if split in found:
            raise DataError(
                f"both {found[split]} and {folder} look like the {split} split; "
                "keep one and rename or remove the other"
            )
        found[split] = folder
    if "train" not in found:
        return None
    # A lone train/ is a split layout only if it holds class folders; otherwise it is a
    # class that happens to be called "train".
    if len(found) == 1 and not any(e.is_dir() for e in _visible_entries(found["train"])):
        return None
    for name, folder in dirs.items():
        if name.lower() not in SPLIT_ALIASES:
            ignored.append((str(folder), "not a split folder (train, val, test)"))
    for entry in _visible_entries(root):
        if not entry.is_dir():
            ignored.append((entry.path, "file outside the split folders"))
    return {name: found[name] for name in SPLITS if name in found}


def _class_dirs(folder: Path, ignored: list[tuple[str, str]], require: bool = True) -> list[str]:
    """Sorted class folder names in ``folder``; files beside them go to ``ignored``."""
    names = []
    for entry in _visible_entries(folder):
        if entry.is_dir():
            names.append(entry.name)
        else:
            ignored.append((entry.path, "file outside any class folder"))
    if not names and require:
        raise DataError(f"no class folders in {folder}; {_HOW_TO_GIVE_DATA}")
    return names


def _scan_classes(
    folder: Path,
    class_names: list[str],
    ignored: list[tuple[str, str]],
    present: list[str] | None = None,
    strict: bool = True,
) -> FileList:
    """Images of each class folder under ``folder``; ``present`` limits which exist there."""
    files = FileList()
    for label, name in enumerate(class_names):
        if present is not None and name not in present:
            continue
        paths = list(_walk_images(folder / name, ignored))
        if not paths and strict:
            raise DataError(
                f"class folder {folder / name} has no images "
                f"({' '.join(sorted(IMAGE_EXTENSIONS))}); add images or remove the folder"
            )
        files.paths.extend(paths)
        files.labels.extend([label] * len(paths))
    return files


def _walk_images(folder: Path, ignored: list[tuple[str, str]]) -> Iterator[str]:
    """Image paths under ``folder`` (recursively, sorted); other files go to ``ignored``."""
    for entry in _visible_entries(folder):
        if entry.is_dir():
            yield from _walk_images(Path(entry.path), ignored)
        elif _is_image(entry.name):
            yield entry.path
        else:
            ignored.append((entry.path, "not an image file (by its extension)"))


def _require_two_classes(class_names: list[str], where: Path | str) -> None:
    if len(class_names) < 2:
        found = ", ".join(class_names) or "none"
        raise DataError(
            f"{where} has {len(class_names)} class(es) ({found}); a classifier needs at "
            "least 2: add one folder (or label) per class"
        )


# ----------------------------------------------------------------------------- CSV


def read_csv(
    path: str | os.PathLike[str], *, val_fraction: float, test_fraction: float, seed: int
) -> FileDataset:
    """Read a CSV list of image files and their labels.

    The header names a path column (``path``, ``file``, ``filename`` or ``image``), a label
    column (``label``, ``class`` or ``target``) and optionally a ``split`` column (``train``,
    ``val``, ``valid``, ``validation`` or ``test``); names are matched case-insensitively.
    Relative paths are relative to the CSV's folder. Labels are strings; class names are
    the sorted distinct labels. Rows keep the CSV's order. Splits absent from the CSV but
    asked for by a fraction > 0 are carved out of train as in :func:`scan_folder`.

    Args:
        path: the CSV file.
        val_fraction: share of each class held out for validation when no row says ``val``.
        test_fraction: share of each class held out for testing when no row says ``test``.
        seed: seed of the held-out selection.

    Returns:
        The dataset; ``root`` is the CSV's folder and ``ignored`` is empty.

    Raises:
        DataError: CSV missing or empty, a required column missing, a row with a missing
            file, empty label or unknown split (the message names the CSV line), fewer than
            two classes, or a val/test label with no train rows.
    """
    csv_path = Path(os.path.abspath(os.fspath(path)))
    if not csv_path.is_file():
        raise DataError(f"CSV file not found: {csv_path}; {_HOW_TO_GIVE_DATA}")
    rows = list(_read_rows(csv_path))
    label_names = sorted({label for _, _, label, _ in rows})
    _require_two_classes(label_names, csv_path)
    index = {name: i for i, name in enumerate(label_names)}
    splits: dict[str, FileList] = {}
    for _, file_path, label, split in rows:
        files = splits.setdefault(split, FileList())
        files.paths.append(file_path)
        files.labels.append(index[label])
    _require_train_labels(rows, csv_path)
    splits = _carve_missing(splits, val_fraction, test_fraction, seed)
    return FileDataset(label_names, splits, [], str(csv_path.parent))


def _read_rows(csv_path: Path) -> Iterator[tuple[int, str, str, str]]:
    """``(line, absolute file path, label, split)`` for each non-blank row."""
    # utf-8-sig: spreadsheets often write a byte-order mark before the header.
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or not any(cell.strip() for cell in header):
            raise DataError(
                f"CSV file {csv_path} is empty; it needs a header row such as path,label"
            )
        columns = _find_columns(header, csv_path)
        count = 0
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            count += 1
            yield _parse_row(row, columns, reader.line_num, csv_path)
        if count == 0:
            raise DataError(f"CSV file {csv_path} has a header but no rows of images")


def _find_columns(header: list[str], csv_path: Path) -> dict[str, int | None]:
    """Column index of ``path``, ``label`` and (or None) ``split``."""
    names = [cell.strip().lower() for cell in header]

    def first(options: tuple[str, ...], role: str) -> int:
        for option in options:
            if option in names:
                return names.index(option)
        raise DataError(
            f"CSV file {csv_path} has no {role} column: found {', '.join(names)}; "
            f"expected one of {', '.join(options)}"
        )

    return {
        "path": first(PATH_COLUMNS, "path"),
        "label": first(LABEL_COLUMNS, "label"),
        "split": names.index("split") if "split" in names else None,
    }


def _parse_row(
    row: list[str], columns: dict[str, int | None], line: int, csv_path: Path
) -> tuple[int, str, str, str]:
    def cell(column: int | None) -> str:
        return row[column].strip() if column is not None and column < len(row) else ""

    where = f"{csv_path} line {line}"
    file_name, label = cell(columns["path"]), cell(columns["label"])
    if not file_name or not label:
        raise DataError(f"{where}: empty path or label; every row needs both")
    file_path = os.path.normpath(os.path.join(csv_path.parent, file_name))
    if not os.path.isfile(file_path):
        raise DataError(
            f"{where}: file not found: {file_path}; paths are relative to the CSV's folder"
        )
    split = "train"
    if columns["split"] is not None:
        split = SPLIT_ALIASES.get(cell(columns["split"]).lower(), "")
        if not split:
            raise DataError(
                f"{where}: unknown split {cell(columns['split'])!r}; "
                f"valid splits: {', '.join(SPLIT_ALIASES)}"
            )
    return line, file_path, label, split


def _require_train_labels(rows: list[tuple[int, str, str, str]], csv_path: Path) -> None:
    train_labels = {label for _, _, label, split in rows if split == "train"}
    for line, _, label, split in rows:
        if split != "train" and label not in train_labels:
            raise DataError(
                f"{csv_path} line {line}: label {label!r} ({split}) has no train rows; "
                "every class needs training images"
            )


# ----------------------------------------------------------------------------- fingerprint


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


# ----------------------------------------------------------------------------- decoding

_truncation_lock = threading.Lock()
_strict_loads = 0
_saved_truncated_flag = False


@contextmanager
def _strict_truncation() -> Iterator[None]:
    """Make PIL raise on truncated files even if someone set LOAD_TRUNCATED_IMAGES.

    The flag is a PIL module global; a counter lets concurrent loads in threads share one
    override and restores the caller's setting when the last load ends.
    """
    global _strict_loads, _saved_truncated_flag
    with _truncation_lock:
        if _strict_loads == 0:
            _saved_truncated_flag = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = False
        _strict_loads += 1
    try:
        yield
    finally:
        with _truncation_lock:
            _strict_loads -= 1
            if _strict_loads == 0:
                ImageFile.LOAD_TRUNCATED_IMAGES = _saved_truncated_flag


SKIP_LOG_ENV = "CNNKIT_SKIP_LOG"
"""Environment variable naming the JSON-lines file :func:`skipped_files_log` appends to."""


@contextmanager
def skipped_files_log(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Record every image that :func:`load_image` fails to load while inside, in any process.

    Inside a training run that is exactly the files the loaders skip, whichever loader
    decodes them (:class:`ImageFileDataset`, a decode cache, statistics). Each failure
    appends one JSON line ``{"path": ..., "reason": ..., "kind": ...}`` to ``path`` (lines
    may repeat; see :func:`read_skipped_files`). DataLoader workers decode in other
    processes, which may be spawned rather than forked, so the file name travels in an
    environment variable they inherit; the caller's value is restored on exit.
    """
    path = Path(os.path.abspath(os.fspath(path)))
    previous = os.environ.get(SKIP_LOG_ENV)
    os.environ[SKIP_LOG_ENV] = str(path)
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop(SKIP_LOG_ENV, None)
        else:
            os.environ[SKIP_LOG_ENV] = previous


def read_skipped_files(path: str | os.PathLike[str]) -> dict[str, dict[str, str]]:
    """``path -> {"reason", "kind"}`` from a :func:`skipped_files_log` file (empty if none)."""
    found: dict[str, dict[str, str]] = {}
    if not os.path.isfile(path):
        return found
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                entry = json.loads(line)
            except ValueError:  # a line cut short by a worker killed mid-write
                continue
            found.setdefault(entry["path"], {"reason": entry["reason"], "kind": entry["kind"]})
    return found


def _log_failure(error: ImageLoadError) -> None:
    log = os.environ.get(SKIP_LOG_ENV)
    if not log:
        return
    line = json.dumps({"path": error.path, "reason": error.reason, "kind": error.kind}) + "\n"
    try:
        # One short write in append mode: lines from several processes do not interleave.
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(line)
    except OSError:  # the list is a convenience; failing to write it must not stop training
        pass


def load_image(path: str | os.PathLike[str], mode: str) -> Image.Image:
    """Decode one image file into an 8-bit ``L`` or ``RGB`` image, upright.

    EXIF orientation is applied; transparent pixels (RGBA, LA, palette or tRNS
    transparency) are composited over white; 16-bit and 32-bit greyscale is scaled to
    8 bits rather than clipped; CMYK and other modes are converted.

    Args:
        path: the image file.
        mode: ``"L"`` (greyscale) or ``"RGB"``.

    Returns:
        A fully loaded image of the given mode (the file is closed).

    Raises:
        ImageLoadError: the file is missing, empty, not an image, truncated or corrupt, or
            a decompression bomb (more pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` allows);
            inside :func:`skipped_files_log` the failure is also recorded there.
        UsageError: ``mode`` is not ``L`` or ``RGB``.
    """
    if mode not in ("L", "RGB"):
        raise unknown_name("image mode", mode, ["L", "RGB"])
    path = os.fspath(path)
    try:
        if os.path.getsize(path) == 0:
            raise ImageLoadError(path, "zero bytes", "zero-bytes")
        with _strict_truncation(), Image.open(path) as image:
            refuse_bomb(path, image)
            image.load()
            return to_mode(_upright(image), mode)
    except ImageLoadError as error:
        _log_failure(error)
        raise
    except Exception as error:
        bad = decode_error(path, error)
        _log_failure(bad)
        raise bad from error


def refuse_bomb(path: str, image: Image.Image) -> None:
    """Raise for an opened (not yet decoded) image of more than ``MAX_IMAGE_PIXELS`` pixels.

    PIL itself only warns between 1x and 2x its limit and raises above 2x; a file that
    size is refused here before any memory goes to its pixels.
    """
    limit = Image.MAX_IMAGE_PIXELS
    if limit and image.width * image.height > limit:
        raise ImageLoadError(
            path, f"decompression bomb: {image.width}x{image.height} is more than "
            f"PIL.Image.MAX_IMAGE_PIXELS ({limit:,}) pixels", "decompression-bomb",
        )  # fmt: skip


def decode_error(path: str, error: Exception) -> ImageLoadError:
    """The :class:`ImageLoadError` (reason and kind) for an exception raised while decoding."""
    if isinstance(error, Image.DecompressionBombError):
        return ImageLoadError(path, f"decompression bomb: {error}", "decompression-bomb")
    if isinstance(error, UnidentifiedImageError):
        return ImageLoadError(path, "not an image (no decoder recognises it)", "not-an-image")
    if isinstance(error, FileNotFoundError):
        return ImageLoadError(path, "file not found", "missing")
    if isinstance(error, OSError) and error.errno is not None:  # the OS refused: a folder, permissions
        return ImageLoadError(path, f"cannot read the file: {error.strerror or error}", "unreadable")
    if isinstance(error, OSError):  # PIL's decoders report truncated and broken data as OSError
        kind = "truncated" if "truncat" in str(error).lower() else "corrupt"
        return ImageLoadError(path, f"truncated or corrupt: {error}", kind)
    # plugins also raise SyntaxError, ValueError, struct.error, even MemoryError
    return ImageLoadError(path, f"cannot decode: {type(error).__name__}: {error}", "corrupt")


def _upright(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block should not cost the whole image
        return image


def to_mode(image: Image.Image, mode: str) -> Image.Image:
    """Any PIL mode as 8-bit ``L`` or ``RGB``: transparency over white, 16-bit scaled."""
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        image = _over_white(image)
    elif image.mode.startswith("I") or image.mode == "F":
        image = _to_8bit_grey(image)
    elif image.mode not in ("L", "RGB"):
        image = image.convert("RGB")  # CMYK, YCbCr, P, 1: PIL converts all of them to RGB
    return image if image.mode == mode else image.convert(mode)


def _over_white(image: Image.Image) -> Image.Image:
    """Composite a transparent image over white: transparent pixels carry no colour of
    their own, and black (what a plain convert gives) misleads a classifier."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_8bit_grey(image: Image.Image) -> Image.Image:
    """Scale 16-bit (``I;16*``), 32-bit (``I``) or float (``F``) greyscale to ``L``.

    PIL's own convert clips at 255, which turns most 16-bit photos white. ``I;16`` is
    divided by 257 (65535 -> 255); ``I`` and ``F`` are scaled by their range: values up to
    255 (or up to 1.0 for ``F``) are taken as already 8-bit (or unit) data, up to 65535 as
    16-bit, anything larger by the image's maximum.
    """
    if image.mode.startswith("I;16"):
        full_scale = 65535.0
    else:
        low, high = image.getextrema()
        if image.mode == "F" and 0.0 <= low and high <= 1.0:
            full_scale = 1.0
        elif high <= 255:
            full_scale = 255.0
        elif high <= 65535:
            full_scale = 65535.0
        else:
            full_scale = float(high)
    wide = image.convert("F")
    return wide.point(lambda v: v * (255.0 / full_scale)).convert("L")


# ----------------------------------------------------------------------------- torch dataset


class ImageFileDataset(torch.utils.data.Dataset):
    """Images decoded on demand from a list of files.

    ``dataset[i]`` is ``(transform(image), label)``, or None when the file cannot be
    decoded: a warning names the file and reason once per file (per process), and
    :func:`collate_skip_bad` drops the None. ``bad_files`` collects ``path -> reason`` for
    files found bad in this process (with ``num_workers=0``, all of them); inside
    :func:`skipped_files_log` every process also records them in one file.

    Args:
        paths: image files.
        labels: class index of each file.
        transform: PIL image -> tensor (None: return the PIL image).
        mode: ``"L"`` or ``"RGB"``, see :func:`load_image`.
    """

    def __init__(
        self,
        paths: Sequence[str],
        labels: Sequence[int],
        transform: Callable[[Image.Image], Any] | None = None,
        mode: str = "RGB",
    ) -> None:
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        if mode not in ("L", "RGB"):
            raise unknown_name("image mode", mode, ["L", "RGB"])
        self.paths = list(paths)
        self.labels = [int(label) for label in labels]
        self.transform = transform
        self.mode = mode
        self.bad_files: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Any, int] | None:
        path = self.paths[index]
        try:
            image = load_image(path, self.mode)
        except ImageLoadError as error:
            if path not in self.bad_files:
                self.bad_files[path] = error.reason
                warnings.warn(f"skipping {path}: {error.reason}", RuntimeWarning, stacklevel=2)
            return None
        sample = self.transform(image) if self.transform is not None else image
        return sample, self.labels[index]


def collate_skip_bad(
    batch: list[tuple[torch.Tensor, int] | None],
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Collate ``(image, label)`` samples, dropping the None left by undecodable files.

    Returns:
        ``(images [B, ...], labels int64 [B])`` with B the number of good samples, or None
        when every sample of the batch was bad (the training loop skips it).
    """
    good = [sample for sample in batch if sample is not None]
    if not good:
        return None
    images = torch.stack([image for image, _ in good])
    labels = torch.tensor([label for _, label in good], dtype=torch.long)
    return images, labels

"""Listing a class-per-folder tree: :func:`scan_folder`.

This module owns how a folder on disk becomes a :class:`~cnnkit.data.folder.FileDataset`:
finding split folders (``train/``, ``val/`` and its aliases, ``test/``) or treating the
folder as one tree of class folders, walking each class folder for image files (by
extension, hidden entries and ``__MACOSX`` skipped silently), recording everything else
as ignored, and the errors a wrong layout gets. Nothing is decoded. :func:`walk_files` is
the one recursive listing of a folder's files (symbolic links followed, loops cut), which
``cnnkit predict`` uses too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from cnnkit.data.folder.listing import (
    _HOW_TO_GIVE_DATA,
    IMAGE_EXTENSIONS,
    SPLIT_ALIASES,
    SPLITS,
    FileDataset,
    FileList,
    _carve_missing,
    _require_two_classes,
)
from cnnkit.errors import DataError

# Zip archives made on macOS carry a __MACOSX/ folder of resource forks; it is never a class.
# _review/ holds the images `cnnkit check --labels --fix-to` set aside for a person to judge:
# training on the cleaned copy must not take it for a class.
_HIDDEN_NAMES = frozenset({"__MACOSX", "_review"})


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
    for path in walk_files(folder, ignored):
        if _is_image(path):
            yield path
        else:
            ignored.append((path, "not an image file (by its extension)"))


def walk_files(folder: str | os.PathLike[str], ignored: list[tuple[str, str]] | None = None) -> Iterator[str]:
    """Every file under ``folder``, recursively, sorted by name within each folder: the one
    listing of a folder's files that training, ``eval``, ``check`` and ``predict`` share.

    Hidden entries (``.name``), ``__MACOSX`` and ``_review`` are skipped silently, as the
    class folders skip them. Symbolic links are followed, to folders and to files alike
    (a class folder may be a link into another tree). A folder reached a second time
    (a link loop, or two links to one folder) is not listed again; it and a broken link go to
    ``ignored`` as ``(path, reason)``, so a loop ends and no file is counted twice.
    """
    yield from _walk(Path(folder), [] if ignored is None else ignored, set())


def _walk(folder: Path, ignored: list[tuple[str, str]], seen: set[str]) -> Iterator[str]:
    real = os.path.realpath(folder)
    if real in seen:
        ignored.append((str(folder), f"a link to {real}, which is listed already (a link loop or a second link)"))
        return
    seen.add(real)
    for entry in _visible_entries(folder):
        if entry.is_dir():  # follows a link to a folder
            yield from _walk(Path(entry.path), ignored, seen)
        elif entry.is_file():  # follows a link to a file
            yield entry.path
        elif entry.is_symlink():
            ignored.append((entry.path, "a broken symbolic link"))
        else:
            ignored.append((entry.path, "not a regular file"))

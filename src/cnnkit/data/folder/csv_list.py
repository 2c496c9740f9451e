"""Listing a CSV file of image paths and labels: :func:`read_csv`.

This module owns how a ``path,label[,split]`` CSV becomes a
:class:`~cnnkit.data.folder.FileDataset`: the accepted column names
(:data:`PATH_COLUMNS`, :data:`LABEL_COLUMNS`, ``split``), paths relative to the CSV's
folder, and errors that name the CSV line at fault. Nothing is decoded.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path

from cnnkit.data.folder.listing import (
    _HOW_TO_GIVE_DATA,
    SPLIT_ALIASES,
    FileDataset,
    FileList,
    _carve_missing,
    _require_two_classes,
)
from cnnkit.errors import DataError

PATH_COLUMNS: tuple[str, ...] = ("path", "file", "filename", "image")

LABEL_COLUMNS: tuple[str, ...] = ("label", "class", "target")


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

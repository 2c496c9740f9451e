"""Listing a multi-label CSV (several labels per image): :func:`read_multilabel_csv`.

Two layouts, told apart by the header alone (:func:`csv_layout`)::

    path,labels[,split]            labels separated by ";" or whitespace; an empty cell = no label
    cat.jpg,cat;sofa
    empty_room.jpg,

    path,cat,dog,sofa[,split]      the Kaggle layout: one 0/1 column per class
    cat.jpg,1,0,1

A ``path,label`` CSV (the singular column names of :mod:`~cnnkit.data.folder.csv_list`)
stays single-label: :func:`is_multilabel_csv` says False and :func:`~cnnkit.data.folder.read_csv`
reads it. Path columns, relative paths, split names and errors that name the CSV line are
the single-label reader's. Nothing is decoded.

Splits the CSV does not give but a fraction asks for are carved out of train by
:func:`multilabel_split`, a seeded iterative stratification (Sechidis et al., 2011): the
rarest labels are placed first, each image going to the split that still wants most of
that label, and a label left with no training image takes one back from a held-out split.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cnnkit.data.folder.csv_list import LABEL_COLUMNS, PATH_COLUMNS
from cnnkit.data.folder.listing import (
    _HOW_TO_GIVE_DATA,
    SPLIT_ALIASES,
    SPLITS,
    _check_fractions,
    _require_two_classes,
)
from cnnkit.errors import DataError

LABELS_COLUMNS: tuple[str, ...] = ("labels", "tags")
"""Header names of layout (a)'s label-set column (``tags``: Kaggle's Planet CSV)."""

LAYOUT_LABELS = "labels"
LAYOUT_COLUMNS = "columns"


@dataclass
class MultiLabelList:
    """Image paths and their multi-hot targets (``targets[i]`` is ``paths[i]``'s).

    Attributes:
        paths: absolute image paths.
        targets: float32 ``[N, K]``, 1.0 where the image has the label; a row of zeros is
            an image with no label.
    """

    paths: list[str] = field(default_factory=list)
    targets: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0))

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: list[int]) -> MultiLabelList:
        """The entries at ``indices``, in that order."""
        return MultiLabelList([self.paths[i] for i in indices], self.targets[indices])

    def label_indices(self) -> list[list[int]]:
        """Each image's labels as sorted class indices."""
        return [row.nonzero().flatten().tolist() for row in self.targets]


@dataclass
class MultiLabelDataset:
    """A multi-label CSV, read and split.

    Attributes:
        class_names: label index -> name, sorted.
        splits: ``train``/``val``/``test`` -> files; empty splits are left out.
        root: the CSV's folder (relative paths are relative to it).
        layout: :data:`LAYOUT_LABELS` (a label-set column) or :data:`LAYOUT_COLUMNS` (0/1 columns).
        notes: warn-level facts a log should show (labels seen once, images with no label,
            columns with no positive); none of them stops a run.
    """

    class_names: list[str]
    splits: dict[str, MultiLabelList]
    root: str
    layout: str
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Columns:
    path: int
    split: int | None
    labels: int | None  # layout (a): the label-set column
    classes: tuple[tuple[str, int], ...] = ()  # layout (b): (class name, column index)


def csv_layout(header: list[str]) -> str | None:
    """The multi-label layout a CSV header names, or None (single-label or no path column).

    :data:`LAYOUT_LABELS` when a column is named ``labels`` or ``tags``;
    :data:`LAYOUT_COLUMNS` when there is a path column, no label column of either kind, and
    at least two other columns besides ``split`` (the class columns). Names are matched
    case-insensitively, as by :func:`~cnnkit.data.folder.read_csv`.
    """
    names = [cell.strip().lower() for cell in header]
    if not any(name in PATH_COLUMNS for name in names):
        return None
    if any(name in LABELS_COLUMNS for name in names):
        return LAYOUT_LABELS
    if any(name in LABEL_COLUMNS for name in names):
        return None
    return LAYOUT_COLUMNS if len(_class_columns(header)) >= 2 else None


def is_multilabel_csv(path: str | os.PathLike[str]) -> bool:
    """Whether the CSV at ``path`` is multi-label: its header (:func:`csv_layout`) and first row.

    For the 0/1-column layout the first row's class cells must all be 0 or 1 too, so that a
    single-label CSV with extra columns (``path,species,photographer``) is not taken for
    one. False for a ``path,label`` CSV (single-label), a missing or empty file, or a header
    without a path column: :func:`~cnnkit.data.folder.read_csv` then reads it or says what
    is wrong.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            first = next((row for row in reader if any(cell.strip() for cell in row)), None)
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    layout = csv_layout(header) if header is not None else None
    if layout != LAYOUT_COLUMNS or first is None:
        return layout is not None
    return all(_cells(first, column).lower() in _TRUE | _FALSE for _, column in _class_columns(header))


def read_multilabel_csv(
    path: str | os.PathLike[str], *, val_fraction: float, test_fraction: float, seed: int
) -> MultiLabelDataset:
    """Read a multi-label CSV list of images (either layout, see the module docstring).

    Layout (a): labels are separated by ``;`` when any row's cell holds one (so names may
    hold spaces), else by whitespace; repeats within a cell count once. Layout (b): each
    class cell is 0 or 1 (``0.0``/``1.0``, ``true``/``false`` too); the class names are the
    column headers as written. Class names are sorted; rows keep the CSV's order within a
    split. Splits absent from the CSV but asked for by a fraction > 0 are carved out of
    train by :func:`multilabel_split`.

    Args:
        path: the CSV file.
        val_fraction: share of the train rows held out for validation when no row says ``val``.
        test_fraction: share held out for testing when no row says ``test``.
        seed: seed of the held-out selection.

    Returns:
        The dataset.

    Raises:
        DataError: CSV missing, empty or single-label, a row with a missing file or path,
            a bad 0/1 cell or unknown split (the message names the CSV line), fewer than
            two labels with a positive image, or a label whose images are all in val/test.
    """
    csv_path = Path(os.path.abspath(os.fspath(path)))
    if not csv_path.is_file():
        raise DataError(f"CSV file not found: {csv_path}; {_HOW_TO_GIVE_DATA}")
    header, rows = _read_table(csv_path)
    columns, layout = _find_columns(header, csv_path)
    if layout == LAYOUT_LABELS:
        class_names, parsed = _parse_label_sets(rows, columns, csv_path)
    else:
        class_names, parsed = _parse_class_columns(rows, columns, csv_path)
    targets = torch.zeros(len(parsed), len(class_names))
    for i, (_, _, labels, _) in enumerate(parsed):
        targets[i, labels] = 1.0
    _require_two_classes([name for k, name in enumerate(class_names) if targets[:, k].any()], csv_path)
    _require_train_labels(parsed, class_names, csv_path)
    splits: dict[str, MultiLabelList] = {}
    for split in SPLITS:
        indices = [i for i, row in enumerate(parsed) if row[3] == split]
        if indices:
            splits[split] = MultiLabelList([parsed[i][1] for i in indices], targets[indices])
    splits = _carve_missing(splits, val_fraction, test_fraction, seed)
    notes = _notes(targets, class_names)
    return MultiLabelDataset(class_names, splits, str(csv_path.parent), layout, notes)


def multilabel_split(targets: torch.Tensor, fractions: dict[str, float], seed: int) -> dict[str, list[int]]:
    """Split images so that every split gets its share of each label (iterative stratification).

    Each split wants ``fraction * count`` of every label (train the rest). Labels are taken
    rarest first; each of a label's unplaced images, in a seeded random order, goes to the
    split that still wants most of that label (ties: the one wanting most images overall,
    then train, val, test). Images with no label fill the splits' remaining room. Then a
    label with no train image but several images in all takes one back from a held-out
    split, so every label can be learned where the data allows.

    Not scikit-multilearn's ``IterativeStratification`` (not installed); the same idea,
    Sechidis, Tsoumakas and Vlahavas (2011), with cnnkit's train-keeps-every-label rule.

    Args:
        targets: ``[N, K]`` multi-hot.
        fractions: held-out split name -> fraction of the images (each in [0, 1), summing
            below 1); ``train`` is the remainder.
        seed: same targets, fractions and seed give the same split on any machine.

    Returns:
        split name -> sorted indices; ``train`` and every key of ``fractions`` are present.
    """
    _check_fractions(fractions)
    names = ["train", *fractions]
    shares = torch.tensor([1.0 - sum(fractions.values()), *fractions.values()], dtype=torch.float64)
    positive = targets > 0.5
    label_want = shares[:, None] * positive.sum(0).double()[None, :]  # [S, K] images of each label wanted
    total_want = shares * len(targets)  # [S]
    order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(seed))
    place = torch.full((len(targets),), -1, dtype=torch.long)
    left = positive.clone()
    while left.any():
        counts = left.sum(0)
        label = int(torch.where(counts > 0, counts, len(targets) + 1).argmin())
        for i in order[left[order, label]].tolist():
            want = label_want[:, label] + 1e-9 * total_want  # ties go to the split short of most images
            split = int(want.argmax())
            place[i] = split
            label_want[split, positive[i]] -= 1
            total_want[split] -= 1
            left[i] = False
    for i in order[place[order] < 0].tolist():
        split = int(total_want.argmax())
        place[i], total_want[split] = split, total_want[split] - 1
    _give_back_to_train(place, positive, order)
    return {name: sorted((place == s).nonzero().flatten().tolist()) for s, name in enumerate(names)}


def multilabel_sample_weights(targets: torch.Tensor) -> torch.Tensor:
    """Per-image sampling weights that draw every label about equally often (``--balance sampler``).

    An image weighs ``1 / n_k`` of its rarest label ``k`` (``n_k``: images with that label);
    images with no label count as one more group of their own. Drawn with
    ``torch.utils.data.WeightedRandomSampler``, an image of a rare label comes up as often
    as one of a common label; an image with several labels already counts for each of them,
    so its rarest label decides.

    Args:
        targets: ``[N, K]`` multi-hot.

    Returns:
        float64 ``[N]`` positive weights (not normalised).
    """
    positive = targets > 0.5
    counts = positive.sum(0).double()  # [K]
    inverse = torch.where(positive, 1.0 / counts.clamp_min(1)[None, :], torch.zeros(()))  # [N, K]
    none = ~positive.any(1)
    return torch.where(none, 1.0 / none.sum().clamp_min(1).double(), inverse.max(1).values)


def _give_back_to_train(place: torch.Tensor, positive: torch.Tensor, order: torch.Tensor) -> None:
    """Move one held-out image of each label with none in train (and 2+ in all) to train."""
    for label in range(positive.shape[1]):
        members = order[positive[order, label]]
        if len(members) >= 2 and not (place[members] == 0).any():
            place[members[0]] = 0


def _read_table(csv_path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and ``(line, cells)`` of each non-blank row."""
    # utf-8-sig: spreadsheets often write a byte-order mark before the header.
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or not any(cell.strip() for cell in header):
            raise DataError(f"CSV file {csv_path} is empty; it needs a header row such as path,labels")
        rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    if not rows:
        raise DataError(f"CSV file {csv_path} has a header but no rows of images")
    return header, rows


def _class_columns(header: list[str]) -> list[tuple[str, int]]:
    """``(name as written, index)`` of every column that is not the path or split column."""
    names = [cell.strip().lower() for cell in header]
    path = next((names.index(option) for option in PATH_COLUMNS if option in names), None)
    return [(header[i].strip(), i) for i, name in enumerate(names) if i != path and name != "split" and name]


def _find_columns(header: list[str], csv_path: Path) -> tuple[_Columns, str]:
    layout = csv_layout(header)
    names = [cell.strip().lower() for cell in header]
    if layout is None:
        raise DataError(
            f"CSV file {csv_path} is not a multi-label list: found {', '.join(names)}; expected a path column "
            f"({', '.join(PATH_COLUMNS)}) and a labels column ({', '.join(LABELS_COLUMNS)}) or one 0/1 column "
            "per class"
        )
    path = next(names.index(option) for option in PATH_COLUMNS if option in names)
    split = names.index("split") if "split" in names else None
    if layout == LAYOUT_LABELS:
        labels = next(names.index(option) for option in LABELS_COLUMNS if option in names)
        return _Columns(path, split, labels), layout
    classes = _class_columns(header)
    duplicates = sorted({name for name, _ in classes if [n for n, _ in classes].count(name) > 1})
    if duplicates:
        raise DataError(f"CSV file {csv_path} names class column(s) {', '.join(duplicates)} more than once")
    return _Columns(path, split, None, tuple(classes)), layout


def _cells(row: list[str], column: int | None) -> str:
    return row[column].strip() if column is not None and column < len(row) else ""


_Row = tuple[int, str, list[int], str]  # (CSV line, absolute path, label indices, split)


def _common(row: list[str], line: int, columns: _Columns, csv_path: Path) -> tuple[str, str]:
    """The row's absolute file path and canonical split (errors name the line)."""
    where = f"{csv_path} line {line}"
    file_name = _cells(row, columns.path)
    if not file_name:
        raise DataError(f"{where}: empty path; every row needs an image file")
    file_path = os.path.normpath(os.path.join(csv_path.parent, file_name))
    if not os.path.isfile(file_path):
        raise DataError(f"{where}: file not found: {file_path}; paths are relative to the CSV's folder")
    split = "train"
    if columns.split is not None:
        split = SPLIT_ALIASES.get(_cells(row, columns.split).lower(), "")
        if not split:
            raise DataError(
                f"{where}: unknown split {_cells(row, columns.split)!r}; valid splits: {', '.join(SPLIT_ALIASES)}"
            )
    return file_path, split


def _parse_label_sets(
    rows: list[tuple[int, list[str]]], columns: _Columns, csv_path: Path
) -> tuple[list[str], list[_Row]]:
    """Layout (a): class names and rows; ``;`` separates labels if any cell uses it."""
    semicolons = any(";" in _cells(row, columns.labels) for _, row in rows)
    separator = re.compile(r";" if semicolons else r"\s+")
    sets = [
        sorted({label.strip() for label in separator.split(_cells(row, columns.labels)) if label.strip()})
        for _, row in rows
    ]
    class_names = sorted({label for labels in sets for label in labels})
    index = {name: k for k, name in enumerate(class_names)}
    parsed = []
    for (line, row), labels in zip(rows, sets, strict=True):
        file_path, split = _common(row, line, columns, csv_path)
        parsed.append((line, file_path, [index[label] for label in labels], split))
    return class_names, parsed


_TRUE = {"1", "1.0", "true", "yes"}
_FALSE = {"0", "0.0", "false", "no", ""}


def _parse_class_columns(
    rows: list[tuple[int, list[str]]], columns: _Columns, csv_path: Path
) -> tuple[list[str], list[_Row]]:
    """Layout (b): class names (sorted headers) and rows; each class cell must be 0 or 1."""
    ordered = sorted(columns.classes)
    parsed = []
    for line, row in rows:
        file_path, split = _common(row, line, columns, csv_path)
        labels = []
        for k, (name, column) in enumerate(ordered):
            cell = _cells(row, column).lower()
            if cell not in _TRUE | _FALSE:
                raise DataError(
                    f"{csv_path} line {line}: column {name!r} holds {_cells(row, column)!r}; class columns hold 0 or 1"
                )
            if cell in _TRUE:
                labels.append(k)
        parsed.append((line, file_path, labels, split))
    return [name for name, _ in ordered], parsed


def _require_train_labels(parsed: list[_Row], class_names: list[str], csv_path: Path) -> None:
    train_labels = {k for _, _, labels, split in parsed if split == "train" for k in labels}
    for line, _, labels, split in parsed:
        for k in labels:
            if k not in train_labels:
                raise DataError(
                    f"{csv_path} line {line}: label {class_names[k]!r} ({split}) has no train rows; "
                    "every label needs training images"
                )


def _carve_missing(
    splits: dict[str, MultiLabelList], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, MultiLabelList]:
    """Take the splits that are absent but asked for (fraction > 0) out of train."""
    _check_fractions({"val": val_fraction, "test": test_fraction})
    wanted = {
        name: fraction
        for name, fraction in (("val", val_fraction), ("test", test_fraction))
        if fraction > 0 and name not in splits
    }
    if wanted and "train" in splits:
        train = splits["train"]
        for name, indices in multilabel_split(train.targets, wanted, seed).items():
            splits[name] = train.subset(indices)
    return {name: splits[name] for name in SPLITS if name in splits and len(splits[name])}


def _notes(targets: torch.Tensor, class_names: list[str]) -> list[str]:
    counts = targets.sum(0).long().tolist()
    notes = []
    once = [name for name, count in zip(class_names, counts, strict=True) if count == 1]
    if once:
        notes.append(f"{len(once)} label(s) on a single image (hard to learn or evaluate): {', '.join(once[:10])}")
    never = [name for name, count in zip(class_names, counts, strict=True) if count == 0]
    if never:
        notes.append(f"{len(never)} class column(s) with no positive image: {', '.join(never[:10])}")
    empty = int((targets.sum(1) == 0).sum())
    if empty:
        notes.append(f"{empty} image(s) with no label (kept: they teach the model to say none)")
    return notes


def iter_label_sets(dataset: MultiLabelDataset, split: str) -> Iterator[tuple[str, list[str]]]:
    """``(path, label names)`` of each image of ``split`` (empty when the split is absent)."""
    files = dataset.splits.get(split)
    if files is None:
        return
    for file_path, labels in zip(files.paths, files.label_indices(), strict=True):
        yield file_path, [dataset.class_names[k] for k in labels]

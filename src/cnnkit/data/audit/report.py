"""The dataset check's result: the :class:`AuditReport` dataclass and its JSON file.

This module owns what a check found, as data: :class:`AuditReport` (counts, unreadable and
tiny files, modes, formats, sizes, duplicate groups, problems, warnings; ``to_dict()`` is
the JSON of ``cnnkit check --json``) and :func:`write_json`. Filling it in is
:mod:`~cnnkit.data.audit.scan`'s job, printing it :mod:`~cnnkit.data.audit.text`'s.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cnnkit import atomic
from cnnkit.errors import CnnkitError

DEFAULT_MIN_SIDE = 16  # px; a shorter side below this is too small to show a class


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


def write_json(report: AuditReport, path: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> None:
    """Write ``report.to_dict()`` (with the keys of ``extra`` added: the label check's) as
    indented JSON (temp file, then rename).

    Raises:
        CnnkitError: the file cannot be written there (missing folder, no permission; exit 1).
    """
    path = Path(path)
    try:
        atomic.write_json(path, report.to_dict() | (extra or {}))
    except OSError as error:
        raise CnnkitError(f"cannot write the report to {path}: {error.strerror or error}") from None

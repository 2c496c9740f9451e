"""``cnnkit check``: the dataset doctor (unreadable files, modes, sizes, duplicates, leakage, balance)
and, with ``--labels``, the labels a model finds wrong (cross-validated, cleanlab)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cnnkit.errors import CnnkitError, DataError


def main(args: Any) -> None:
    """Print the report (or JSON); exit 1 when training could not use the data (the values, and
    label-check options without ``--labels``, were refused by :func:`cnnkit.config.validate`)."""
    from cnnkit.data.audit import audit, format_report, write_json

    if args.out:
        _check_writable("--out", Path(args.out).parent)
    if args.labels and args.labels_out:
        _check_writable("--labels-out", Path(args.labels_out))
    if args.labels:
        from cnnkit.data.audit.labels import require_cleanlab

        require_cleanlab()  # before the file check: a missing extra fails at once
    given = {key: value for key, value in (("min_side", args.min_side), ("near_distance", args.near_distance))
             if value is not None}  # unset: audit's own defaults (the help texts state them)
    report = audit(args.data, quick=args.quick, workers=args.workers, progress=not args.no_progress, **given)
    labels, written = _labels(args, report) if args.labels and report.usable else (None, [])
    extra = {"labels": labels.to_dict()} if labels else {}
    if args.out:
        write_json(report, args.out, extra)
    values = report.to_dict() | extra
    if args.json:
        print(json.dumps(values, indent=1))
    else:
        print(format_report(report))
        if labels is not None:
            from cnnkit.data.audit.label_output import format_labels

            print(format_labels(labels))
            print("\n".join(written))
    if not report.usable:  # exit 1: the report above says everything; the error line sums it up
        raise DataError(f"{args.data} is not usable for training: {'; '.join(report.problems)}")


def _check_writable(flag: str, folder: Path) -> None:
    """Fail before the (long) check when ``folder`` cannot be made or written: a disk or
    permission problem, exit 1, not a usage error.

    Raises:
        CnnkitError: the nearest existing folder above ``folder`` is a file, or not writable.
    """
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CnnkitError(f"{flag}: cannot write to {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):  # also false on a read-only file system (EROFS)
        raise CnnkitError(f"{flag}: cannot write to {folder}: {existing} is not writable (check its permissions "
                          "or choose another folder)")  # fmt: skip


def _labels(args: Any, report: Any) -> tuple[Any, list[str]]:
    """Run the label check and write its files (and the cleaned copy); returns it and the lines saying where."""
    from cnnkit.data.audit.label_output import fix_to, write_files
    from cnnkit.evaluation.label_check import check_labels

    labels = check_labels(args.data, model=args.model, folds=args.folds or 5, epochs=args.epochs or 3,
                          seed=args.seed, progress=not args.no_progress, device=args.device)  # fmt: skip
    out = Path(args.labels_out) if args.labels_out else Path("label-issues") / Path(args.data).resolve().stem
    files = write_files(labels, out, extra={"check": report.to_dict()})
    written = [f"label files: {files['csv']} (ranked issues), {files['html']} (thumbnails), {files['json']}"]
    if args.fix_to:
        written.append(fix_to(labels, args.data, args.fix_to).line())
    return labels, written

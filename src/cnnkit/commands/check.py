"""``cnnkit check``: the dataset doctor (unreadable files, modes, sizes, duplicates, leakage, balance)."""

from __future__ import annotations

import json
from typing import Any

from cnnkit.errors import DataError


def main(args: Any) -> None:
    """Print the report (or JSON); exit 1 when training could not use the data."""
    from cnnkit.data.audit import audit, format_report, write_json

    given = {key: value for key, value in (("min_side", args.min_side), ("near_distance", args.near_distance))
             if value is not None}  # unset: audit's own defaults (the help texts state them)
    report = audit(args.data, quick=args.quick, workers=args.workers, progress=not args.no_progress, **given)
    if args.out:
        write_json(report, args.out)
    print(json.dumps(report.to_dict(), indent=1) if args.json else format_report(report))
    if not report.usable:  # exit 1: the report above says everything; the error line sums it up
        raise DataError(f"{args.data} is not usable for training: {'; '.join(report.problems)}")

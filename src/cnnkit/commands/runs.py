"""``cnnkit runs``: one table comparing the run folders under a directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cnnkit.errors import DataError, nearest


def main(args: Any) -> None:
    """``cnnkit runs [DIR]``: no ``./runs`` yet is said (exit 0); a DIR given that does not exist
    is a mistake (exit 1, one line naming the nearest folder there is)."""
    from cnnkit.runs import compare_runs, format_runs

    if args.dir is not None:
        _require_folder(Path(args.dir))
    table = compare_runs(args.dir or "runs", sort=args.sort)
    print(json.dumps(table.as_dict(), indent=1) if args.json else format_runs(table))


def _require_folder(folder: Path) -> None:
    if folder.is_dir():
        return
    if folder.exists():
        raise DataError(f"{folder} is a file, not a folder of run folders")
    parent = folder.parent if folder.parent.is_dir() else None
    guess = nearest(folder.name, [p.name for p in parent.iterdir() if p.is_dir()]) if parent else None
    hint = f"; did you mean {str(parent / guess) if str(folder.parent) != '.' else guess}?" if guess else ""
    raise DataError(f"runs folder not found: {folder}{hint} (`cnnkit train --output-dir DIR` writes runs there)")

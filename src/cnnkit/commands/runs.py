"""``cnnkit runs``: one table comparing the run folders under a directory."""

from __future__ import annotations

import json
from typing import Any


def main(args: Any) -> None:
    from cnnkit.runs import compare_runs, format_runs

    table = compare_runs(args.dir, sort=args.sort)
    print(json.dumps(table.as_dict(), indent=1) if args.json else format_runs(table))

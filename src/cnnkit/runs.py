"""``cnnkit runs``: one table comparing the run folders under a directory.

Each run is read from its own files only: ``config.yaml`` (recipe, model, data, planned
epochs, the metric that picks ``best.pt``), ``metrics.csv`` (epochs run, best value and
epoch, training time), ``summary.json`` (test accuracy, early stop; absent when a run was
killed or is still going) and ``env.json`` (start time). Folders without a run's files are
counted and named, never an error.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cnnkit.engine.loop import LOWER_IS_BETTER, METRIC_ALIASES, SELECT_METRICS, metric_column
from cnnkit.engine.selection import improves
from cnnkit.errors import CnnkitError, UsageError
from cnnkit.runfolder import RunFolder, process_alive

# --sort keys besides metrics: key -> (largest first?)
SORT_KEYS = {"date": False, "name": False, "time": False, "epochs": True, "test_acc": True}
# metrics.csv columns --sort accepts (each run's best epoch value of it)
METRIC_SORT_KEYS = (*SELECT_METRICS, "train_loss", "train_acc")


@dataclass
class RunRow:
    """One run folder as ``cnnkit runs`` shows it.

    Attributes:
        name: the folder's name.
        recipe, model, data: from ``config.yaml`` (a data path is shown by its last part).
        epochs_run: rows of ``metrics.csv``. epochs_planned: from the config.
        status: ``done``, ``early stop``, ``failed`` (``reason`` says why), ``interrupted``
            (Ctrl-C), ``running``, ``killed`` (its process is gone), or ``incomplete`` for
            runs older than ``status.json`` that have no summary.
        metric: the ``metrics.csv`` column compared (the run's select metric, or --sort's).
        best: its best value over the epochs (None: no epoch finished). best_epoch: where.
        test_acc: accuracy of ``best.pt`` on the test split (None: no test split, or unfinished).
        seconds: training and validation time of the epochs in ``metrics.csv``.
        started: local start time, ``YYYY-MM-DDTHH:MM:SS``.
    """

    name: str
    path: str
    recipe: str | None
    model: str
    data: str
    epochs_run: int
    epochs_planned: int
    status: str
    metric: str
    best: float | None
    best_epoch: int | None
    test_acc: float | None
    seconds: float
    started: str
    reason: str | None = None


@dataclass
class RunsTable:
    """The runs found under ``folder``, sorted, and the folders skipped as not runs."""

    folder: Path
    sort: str
    rows: list[RunRow] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "sort": self.sort, "runs": [asdict(r) for r in self.rows],
                "skipped": self.skipped}  # fmt: skip


def compare_runs(folder: str | Path = "runs", *, sort: str = "date") -> RunsTable:
    """Read every run folder directly under ``folder`` (or ``folder`` itself if it is one).

    Args:
        folder: a folder of run folders (``cnnkit train --output-dir``, default ``runs``).
        sort: ``date`` (oldest first), ``name``, ``time``, ``epochs``, ``test_acc`` or a
            metrics column (``val_acc``, ``val_loss``, ``accuracy``, ``macro_f1``...; best first,
            and the table then compares that column).

    Raises:
        UsageError: an unknown sort key (the valid ones are listed).

    A missing ``folder`` gives an empty table with ``missing`` set (no runs yet).
    """
    column = _sort_column(sort)
    folder = Path(folder)
    if not folder.is_dir():  # no runs yet: an empty table that says so, not an error
        return RunsTable(folder, sort, missing=True)
    candidates = [folder] if RunFolder(folder).is_run() else sorted(p for p in folder.iterdir() if p.is_dir())
    table = RunsTable(folder, sort)
    for path in candidates:
        row, why = read_run(path, metric=column)
        if row is None:
            table.skipped.append(f"{path.name} ({why})")
        else:
            table.rows.append(row)
    table.rows.sort(key=lambda row: _sort_value(row, sort, column))
    return table


def read_run(path: Path, *, metric: str | None = None) -> tuple[RunRow | None, str]:
    """One run folder as a :class:`RunRow`, or (None, why it is not a run).

    ``metric`` is the column to compare (None: the run's own select metric). Everything is
    read through :class:`~cnnkit.runfolder.RunFolder`, without locking (a run may be going).
    """
    run = RunFolder(path, writer=False)
    if not run.is_run():
        return None, f"no {RunFolder.CONFIG}"
    if not run.is_training_run():
        return None, "no training files"
    try:
        cfg = run.read_config_values()
        data, model, train = cfg["data"], cfg["model"], cfg["train"]
    except (CnnkitError, KeyError):
        return None, f"unreadable {RunFolder.CONFIG}"
    if not all(isinstance(section, dict) for section in (data, model, train)):
        return None, f"unreadable {RunFolder.CONFIG}"
    history = run.read_metrics()
    summary = run.read_summary()
    summary = summary if isinstance(summary, dict) else None
    column = metric or _select_column(train.get("select_metric"))
    best, best_epoch = _best(history, column)
    planned = sum(train["fine_tune"]) if train.get("fine_tune") else int(train.get("epochs") or 0)
    status, reason = _status(run, summary, len(history), planned)
    return RunRow(
        name=run.name, path=str(path), recipe=cfg.get("recipe"), model=str(model.get("name")),
        data=_data_label(str(data.get("name"))), epochs_run=len(history), epochs_planned=planned,
        status=status, metric=column, best=best, best_epoch=best_epoch,
        test_acc=summary.get("test_acc") if summary else None,
        seconds=round(sum(_number(row.get("epoch_time_s")) or 0.0 for row in history), 1),
        started=_started(run), reason=reason,
    ), ""  # fmt: skip


def _status(run: RunFolder, summary: dict[str, Any] | None, epochs_run: int, planned: int) -> tuple[str, str | None]:
    """``done``, ``early stop``, ``failed``, ``interrupted``, ``running``, ``killed`` or
    ``incomplete`` (a run from before ``status.json``, without a summary), and why it failed."""
    recorded = run.status()
    recorded = recorded if isinstance(recorded, dict) else None
    state = recorded.get("status") if recorded else None
    if state == "failed":
        return "failed", recorded.get("reason")
    if state == "interrupted":
        return "interrupted", recorded.get("reason")
    if state == "running":
        return ("running" if process_alive(recorded.get("pid")) else "killed"), None
    if summary and summary.get("stopped_early"):
        return "early stop", None
    if summary and epochs_run >= planned:
        return "done", None
    return "incomplete", None


def format_runs(table: RunsTable) -> str:
    """The table as aligned plain text, with a closing line of counts."""
    if table.missing:
        return f"no runs yet: {table.folder} does not exist (`cnnkit train` writes its runs there)"
    if not table.rows:
        lines = [f"no runs in {table.folder}"]
    else:
        metrics = {row.metric for row in table.rows}
        same = len(metrics) == 1  # one metric for all: named in the header, else in each cell
        best_title = f"best {next(iter(metrics))}" if same else "best"
        header = ["run", "recipe", "model", "data", "epochs", "status", best_title, "epoch", "test acc", "time",
                  "started"]  # fmt: skip
        rows = [[row.name, row.recipe or "-", row.model, row.data, f"{row.epochs_run}/{row.epochs_planned}", row.status,
                 _metric_text(row, same), "-" if row.best_epoch is None else str(row.best_epoch),
                 _percent(row.test_acc), _duration(row.seconds), row.started.replace("T", " ")[:16]]
                for row in table.rows]  # fmt: skip
        right = {"epochs", "epoch", "test acc", "time", best_title}
        widths = [max(len(cells[i]) for cells in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(cell.rjust(w) if header[i] in right else cell.ljust(w)
                           for i, (cell, w) in enumerate(zip(cells, widths, strict=True))).rstrip()
                 for cells in [header, *rows]]  # fmt: skip
        lines += [f"  {row.name} failed: {row.reason}" for row in table.rows if row.status == "failed" and row.reason]
        count = len(table.rows)
        lines.append(f"{count} run{'s' if count != 1 else ''} in {table.folder}, sorted by {table.sort}")
    if table.skipped:
        shown = ", ".join(table.skipped[:5]) + (f" and {len(table.skipped) - 5} more" if len(table.skipped) > 5 else "")
        many = len(table.skipped) != 1
        lines.append(f"skipped {len(table.skipped)} folder{'s that are not runs' if many else ' that is not a run'}: "
                     f"{shown}")  # fmt: skip
    return "\n".join(lines)


def _sort_column(sort: str) -> str | None:
    """The metrics column a sort key compares (None: not a metric key)."""
    if sort in SORT_KEYS:
        return None
    column = METRIC_ALIASES.get(sort, sort)
    if column not in METRIC_SORT_KEYS:
        valid = [*SORT_KEYS, *METRIC_ALIASES, *METRIC_SORT_KEYS]
        raise UsageError(f"unknown sort key {sort!r}; valid: {', '.join(valid)}")
    return column


def _sort_value(row: RunRow, sort: str, column: str | None) -> tuple:
    """Sort key: runs without the value go last."""
    if column is not None:
        value, descending = row.best, column not in LOWER_IS_BETTER and not column.endswith("loss")
    else:
        value = {"date": row.started, "name": row.name, "time": row.seconds, "epochs": row.epochs_run,
                 "test_acc": row.test_acc}[sort]  # fmt: skip
        descending = SORT_KEYS[sort]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return (1, 0)
    return (0, -value if descending else value)


def _select_column(name: str | None) -> str:
    try:
        return metric_column(name or "val_acc")
    except UsageError:
        return "val_acc"


def _best(history: list[dict[str, Any]], column: str) -> tuple[float | None, int | None]:
    """Best value of ``column`` over the epochs and its epoch.

    For a selection metric the epoch is the one training chose for ``best.pt`` (a tie goes
    to the lower validation loss: :func:`cnnkit.engine.selection.improves`); for other
    columns the first epoch with the best value.
    """
    # a cell that is not a number (a hand-edited file) counts as missing
    history = [row for row in history if isinstance(row.get("epoch"), int) and _number(row.get(column)) is not None]
    if column in SELECT_METRICS:
        best = None
        for row in history:
            if improves(row, best, column):
                best = row
        return (None, None) if best is None else (best[column], best["epoch"])
    scored = [(row[column], row["epoch"]) for row in history if not math.isnan(row[column])]
    if not scored:
        return None, None
    lower = column in LOWER_IS_BETTER or column.endswith("loss")
    value, epoch = min(scored, key=lambda pair: (pair[0] if lower else -pair[0], pair[1]))
    return value, epoch


def _number(value: Any) -> float | None:
    """A :meth:`RunFolder.read_metrics` cell as a float, None when it is not a number."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _started(run: RunFolder) -> str:
    """Start time from ``env.json``; for runs made before it recorded one, ``config.yaml``'s mtime."""
    env = run.read_json(RunFolder.ENV)
    if isinstance(env, dict) and isinstance(env.get("started"), str):
        return env["started"]
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(os.path.getmtime(run.config_file)))


def _data_label(name: str) -> str:
    return Path(name).name if ("/" in name or os.sep in name) else name


def _metric_text(row: RunRow, same_metric: bool) -> str:
    if row.best is None:
        return "-"
    text = f"{row.best:.4f}" if row.metric in LOWER_IS_BETTER or row.metric.endswith("loss") else _percent(row.best)
    return text if same_metric else f"{row.metric} {text}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"

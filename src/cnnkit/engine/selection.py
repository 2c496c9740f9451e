"""Which epoch is best: the ``--select-metric`` names and the rule that compares two epochs.

``fit`` keeps ``best.pt`` from the epoch this rule picks; ``cnnkit runs`` ranks runs by it.
"""

from __future__ import annotations

import math
from typing import Any

from cnnkit.config import METRIC_ALIASES, SELECT_METRICS
from cnnkit.errors import UsageError

# Metrics where a lower value is better; every other select_metric is maximised.
LOWER_IS_BETTER = {"val_loss"}

# What breaks a tie in the selection metric: (column, True when lower is better).
TIE_BREAK = {"val_loss": ("val_acc", False)}
DEFAULT_TIE_BREAK = ("val_loss", True)


def metric_column(name: str) -> str:
    """The metrics.csv column a ``--select-metric`` name stands for.

    Raises:
        UsageError: an unknown name (the valid ones are listed).
    """
    column = METRIC_ALIASES.get(name, name)
    if column not in SELECT_METRICS:
        valid = ", ".join([*METRIC_ALIASES, *SELECT_METRICS])
        raise UsageError(f"unknown select metric {name!r}; valid: {valid}")
    return column


def improves(row: dict[str, Any], best: dict[str, Any] | None, metric: str) -> bool:
    """Whether the epoch ``row`` beats the ``best`` row so far on ``metric`` (a metrics.csv column).

    A better value wins. An equal value (1,000 validation images make ties common) goes
    to the lower validation loss, or for ``val_loss`` itself to the higher ``val_acc``;
    equal on both, the earlier epoch stays. NaN or missing never improves.
    """
    value = row.get(metric)
    if not _number(value):
        return False
    if best is None or not _number(best.get(metric)):
        return True
    if value != best[metric]:
        return value < best[metric] if metric in LOWER_IS_BETTER else value > best[metric]
    column, lower = TIE_BREAK.get(metric, DEFAULT_TIE_BREAK)
    mine, theirs = row.get(column), best.get(column)
    if not (_number(mine) and _number(theirs)):
        return False
    return mine < theirs if lower else mine > theirs


def _number(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def best_row(history: list[dict[str, Any]], best_epoch: int | None, best_metric: float | None,
             metric: str) -> dict[str, Any] | None:  # fmt: skip
    """The history row of the best epoch so far (a row of the metric alone when an older
    checkpoint's history lacks it), or None before the first epoch."""
    if best_epoch is None and best_metric is None:
        return None
    for row in reversed(history):
        if row.get("epoch") == best_epoch:
            return row
    return {metric: best_metric}

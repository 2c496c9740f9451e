"""A recipe's stated expectation, checked against what the run reached.

A recipe's ``expected`` text starts with its bar (``>= 97% on the 2,000 held-out test
digits``, ``> 70% Flowers-102 test accuracy``). The bar applies to a run of the recipe as
shipped: same data, same epochs, the whole training set. A run that changed any of these
is told the expectation does not apply; a run that ends below the bar says so.
"""

from __future__ import annotations

import re
from typing import Any

from cnnkit.config import RunConfig

_BAR = re.compile(r"^\s*(>=|>|≥)\s*(\d+(?:\.\d+)?)\s*%")


def parse_bar(expected: str | None) -> tuple[str, float] | None:
    """``">= 97% ..."`` -> ``(">=", 0.97)``; None when the text states no bar."""
    match = _BAR.match(expected or "")
    if match is None:
        return None
    op = ">=" if match.group(1) in (">=", "≥") else ">"
    return op, float(match.group(2)) / 100


def expectation_line(cfg: RunConfig, run: Any) -> list[str]:
    """The lines to log about the recipe's expectation (none when there is nothing to say)."""
    bar = parse_bar(cfg.expected)
    if bar is None or cfg.recipe is None:
        return []
    changed = _changed_from_recipe(cfg)
    if changed:
        return [f"note: the {cfg.recipe} recipe's expectation ({cfg.expected}) is for the recipe as shipped; "
                f"this run changed {', '.join(changed)}"]  # fmt: skip
    reached = run.test.acc if run.test is not None else run.metrics["val_acc"]
    op, value = bar
    if reached > value or (op == ">=" and reached >= value):
        return [f"expected {op} {value:.1%}: reached {reached:.2%}"]
    return [f"warning: below the {cfg.recipe} recipe's expectation: {reached:.2%} "
            f"{'test' if run.test is not None else 'validation'} accuracy, expected {op} {value:.1%} "
            f"({cfg.expected})"]  # fmt: skip


def _changed_from_recipe(cfg: RunConfig) -> list[str]:
    """What this run changed that the recipe's bar depends on."""
    from cnnkit.recipes import load_recipe

    raw = load_recipe(cfg.recipe)
    changed = []
    data_name = raw.get("data", {}).get("name")
    if data_name is not None and cfg.data.name != data_name:
        changed.append(f"the data ({cfg.data.name})")
    epochs = raw.get("train", {}).get("epochs")
    if epochs is not None and cfg.train.epochs != epochs and not cfg.train.fine_tune:
        changed.append(f"the epochs ({cfg.train.epochs} instead of {epochs})")
    if cfg.data.limit_train is not None:
        changed.append(f"the training set (--limit-train {cfg.data.limit_train})")
    return changed

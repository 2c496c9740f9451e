"""Recipes: one YAML file of config values per workflow, shipped in the package.

A recipe has the config sections (``data``, ``model``, ``train``) plus ``description``,
``expected`` (the result it should reach) and ``notes`` (how it differs from its seed
tutorial and why). ``--recipe NAME`` loads it; flags override it.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml

from cnnkit.errors import unknown_name

_INFO_KEYS = ("description", "expected", "notes", "seed", "requires")


def list_recipes() -> list[str]:
    """Names of the shipped recipes (file names without ``.yaml``)."""
    folder = resources.files(__name__)
    return sorted(entry.name[: -len(".yaml")] for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def load_recipe(name: str) -> dict[str, Any]:
    """The recipe's raw mapping; unknown names list the valid ones."""
    if name not in list_recipes():
        raise unknown_name("recipe", name, list_recipes())
    text = (resources.files(__name__) / f"{name}.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text) or {}


def recipe_config_values(name: str) -> dict[str, Any]:
    """The recipe's config values, with ``recipe``/``expected``/``notes`` set for the run."""
    raw = load_recipe(name)
    values = {key: value for key, value in raw.items() if key not in _INFO_KEYS}
    values["recipe"] = name
    values["expected"] = raw.get("expected")
    values["notes"] = raw.get("notes")
    return values

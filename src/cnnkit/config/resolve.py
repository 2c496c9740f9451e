"""Resolution of a run's config: defaults < recipe < YAML file < overrides, and YAML in/out.

This module owns :func:`resolve_config` (the layering, then :func:`validate`), the
dotted-key overrides every layer goes through (:func:`apply_overrides`, which coerces each
value to its field's type; :func:`flatten`; :func:`keyword_overrides` for Python keywords),
the ``config.yaml`` reader and writers (:func:`load_yaml`, :func:`to_yaml`,
:func:`save_yaml`) and :func:`upgrade_legacy` for configs stored before this schema.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from cnnkit.config.augment import config_preset
from cnnkit.config.checks import validate
from cnnkit.config.keys import _KWARGS_KEYS, _SECTIONS, RunConfig, _lr_auto, valid_keys
from cnnkit.errors import UsageError, nearest

# Short keyword names accepted by train(); every other config field is reachable by its own name.
_ALIASES = {"data": "data.name", "model": "model.name", "model_kwargs": "model.kwargs", "data_kwargs": "data.kwargs",
            "name": "name"}  # fmt: skip


def upgrade_legacy(values: dict[str, Any]) -> dict[str, Any]:
    """A nested config stored before this schema (checkpoint format 1), in today's meaning.

    Then ``data.val_fraction`` had no None and its default 0.0 meant "hold out 0.2 where the
    data has neither a val nor a test split, else validate on the test split": exactly what
    None means now that 0 means no holdout. Returns a copy; newer configs need no call.
    """
    data = dict(values.get("data") or {})
    if data.get("val_fraction") == 0:
        data["val_fraction"] = None
    return {**values, "data": data} if "data" in values else dict(values)


def resolve_config(
    recipe: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunConfig:
    """Defaults < recipe < YAML file < dotted-key overrides, validated.

    With no recipe, no config file and no dataset chosen, the ``default`` recipe is used
    (the embedded-MNIST run of a bare ``cnnkit train``); choosing a dataset without a
    recipe starts from the plain dataclass defaults instead, so no digit-specific
    setting leaks into training on photos.

    Raises:
        UsageError: an unknown recipe or key, a value of the wrong type, or one that
            :func:`validate` rejects.
    """
    from cnnkit.recipes import recipe_config_values

    overrides = overrides or {}
    if recipe is None and config_file is None and "data.name" not in overrides:
        recipe = "default"
    cfg = RunConfig()
    layers = [flatten(recipe_config_values(recipe)) if recipe is not None else {},
              flatten(load_yaml(config_file)) if config_file is not None else {}, overrides]  # fmt: skip
    for values in layers:
        apply_overrides(cfg, values)
    apply_cached_head_defaults(cfg, given={key for values in layers for key in values})
    validate(cfg)
    return cfg


# A frozen backbone's head trained on cached features: an epoch costs milliseconds, and the
# generic 10 epochs at lr 1e-3 stop with the head still learning (a 10-class, 20-per-class
# set: train loss 0.75 after 10 epochs, 0.02 after 30 at 3e-3, with the same validation
# accuracy; docs/benchmarks.md, "Heads on cached features").
CACHED_HEAD_DEFAULTS = {"train.epochs": 30, "train.lr": 3e-3}


def apply_cached_head_defaults(cfg: RunConfig, given: set[str]) -> None:
    """Give a run that trains only a frozen backbone's head on cached features
    :data:`CACHED_HEAD_DEFAULTS` for the epochs and lr that no recipe, file or override set.

    The config then records the numbers used, so ``config.yaml``, resume and the printed
    ``phase:`` line all show them. Any other run keeps the dataclass defaults. With
    ``--lr auto`` the head still trains the default epochs; the sweep replaces the lr
    (which stays what a Ctrl-C during the sweep advises to give instead).
    """
    train = cfg.train
    if not train.freeze or train.fine_tune or train.cache_features == "off":
        return
    if train.cache_features == "auto":
        if not config_preset(cfg.data).is_identity:
            return  # augmented images: the backbone runs every epoch, epochs are not cheap
    for dotted, value in CACHED_HEAD_DEFAULTS.items():
        if dotted not in given:
            setattr(train, dotted.partition(".")[2], value)


def keyword_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """Map keyword names (``epochs=2``, ``data_dir=...``, ``output_dir=...``) to config keys.

    Section fields go by their short name, plus :data:`_ALIASES` (``data``, ``model``,
    ``model_kwargs``...) and any dotted key as is; ``lr="auto"`` asks for the range test.

    Raises:
        UsageError: an unknown name, with the nearest valid one suggested.
    """
    fields = {dotted.rpartition(".")[2]: dotted for dotted in _keyword_keys()}
    dotted = {}
    for name, value in values.items():
        if name in _ALIASES:
            dotted[_ALIASES[name]] = value
        elif "." in name:
            dotted[name] = value
        elif name in fields:
            dotted[fields[name]] = value
        else:
            valid = sorted(set(fields) | set(_ALIASES))
            raise UsageError(f"unknown option {name!r}{_did_you_mean(name, valid)} valid: {', '.join(valid)}")
    return _lr_auto(dotted)


def _keyword_keys() -> list[str]:
    return [k for k in valid_keys() if k not in {"data.name", "model.name", "model.kwargs", "data.kwargs"}]


def _did_you_mean(name: str, valid: list[str]) -> str:
    """``"; did you mean 'x'?"`` for the nearest valid name, else ``";"`` (the list follows)."""
    match = nearest(name, valid)
    return f"; did you mean {match!r}?" if match else ";"


def config_from_dict(values: dict[str, Any]) -> RunConfig:
    """A :class:`RunConfig` from a nested dict (``config.yaml``, a checkpoint's config), rejecting
    unknown keys with the nearest valid one named; values are type-checked, not yet validated."""
    return apply_overrides(RunConfig(), flatten(values))


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Turn ``{"train": {"lr": 1}}`` into ``{"train.lr": 1}``; ``model.kwargs`` and ``data.kwargs`` stay dicts."""
    flat: dict[str, Any] = {}
    for name, value in values.items():
        dotted = f"{prefix}{name}"
        if isinstance(value, dict) and dotted not in _KWARGS_KEYS and dotted in _SECTIONS:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def apply_overrides(cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Set dotted keys on ``cfg`` in place, type-checking each value; returns ``cfg``.

    Ranges and choices are :func:`validate`'s job (once every layer is applied).

    Raises:
        UsageError: a key that does not exist (the nearest valid one is suggested and all
            are listed) or a value of the wrong type.
    """
    for dotted, value in _lr_auto(dict(overrides)).items():
        kwargs_key, _, name = dotted.partition(".kwargs.")
        if f"{kwargs_key}.kwargs" in _KWARGS_KEYS and name:  # model.kwargs.width=32: one entry of the dict
            getattr(cfg, kwargs_key).kwargs[name] = _yaml_scalar(value)
            continue
        section, _, name = dotted.rpartition(".")
        target = getattr(cfg, section) if section in _SECTIONS else cfg
        if (section and section not in _SECTIONS) or not _has_field(target, name) or name in _SECTIONS:
            valid = valid_keys()
            raise UsageError(f"unknown config key {dotted!r}{_did_you_mean(dotted, valid)} valid keys: "
                             f"{', '.join(valid)}")  # fmt: skip
        setattr(target, name, _coerce(dotted, value, _field_type(target, name)))
    return cfg


def _yaml_scalar(value: Any) -> Any:
    """``"256"`` -> 256, ``"0.5"`` -> 0.5, ``"true"`` -> True (strings from --set); others as given."""
    if isinstance(value, str):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return value
    return value


def _has_field(obj: Any, name: str) -> bool:
    return dataclasses.is_dataclass(obj) and name in {f.name for f in dataclasses.fields(obj)}


def _field_type(obj: Any, name: str) -> str:
    return str(next(f.type for f in dataclasses.fields(obj) if f.name == name))


def _coerce(dotted: str, value: Any, type_name: str) -> Any:
    """Check/convert a value against the field's annotation (annotations are strings here)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in {"none", "null", "~"}
                         and "None" in type_name and not type_name.startswith("str")):  # fmt: skip
        if "None" in type_name:
            return None
        raise UsageError(f"config key {dotted!r} cannot be empty")
    try:
        return _convert(value, type_name)
    except (TypeError, ValueError):
        raise UsageError(f"config key {dotted!r} expects {type_name}, got {value!r}") from None


def _convert(value: Any, type_name: str) -> Any:
    if type_name.startswith("bool"):
        if isinstance(value, str):
            if value.lower() not in {"true", "false", "1", "0", "yes", "no", "on", "off"}:
                raise ValueError(value)
            return value.lower() in {"true", "1", "yes", "on"}
        return bool(value)
    if type_name.startswith("int"):
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return int(value)
    if type_name.startswith("float"):
        return float(value)
    for prefix, kind in (("list[float]", float), ("list[int]", int)):
        if type_name.startswith(prefix):
            items = value.split(",") if isinstance(value, str) else list(value)
            return [kind(v) for v in items]
    if type_name.startswith("dict"):
        if not isinstance(value, dict):
            raise ValueError(value)
        return dict(value)
    return str(value) if not isinstance(value, str) else value


# ----------------------------------------------------------------------------- YAML


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with the safe loader (configs never run code)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(values, dict):
        raise UsageError(f"config file {path} must hold a mapping of config keys")
    return values


def to_yaml(cfg: RunConfig) -> str:
    """The config as YAML text, keys in dataclass order (what ``config.yaml`` holds)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def save_yaml(cfg: RunConfig, path: str | Path) -> None:
    """Write :func:`to_yaml` to ``path`` (a run folder writes it atomically itself)."""
    Path(path).write_text(to_yaml(cfg), encoding="utf-8")

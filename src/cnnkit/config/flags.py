"""The command-line side of the config: argparse flags made from the schema, and back.

This module owns :func:`add_config_flags` (``--recipe``, ``--config``, one flag or switch
per key that declares one, ``--set``, ``--model-kwargs``/``--data-kwargs`` and the
:data:`MODEL_KWARG_FLAGS` that set one entry of ``model.kwargs``), :func:`config_flags`
(flag -> dotted key) and :func:`overrides_from_args`, which turns a parsed namespace into
the dotted-key overrides :func:`cnnkit.config.apply_overrides` takes; and for every other
command :func:`add_option_flags` (its arguments from its options dataclass) and
:func:`options_from_args` (the dataclass back from the namespace).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Callable
from typing import Any

import yaml

from cnnkit.config.keys import _lr_auto, schema
from cnnkit.errors import UsageError

# Flags that set one entry of model.kwargs: arguments of some builders, not config keys.
MODEL_KWARG_FLAGS: dict[str, tuple[str, Any, str]] = {
    "--layers": ("model.kwargs.layers", str, "convnet: conv widths and pools, e.g. 16,16,M,32,32,M,64,M "
                 "(M max-pool, A average, G global)"),
    "--head": ("model.kwargs.head", str, "convnet: hidden units of the head, e.g. 256 or 256,128 (0: none)"),
    "--dropout": ("model.kwargs.dropout", float, "convnet, vgg*: dropout probability in the head"),
    "--head-hidden": ("model.kwargs.head_hidden", int, "backbone models: hidden units of the new head "
                      "(default: linear head)"),
    "--head-dropout": ("model.kwargs.head_dropout", float, "backbone models: dropout in the new head"),
    "--drop-path": ("model.kwargs.drop_path", float, "stochastic depth rate for models with residual blocks "
                    "(timm:*, tv:efficientnet/convnext/...)"),
}  # fmt: skip
MODEL_KWARG_SWITCHES: dict[str, tuple[str, Any, str]] = {
    "--batch-norm": ("model.kwargs.batch_norm", True, "convnet: BatchNorm after every conv (the default)"),
    "--no-batch-norm": ("model.kwargs.batch_norm", False, "convnet: no BatchNorm"),
}


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--recipe``, ``--config``, a flag for every key that declares one, ``--set`` and
    ``--model-kwargs``/``--data-kwargs`` to ``parser`` (what ``train`` and ``lr-find`` share).

    Each flag's ``dest`` is its dotted config key and its default is ``argparse.SUPPRESS``,
    so the namespace holds only what the user gave (read it with :func:`overrides_from_args`).
    """
    # Read "-1e-3" as a value, not an option (argparse < 3.13 only knows "-1" and "-.5" forms).
    parser._negative_number_matcher = re.compile(r"^-\.?\d")
    parser.add_argument("--recipe", help="a shipped recipe (see `cnnkit recipes`)")
    parser.add_argument("--config", help="YAML file of config values, layered over the recipe")
    for dotted, item, spec in schema():
        if spec.flag:
            kind = spec.parse or _arg_type(str(item.type))
            parser.add_argument(spec.flag, dest=dotted, type=kind, default=argparse.SUPPRESS,
                                help=spec.help.replace("%", "%%"))  # fmt: skip
    for flag, (dotted, kind, text) in MODEL_KWARG_FLAGS.items():
        parser.add_argument(flag, dest=dotted, type=kind, default=argparse.SUPPRESS, help=text)
    for flag, (dotted, value, text) in _switches().items():
        parser.add_argument(flag, dest=dotted, action="store_const", const=value, default=argparse.SUPPRESS,
                            help=text.replace("%", "%%"))  # fmt: skip
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any config key, e.g. --set train.gamma=0.5 (repeatable)")  # fmt: skip
    for what in ("model", "data"):
        example = "width=32 depth=3" if what == "model" else "root=../shared/data"
        parser.add_argument(f"--{what}-kwargs", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                            help=f"arguments of your own {what}'s constructor: KEY=VALUE pairs or a JSON object, "
                                 f"e.g. --{what}-kwargs {example}")  # fmt: skip


def add_option_flags(parser: argparse.ArgumentParser, options: type) -> None:
    """Add the arguments a command's options dataclass declares (see :mod:`cnnkit.config.options`).

    Each field becomes a positional argument (``positional=True``) or its flag, with the
    field's name as ``dest`` and its default as default, so the namespace holds every field
    (read it back with :func:`options_from_args`). Choices go to argparse too (``--help``
    lists them; a typo is refused with the nearest choice); ranges are :func:`validate`'s.
    """
    groups: dict[str, Any] = {}
    for item in dataclasses.fields(options):
        spec = item.metadata["cnnkit"]
        target = parser
        if spec.group:
            target = groups.setdefault(spec.group, parser.add_argument_group(spec.group))
        default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
        text = spec.help.replace("%", "%%")
        shown = {name: value for name, value in (("nargs", spec.nargs), ("metavar", spec.metavar),
                                                 ("choices", spec.choices or None)) if value is not None}  # fmt: skip
        if spec.positional:
            if spec.nargs in ("?", "*"):
                shown["default"] = default
            target.add_argument(item.name, help=text, **shown)
        elif spec.action or str(item.type) == "bool":
            action = spec.action or "store_true"
            shown.pop("choices", None)
            target.add_argument(spec.flag, dest=item.name, action=action, default=default, help=text, **shown)
        else:
            kind = spec.parse or _arg_type(str(item.type))
            if spec.const is not None:  # the bare flag gives it (argparse converts and checks only text)
                shown["const"] = spec.const
            target.add_argument(spec.flag, dest=item.name, type=kind, default=default, help=text, **shown)


def options_from_args(options: type, args: argparse.Namespace) -> Any:
    """The ``options`` dataclass of the fields a parser made by :func:`add_option_flags` filled."""
    return options(**{item.name: getattr(args, item.name) for item in dataclasses.fields(options)})


def config_flags() -> dict[str, str]:
    """Every flag :func:`add_config_flags` adds for a config key -> that key (dotted)."""
    flags = {spec.flag: dotted for dotted, _, spec in schema() if spec.flag}
    flags.update({flag: dotted for flag, (dotted, *_) in MODEL_KWARG_FLAGS.items()})
    flags.update({flag: dotted for flag, (dotted, *_) in _switches().items()})
    return flags


def _switches() -> dict[str, tuple[str, Any, str]]:
    found = {flag: (dotted, value, text) for dotted, _, spec in schema() for flag, value, text in spec.switches}
    return found | MODEL_KWARG_SWITCHES


def _arg_type(type_name: str) -> Callable[[str], Any]:
    """The argparse ``type`` of a field annotated ``type_name`` (a list's: of each item)."""
    type_name = type_name.removeprefix("list[")
    for prefix, kind in (("int", int), ("float", float)):
        if type_name.startswith(prefix):
            return kind
    return str


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys the user set on the command line, as dotted-key overrides.

    Flags give their keys; ``--set KEY=VALUE`` any key (the value is read as YAML later);
    ``--model-kwargs``/``--data-kwargs`` entries of ``model.kwargs``/``data.kwargs``;
    ``--lr auto`` becomes ``train.lr_find=True``.

    Raises:
        UsageError: a ``--set`` item without ``=`` or a malformed ``--*-kwargs`` item.
    """
    keys = set(config_flags().values())
    overrides = {dotted: value for dotted, value in vars(args).items() if dotted in keys}
    for item in getattr(args, "set", None) or []:
        dotted, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[dotted.strip()] = value.strip()
    for what in ("model", "data"):
        overrides.update(_kwargs_overrides(getattr(args, f"{what}_kwargs", None) or [], what))
    return _lr_auto(overrides)


def _kwargs_overrides(items: list[str], what: str) -> dict[str, Any]:
    """``["width=32", '{"depth": 3}']`` -> ``{"model.kwargs.width": "32", "model.kwargs.depth": 3}``
    (string values are read as YAML scalars later: ``32`` is an int, ``true`` a bool)."""
    out: dict[str, Any] = {}
    for item in items:
        if item.lstrip().startswith("{"):
            try:
                values = yaml.safe_load(item)
            except yaml.YAMLError:
                values = None
            if not isinstance(values, dict):
                raise UsageError(f"--{what}-kwargs: {item!r} is not a JSON object; "
                                 f"e.g. '{{\"width\": 32}}' or width=32")
            out.update({f"{what}.kwargs.{name}": value for name, value in values.items()})
            continue
        name, sep, value = item.partition("=")
        if not sep or not name.strip().isidentifier():
            raise UsageError(f"--{what}-kwargs expects KEY=VALUE pairs or a JSON object, got {item!r}")
        out[f"{what}.kwargs.{name.strip()}"] = value.strip()
    return out

"""Validation of a whole config, or of a command's options, against what their keys declare.

This module owns :func:`validate`, the one check of every value a user gives: each key's
type, choices and bounds from its :class:`~cnnkit.config.keys.Key`, then the rules that tie
keys together (a run: held-out fractions, mean/std lengths, ``--fine-tune``, transfer
options on a backbone, ``--log`` trackers; a command: export's format, precision and
``--out`` suffix, a backend that can run the model file, label-check options without
``--labels``). Also :func:`check_choice` and :func:`check_backend` for modules that take
such a value outside a config. Every failure is a one-line
:class:`~cnnkit.errors.UsageError` naming the flag and what is valid.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cnnkit.config.choices import BACKBONE_SOURCES, EXPORT_SUFFIXES, TRACKERS
from cnnkit.config.keys import SHARED, DataConfig, Key, RunConfig, flag_of, schema
from cnnkit.errors import UsageError, unknown_name


def validate(cfg: Any) -> None:
    """Check every value of ``cfg`` (a :class:`RunConfig` or a command's options, see
    :mod:`cnnkit.config.options`) against its declared type, range and choices, and the rules
    that tie values together; call it before anything is read or written.

    Raises:
        UsageError: one line naming the flag (or key) and what is valid, e.g.
            ``--lr must be > 0, got -1`` or ``unknown optimizer 'adm'; did you mean 'adam'? ...``.
    """
    if not isinstance(cfg, RunConfig):
        _check_options(cfg)
        return
    for dotted, item, spec in schema():
        section, _, name = dotted.rpartition(".")
        owner = getattr(cfg, section) if section else cfg
        if spec.unless and getattr(owner, spec.unless):
            continue
        _check_value(flag_of(dotted), getattr(owner, name), str(item.type), spec)
    _check_fractions(cfg.data)
    _check_stats(cfg.data)
    _check_model_kwargs(cfg.model.kwargs)
    _check_fine_tune(cfg.train.fine_tune)
    _check_transfer(cfg)
    _check_loggers(cfg.loggers)


def _check_options(options: Any) -> None:
    """A command's options: each field as declared, then the rules of its command."""
    for item in dataclasses.fields(options):
        spec = item.metadata.get("cnnkit")
        if spec is not None:
            where = spec.flag or (spec.metavar if isinstance(spec.metavar, str) else item.name.upper())
            _check_value(where, getattr(options, item.name), str(item.type), spec)
    rule = _RULES.get(type(options).__name__)
    if rule is not None:
        rule(options)


def _check_value(where: str, value: Any, type_name: str, spec: Key) -> None:
    """One value, named ``where`` in errors: its type, then its choices or bounds."""
    if value is None:
        if "None" not in type_name:
            raise UsageError(f"{where} cannot be empty")
        return
    _check_type(where, value, type_name)
    if spec.choices and value not in spec.choices:
        if spec.kind:
            raise unknown_name(spec.kind, value, spec.choices)
        raise UsageError(f"{where} must be one of {', '.join(map(str, spec.choices))}, got {_show(value)}")
    for number in value if isinstance(value, list) else [value]:
        _check_bounds(where, number, spec)


_KINDS: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,),
                                       "list": (list, tuple), "dict": (dict,)}  # fmt: skip


def _check_type(where: str, value: Any, type_name: str) -> None:
    """A value set in Python (not parsed from text) must already have the field's type (one
    of a union's; a bool is no number)."""
    bases = [part.split("[")[0].strip() for part in type_name.split("|")]
    bases = [base for base in bases if base != "None"]
    if any(base not in _KINDS for base in bases):
        return  # a type this check does not know: the code that uses the value decides
    for base in bases:
        if isinstance(value, _KINDS[base]) and not (isinstance(value, bool) and base in ("int", "float")):
            return
    raise UsageError(f"{where} expects {type_name}, got {value!r}")


def _check_bounds(where: str, value: Any, spec: Key) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if not math.isfinite(value):  # inf passes "> 0"; nan fails every comparison but deserves its own words
        raise UsageError(f"{where} must be a finite number, got {_show(value)}")
    low_ok = (spec.gt is None or value > spec.gt) and (spec.ge is None or value >= spec.ge)
    high_ok = (spec.lt is None or value < spec.lt) and (spec.le is None or value <= spec.le)
    if not (low_ok and high_ok):
        raise UsageError(f"{where} must be {_describe_range(spec)}, got {_show(value)}")


def _describe_range(spec: Key) -> str:
    """``> 0``, ``>= 1``, ``in [0, 1)``, ``in (0, 10]``..."""
    low = ("(", spec.gt) if spec.gt is not None else ("[", spec.ge) if spec.ge is not None else None
    high = (")", spec.lt) if spec.lt is not None else ("]", spec.le) if spec.le is not None else None
    if low and high:
        return f"in {low[0]}{_show(low[1])}, {_show(high[1])}{high[0]}"
    if low:
        return f"{'>' if low[0] == '(' else '>='} {_show(low[1])}"
    assert high is not None
    return f"{'<' if high[0] == ')' else '<='} {_show(high[1])}"


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _check_fractions(data: DataConfig) -> None:
    held_out = (data.val_fraction or 0.0) + (data.test_fraction or 0.0)
    if held_out >= 1:
        raise UsageError(f"--val-fraction and --test-fraction must sum below 1 (something must be left to train on), "
                         f"got {_show(data.val_fraction)} + {_show(data.test_fraction)}")  # fmt: skip


def _check_stats(data: DataConfig) -> None:
    """mean/std: one value, or one per channel (3 unless ``channels`` says 1), and as many of each."""
    allowed = {1, data.channels} if data.channels else {1, 3}
    for flag, values in (("--mean", data.mean), ("--std", data.std)):
        if values is not None and len(values) not in allowed:
            raise UsageError(f"{flag} takes {' or '.join(map(str, sorted(allowed)))} comma-separated values, "
                             f"got {len(values)}")  # fmt: skip
    if data.mean is not None and data.std is not None and len(data.mean) != len(data.std):
        raise UsageError(f"--mean and --std must have the same number of values, got {len(data.mean)} and "
                         f"{len(data.std)}")  # fmt: skip


def _check_fine_tune(fine_tune: list[int] | None) -> None:
    if fine_tune is not None and (len(fine_tune) != 2 or min(fine_tune) < 0 or sum(fine_tune) < 1):
        raise UsageError(f"--fine-tune expects E1,E2 (head-only epochs, then all-layer epochs; non-negative, "
                         f"at least one epoch in all), got {','.join(map(str, fine_tune))}")  # fmt: skip


# Entries of model.kwargs that are probabilities wherever a builder takes them (set by --dropout,
# --head-dropout, --drop-path or --model-kwargs): checked here, before data loads, for every model.
_PROBABILITY_KWARGS = {"dropout": "--dropout", "head_dropout": "--head-dropout", "drop_path": "--drop-path",
                       "drop_rate": "--model-kwargs", "drop_path_rate": "--model-kwargs"}


def _check_model_kwargs(kwargs: dict[str, Any]) -> None:
    """Drop probabilities in ``model.kwargs`` must be numbers in [0, 1) (1 would drop everything).
    Other limits are the builder's own: :func:`cnnkit.models.create_model` turns its refusals into
    one line."""
    for name, flag in _PROBABILITY_KWARGS.items():
        value = kwargs.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise UsageError(f"{flag} (model option {name}) is a drop probability and must be in [0, 1), "
                             f"got {value!r}")


def _check_transfer(cfg: RunConfig) -> None:
    """--pretrained/--freeze/--fine-tune only make sense for timm:/tv: backbones (``--weights``
    works for every architecture: a cnnkit checkpoint or run folder)."""
    if cfg.model.name.partition(":")[0] in BACKBONE_SOURCES and ":" in cfg.model.name:
        return
    for used, flag in ((cfg.model.pretrained, "--pretrained"), (cfg.train.freeze, "--freeze"),
                       (cfg.train.fine_tune, "--fine-tune")):  # fmt: skip
        if used:
            raise UsageError(
                f"{flag} needs a pretrained backbone model (timm:NAME or tv:NAME, e.g. timm:efficientnet_lite0 "
                f"or tv:{cfg.model.name if cfg.model.name.startswith('vgg') else 'resnet18'}); "
                f"{cfg.model.name!r} is one of cnnkit's own architectures and trains from scratch "
                "(--weights RUN starts it from an earlier run)"
            )


def _check_loggers(loggers: str | None) -> None:
    for name in (loggers or "").split(","):
        if name.strip() and name.strip().lower() not in TRACKERS:
            raise unknown_name("logger", name.strip(), TRACKERS)


def check_choice(dotted: str, value: Any) -> Any:
    """``value`` itself when it is one of ``dotted``'s declared choices; else the key's
    "unknown X" UsageError (for modules that take such a value outside a config)."""
    spec = next(spec for name, _, spec in schema() if name == dotted)
    if value not in spec.choices:
        raise unknown_name(spec.kind, value, spec.choices)
    return value


# ----------------------------------------------------------------------------- the commands' own rules


def _is_onnx(path: str | None) -> bool:
    return str(path or "").lower().endswith(".onnx")


def check_backend(model: str | Path, backend: str, amp: str = "off") -> None:
    """A backend that exists and can run ``model`` (a checkpoint, run folder or ``.onnx`` file) with ``amp``.

    Raises:
        UsageError: saying which option to change.
    """
    check_choice_of("--backend", backend)
    if _is_onnx(str(model)) and backend == "torch":
        raise UsageError(f"{model} is an ONNX file: it runs in onnxruntime or openvino; "
                         "give the run folder or .pt checkpoint for --backend torch")  # fmt: skip
    if _is_onnx(str(model)) and amp != "off":
        raise UsageError("--amp applies to the torch backend; an ONNX file runs in its own precision")


def check_choice_of(flag: str, value: Any) -> None:
    """``value`` is one of the choices of the shared option ``flag`` (e.g. ``--backend``)."""
    spec = next(spec for spec in SHARED.values() if spec.flag == flag)
    if value not in spec.choices:
        raise unknown_name(spec.kind, value, spec.choices)


def _predict_rules(options: Any) -> None:
    check_backend(options.model, options.backend, options.amp)


def _serve_rules(options: Any) -> None:
    check_backend(options.checkpoint, options.backend)


def _export_rules(options: Any) -> None:
    _check_suffix(options.out, options.fmt)
    if options.fmt != "onnx" and options.precision != "fp32":
        raise UsageError(f"--precision {options.precision} applies to --format onnx (TorchScript files are float32)")
    if options.fmt != "onnx" and (options.dynamic_batch or options.opset is not None):
        raise UsageError(
            "--dynamic-batch and --opset apply to --format onnx (a traced TorchScript file takes any batch)"
        )


def _check_suffix(out: str | None, fmt: str) -> None:
    """``--out`` must end as a ``fmt`` file does: an ONNX file named ``model.txt`` misleads every reader."""
    if out is None or fmt not in EXPORT_SUFFIXES or Path(out).suffix.lower() in EXPORT_SUFFIXES[fmt]:
        return
    wanted = EXPORT_SUFFIXES[fmt][0]
    kind = {"onnx": "an ONNX", "torchscript": "a TorchScript"}[fmt]
    raise UsageError(f"--out {out}: {kind} file must end in {' or '.join(EXPORT_SUFFIXES[fmt])}, "
                     f"e.g. --out {Path(out).with_suffix(wanted)}")  # fmt: skip


def _check_rules(options: Any) -> None:
    from cnnkit.config.options import LABEL_ONLY_OPTIONS

    if options.labels:
        if options.quick:
            raise UsageError("--labels decodes every image; it cannot run with --quick")
        return
    used = [f"--{name.replace('_', '-')}" for name in LABEL_ONLY_OPTIONS if getattr(options, name) is not None]
    if used:
        raise UsageError(f"{', '.join(used)} only apply to the label check: add --labels")


# The rules of each command's options (by class name: the classes live in cnnkit.config.options).
_RULES: dict[str, Callable[[Any], None]] = {
    "PredictOptions": _predict_rules, "ServeOptions": _serve_rules, "ExportOptions": _export_rules,
    "CheckOptions": _check_rules,
}  # fmt: skip

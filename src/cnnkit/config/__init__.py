"""Typed run configuration: dataclass defaults < recipe YAML < --config file < flags.

Every config key is declared once, as a dataclass field whose metadata (:class:`Key`, made
by :func:`key`) holds its help text, its command-line flag (or none), its allowed range or
choices. From that one declaration come the argparse flags (:func:`add_config_flags`), the
overrides a command line sets (:func:`overrides_from_args`), the validation of a whole
config (:func:`validate`) and the ``Attributes`` section of each class's docstring.

A :class:`RunConfig` is the single source of truth for a run; the resolved config is
written to ``config.yaml`` in the run folder (:func:`to_yaml`) and stored in every
checkpoint, so a run can be re-created from it alone. Overrides always go through
:func:`apply_overrides` with dotted keys (``"train.lr"``), whether they come from YAML,
flags or Python keywords (:func:`keyword_overrides`).

This package imports neither torch nor numpy: ``cnnkit --help`` and a bad value such as
``--lr -1`` are answered without loading them. The choice lists of torch-using modules
(optimizers, AMP modes, TTA modes...) therefore live here, and those modules import them.

Layout (import every name from ``cnnkit.config`` itself): :mod:`~cnnkit.config.choices`
(the choice tuples), :mod:`~cnnkit.config.keys` (:class:`Key`, :func:`key`, the four
dataclasses, :func:`schema`), :mod:`~cnnkit.config.flags` (argparse),
:mod:`~cnnkit.config.checks` (:func:`validate`, :func:`check_choice`, :func:`check_backend`),
:mod:`~cnnkit.config.resolve` (:func:`resolve_config`, overrides, YAML) and
:mod:`~cnnkit.config.options` (the options of every other command: :class:`PredictOptions`,
:class:`ExportOptions`..., built from the same declarations and the :data:`SHARED` options).
"""

from __future__ import annotations

from cnnkit.config.checks import check_backend, check_choice, validate
from cnnkit.config.choices import (
    AMP_MODES,
    AUGMENT_BACKENDS,
    AUGMENT_POLICIES,
    AUGMENT_PRESETS,
    BACKBONE_SOURCES,
    BACKEND_CHOICES,
    BACKENDS,
    BALANCE_MODES,
    DEFAULT_VAL_FRACTION,
    EXPORT_FORMATS,
    EXPORT_PRECISIONS,
    EXPORT_SUFFIXES,
    INTERPOLATIONS,
    METRIC_ALIASES,
    OPTIMIZERS,
    SCHEDULERS,
    SELECT_METRICS,
    SWITCH_MODES,
    TRACKERS,
    TTA_MODES,
)
from cnnkit.config.flags import (
    MODEL_KWARG_FLAGS,
    MODEL_KWARG_SWITCHES,
    add_config_flags,
    add_option_flags,
    config_flags,
    options_from_args,
    overrides_from_args,
)
from cnnkit.config.keys import (
    SHARED,
    DataConfig,
    Key,
    ModelConfig,
    RunConfig,
    TrainConfig,
    flag_of,
    key,
    schema,
    shared,
    valid_keys,
)
from cnnkit.config.options import (
    CheckOptions,
    EvalOptions,
    ExplainOptions,
    ExportOptions,
    LrFindOptions,
    NoOptions,
    PredictOptions,
    ReportOptions,
    RunsOptions,
    ServeOptions,
    StudioOptions,
    SummaryOptions,
    TrainCommandOptions,
    option_values,
)
from cnnkit.config.resolve import (
    apply_overrides,
    config_from_dict,
    flatten,
    keyword_overrides,
    load_yaml,
    resolve_config,
    save_yaml,
    to_yaml,
    upgrade_legacy,
)

__all__ = [
    "AMP_MODES",
    "AUGMENT_BACKENDS",
    "AUGMENT_POLICIES",
    "AUGMENT_PRESETS",
    "BACKBONE_SOURCES",
    "BACKENDS",
    "BACKEND_CHOICES",
    "BALANCE_MODES",
    "DEFAULT_VAL_FRACTION",
    "EXPORT_FORMATS",
    "EXPORT_PRECISIONS",
    "EXPORT_SUFFIXES",
    "INTERPOLATIONS",
    "METRIC_ALIASES",
    "MODEL_KWARG_FLAGS",
    "MODEL_KWARG_SWITCHES",
    "OPTIMIZERS",
    "SCHEDULERS",
    "SELECT_METRICS",
    "SHARED",
    "SWITCH_MODES",
    "TRACKERS",
    "TTA_MODES",
    "CheckOptions",
    "DataConfig",
    "EvalOptions",
    "ExplainOptions",
    "ExportOptions",
    "Key",
    "LrFindOptions",
    "ModelConfig",
    "NoOptions",
    "PredictOptions",
    "ReportOptions",
    "RunConfig",
    "RunsOptions",
    "ServeOptions",
    "StudioOptions",
    "SummaryOptions",
    "TrainCommandOptions",
    "TrainConfig",
    "add_config_flags",
    "add_option_flags",
    "apply_overrides",
    "config_from_dict",
    "check_backend",
    "check_choice",
    "config_flags",
    "flag_of",
    "flatten",
    "key",
    "keyword_overrides",
    "load_yaml",
    "option_values",
    "options_from_args",
    "overrides_from_args",
    "resolve_config",
    "save_yaml",
    "schema",
    "shared",
    "to_yaml",
    "upgrade_legacy",
    "valid_keys",
    "validate",
]

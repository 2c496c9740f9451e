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
:mod:`~cnnkit.config.checks` (:func:`validate`, :func:`check_choice`) and
:mod:`~cnnkit.config.resolve` (:func:`resolve_config`, overrides, YAML).
"""

from __future__ import annotations

from cnnkit.config.checks import check_choice, validate
from cnnkit.config.choices import (
    AMP_MODES,
    AUGMENT_BACKENDS,
    AUGMENT_POLICIES,
    AUGMENT_PRESETS,
    BALANCE_MODES,
    DEFAULT_VAL_FRACTION,
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
    config_flags,
    overrides_from_args,
)
from cnnkit.config.keys import (
    DataConfig,
    Key,
    ModelConfig,
    RunConfig,
    TrainConfig,
    flag_of,
    key,
    schema,
    valid_keys,
)
from cnnkit.config.resolve import (
    apply_overrides,
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
    "BALANCE_MODES",
    "DEFAULT_VAL_FRACTION",
    "INTERPOLATIONS",
    "METRIC_ALIASES",
    "MODEL_KWARG_FLAGS",
    "MODEL_KWARG_SWITCHES",
    "OPTIMIZERS",
    "SCHEDULERS",
    "SELECT_METRICS",
    "SWITCH_MODES",
    "TRACKERS",
    "TTA_MODES",
    "DataConfig",
    "Key",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "add_config_flags",
    "apply_overrides",
    "check_choice",
    "config_flags",
    "flag_of",
    "flatten",
    "key",
    "keyword_overrides",
    "load_yaml",
    "overrides_from_args",
    "resolve_config",
    "save_yaml",
    "schema",
    "to_yaml",
    "upgrade_legacy",
    "valid_keys",
    "validate",
]

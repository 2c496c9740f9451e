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

This module imports neither torch nor numpy: ``cnnkit --help`` and a bad value such as
``--lr -1`` are answered without loading them. The choice lists of torch-using modules
(optimizers, AMP modes, TTA modes...) therefore live here, and those modules import them.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cnnkit.errors import UsageError, nearest, unknown_name

# ----------------------------------------------------------------------------- choices

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "step", "cosine", "onecycle", "triangle")
AMP_MODES = ("auto", "off", "bf16", "fp16")
TTA_MODES = ("none", "flip", "shift", "flip-shift")
SWITCH_MODES = ("auto", "on", "off")  # --channels-last, --compile, --cache-features, --decode-cache
# The names of data.transforms.AUGMENT_PRESETS (a test checks that the two agree).
AUGMENT_PRESETS = ("none", "flip", "crop-flip", "animals", "flowers", "digits", "crop-flip-cutout", "airbench",
                   "randaugment", "trivialaugment", "autoaugment")  # fmt: skip
AUGMENT_POLICIES = ("none", "randaugment", "trivialaugment", "autoaugment")
AUGMENT_BACKENDS = ("torchvision", "kornia")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
BALANCE_MODES = ("none", "weights", "sampler")
TRACKERS = ("tensorboard", "mlflow", "wandb")
# metrics.csv columns that can pick best.pt, and the plain names accepted for them.
SELECT_METRICS = ("val_acc", "val_balanced_acc", "val_macro_f1", "val_top5", "val_loss")
METRIC_ALIASES = {"accuracy": "val_acc", "balanced_accuracy": "val_balanced_acc", "macro_f1": "val_macro_f1",
                  "top5": "val_top5", "loss": "val_loss"}  # fmt: skip
# Folder/CSV datasets with neither a val nor a test split hold out this fraction when
# val_fraction is None (the default).
DEFAULT_VAL_FRACTION = 0.2

# ----------------------------------------------------------------------------- the schema


@dataclass(frozen=True)
class Key:
    """What a config field declares besides its type and default.

    Attributes:
        help: one line for ``--help`` (and the docstring, unless ``doc`` is given).
        doc: the longer explanation for the class docstring (default: ``help``).
        flag: the command-line option that sets it (None: only ``--set``, YAML, Python).
        switches: value-less options as ``(flag, value it sets, help)``.
        choices: the allowed values (empty: any value of the type).
        kind: what a choice is called in the "unknown X" error (empty: "must be one of").
        gt, ge, lt, le: bounds of a number (or of each item of a list of numbers).
        unless: a boolean field of the same section that switches the bounds check off.
        parse: the argparse ``type`` of ``flag`` (None: from the annotation).
    """

    help: str
    doc: str = ""
    flag: str | None = None
    switches: tuple[tuple[str, Any, str], ...] = ()
    choices: tuple[Any, ...] = ()
    kind: str = ""
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    unless: str | None = None
    parse: Callable[[str], Any] | None = None


def key(default: Any = None, help: str = "", *, factory: Callable[[], Any] | None = None, **spec: Any) -> Any:
    """A dataclass field carrying its :class:`Key` (``help``, ``flag``, bounds...) as metadata."""
    meta = {"cnnkit": Key(help=help, **spec)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _lr_value(text: str) -> float | str:
    """``--lr``: a number, or ``auto`` (the range test picks it)."""
    return text if text == "auto" else float(text)


def _documented(klass: type) -> type:
    """Append an ``Attributes`` section built from each field's :class:`Key`."""
    lines = []
    for item in dataclasses.fields(klass):
        spec = item.metadata.get("cnnkit")
        if spec is not None:
            flag = f" (``{spec.flag}``)" if spec.flag else ""
            lines.append(f"        {item.name}: {spec.doc or spec.help}{flag}")
    klass.__doc__ = (klass.__doc__ or "").rstrip() + "\n\n    Attributes:\n" + "\n".join(lines) + "\n"
    return klass


@_documented
@dataclass
class DataConfig:
    """Where the images come from and how they are split, resized and augmented."""

    name: str = key("embedded-mnist", "dataset name, class-per-folder path or CSV file", flag="--data", doc=(
        "a registered dataset name (``mnist``, ``cifar10``...), a path to a class-per-folder tree or a "
        "``path,label`` CSV file, or your own torch ``Dataset`` as ``FILE.py:NAME`` / ``package.module:NAME`` "
        "(see :mod:`cnnkit.data.custom`)."))  # fmt: skip
    kwargs: dict[str, Any] = key(factory=dict,
                                 help="keyword arguments for your own dataset's constructor (``root``...)")
    data_dir: str | None = key(None, "folder holding torchvision datasets (e.g. ../shared/data)", flag="--data-dir",
                               doc="folder holding torchvision datasets (None: ``$CNNKIT_DATA_DIR`` or the user cache "
                                   "folder).")  # fmt: skip
    download: bool = key(True, "allow downloading torchvision datasets that are not in ``data_dir``",
                         switches=(("--no-download", False, "never download datasets"),))  # fmt: skip
    val_fraction: float | None = key(
        None, "fraction of training images held out for validation (default: 0.2 when the data has neither a "
              "val nor a test split, else none; 0: none, validate on the test split)",
        flag="--val-fraction", ge=0, lt=1, doc=(
            "fraction of each class of the training images held out for validation when the dataset has no "
            "validation split of its own. None (the default): 0.2 when it has no test split either, else none. "
            "0: none. With no validation split the run validates on the test split (registered datasets such "
            "as mnist and cifar10 have one: they validate on it unless val_fraction > 0); with neither, the "
            "run stops with an error."))  # fmt: skip
    test_fraction: float | None = key(None, "fraction held out for testing (folders without test/; default 0: none)",
                                      flag="--test-fraction", ge=0, lt=1)  # fmt: skip
    image_size: int | None = key(None, "side of the square input the model sees", flag="--image-size", ge=1,
                                 doc="side of the square the model sees (None: the dataset's own size).")  # fmt: skip
    resize: int | None = key(None, "resize the short side to this before the centre crop", flag="--resize", ge=1,
                             doc="short side to resize to before the centre crop (None: image_size).")  # fmt: skip
    interpolation: str | None = key(None, "resampling: bilinear, bicubic or nearest", flag="--interpolation",
                                    choices=INTERPOLATIONS, kind="interpolation", doc=(
                                        "resampling for resizing files: ``bilinear``, ``bicubic`` or ``nearest`` "
                                        "(None: the pretrained weights' own, else bilinear)."))  # fmt: skip
    augment: str = key("none", "augmentation preset: none, flip, crop-flip, crop-flip-cutout, airbench, animals, "
                       "flowers, digits", flag="--augment", choices=AUGMENT_PRESETS,
                       kind="augmentation preset")  # fmt: skip
    augment_policy: str | None = key(
        None, "add a policy after the preset's crop/flip: randaugment, trivialaugment, autoaugment, none",
        flag="--augment-policy", choices=AUGMENT_POLICIES, kind="augmentation policy")  # fmt: skip
    random_erasing: float | None = key(None, "random erasing probability (a 2-33% box set to the mean), e.g. 0.25",
                                       flag="--random-erasing", ge=0, le=1)  # fmt: skip
    augment_backend: str = key("torchvision", "policy on in-memory batches: torchvision (per image) or kornia "
                               "(batched; cnnkit[kornia])", flag="--augment-backend", choices=AUGMENT_BACKENDS,
                               kind="augmentation policy backend")  # fmt: skip
    augment_eval: bool = key(False, "apply the train augmentation to evaluation too (a seed defect, kept only to "
                             "reproduce it)", switches=(("--augment-eval", True, "also augment evaluation images "
                                                         "(a seed defect)"),))  # fmt: skip
    mean: list[float] | None = key(None, "normalisation mean, comma-separated (default: the dataset's)", flag="--mean",
                                   parse=str)  # fmt: skip
    std: list[float] | None = key(None, "normalisation std, comma-separated (default: the dataset's)", flag="--std",
                                  parse=str, gt=0)  # fmt: skip
    channels: int | None = key(None, "force 1 (grey) or 3 (RGB) input channels", flag="--channels", choices=(1, 3))
    batch_size: int = key(64, "images per training step", flag="--batch-size", ge=1)
    eval_batch_size: int | None = key(None, "images per evaluation step (None: 2 x batch_size, at least 256)", ge=1)
    workers: int = key(2, "decoding worker processes for folder datasets", flag="--workers", ge=0)
    shuffle: bool = key(True, "shuffle the training set every epoch",
                        switches=(("--no-shuffle", False, "do not shuffle the training set"),))  # fmt: skip
    limit_train: int | None = key(None, "use a random subset of N training images", flag="--limit-train", ge=1)
    limit_eval: int | None = key(None, "use a random subset of N validation/test images", flag="--limit-eval", ge=1)
    balance: str = key("none", "class imbalance: none, weights (loss weights) or sampler (balanced batches)",
                       flag="--balance", choices=BALANCE_MODES, kind="--balance mode")  # fmt: skip
    decode_cache: str = key(
        "auto", "folder datasets: keep decoded images in a memory-mapped cache: auto, on, off", flag="--decode-cache",
        choices=SWITCH_MODES, kind="--decode-cache mode", doc=(
            "folder datasets: ``auto`` (keep decoded, resized uint8 images in a memory-mapped file under cnnkit's "
            "cache folder when they fit, so epochs after the first, and later runs, skip JPEG decoding), ``on`` "
            "(always) or ``off``."))  # fmt: skip


@_documented
@dataclass
class ModelConfig:
    """Which architecture to build and which weights to start from."""

    name: str = key("lenet", "model name (see `cnnkit models`), timm:NAME / tv:NAME backbones, or your own: "
                    "FILE.py:NAME or package.module:NAME", flag="--model")  # fmt: skip
    kwargs: dict[str, Any] = key(factory=dict, help="the builder's own arguments (``head_hidden``, ``head_dropout``, "
                                 "``dropout``...)")  # fmt: skip
    pretrained: bool = key(False, "start the backbone from pretrained weights (hub, cache or offline package)",
                           switches=(("--pretrained", True, "start a timm:/tv: backbone from pretrained weights"),
                                     ("--no-pretrained", False,
                                      "start from random weights (overrides a recipe)")))  # fmt: skip
    weights: str | None = key(None, "start from this weights file (state dict, safetensors or checkpoint)",
                              flag="--weights")  # fmt: skip


@_documented
@dataclass
class TrainConfig:
    """How to train. Learning rates are per optimizer step at the configured batch size."""

    epochs: int = key(10, "passes over the training set", flag="--epochs", ge=1)
    optimizer: str = key("adam", "sgd, adam or adamw", flag="--optimizer", choices=OPTIMIZERS, kind="optimizer")
    lr: float = key(1e-3, "peak learning rate, or auto: run the learning-rate range test first and use its "
                    "suggestion", flag="--lr", gt=0, unless="lr_find", parse=_lr_value)  # fmt: skip
    momentum: float = key(0.9, "SGD momentum", flag="--momentum", ge=0, lt=1)
    nesterov: bool = key(False, "use Nesterov momentum with SGD",
                         switches=(("--nesterov", True, "Nesterov momentum for SGD"),))  # fmt: skip
    weight_decay: float = key(0.0, "L2 weight decay", flag="--weight-decay", ge=0,
                              doc="L2 penalty (decoupled for AdamW).")  # fmt: skip
    scheduler: str = key("none", "none, step, cosine, onecycle or triangle", flag="--scheduler", choices=SCHEDULERS,
                         kind="scheduler")  # fmt: skip
    warmup_epochs: float = key(0.0, "linear warm-up length in epochs", flag="--warmup-epochs", ge=0)
    step_size: int = key(10, "epochs between decays for the ``step`` scheduler", ge=1)
    gamma: float = key(0.1, "decay factor for the ``step`` scheduler", gt=0)
    label_smoothing: float = key(0.0, "cross-entropy label smoothing", flag="--label-smoothing", ge=0, lt=1)
    grad_clip: float | None = key(None, "clip the gradient norm to this value", flag="--grad-clip", gt=0,
                                  doc="clip the global gradient norm to this value (None: no clipping).")  # fmt: skip
    amp: str = key("auto", "mixed precision: auto, off, bf16, fp16", flag="--amp", choices=AMP_MODES, kind="amp mode",
                   doc="mixed precision: ``auto`` (bf16 on CUDA, off elsewhere), ``off``, ``bf16``, "
                       "``fp16``.")  # fmt: skip
    device: str = key("auto", "auto, cpu, cuda, cuda:N or mps", flag="--device")
    seed: int = key(0, "random seed (split, init, order)", flag="--seed",
                    doc="seed for Python, NumPy and torch RNGs and the data split.")  # fmt: skip
    deterministic: bool = key(False, "ask torch for deterministic kernels (slower, reproducible)",
                              switches=(("--deterministic", True,
                                         "deterministic kernels (reproducible, slower)"),))  # fmt: skip
    patience: int | None = key(None, "early stopping after N epochs without improvement", flag="--patience", ge=1)
    save_every: int | None = key(None, "also keep a checkpoint every N epochs", flag="--save-every", ge=1)
    checkpoint_every_steps: int | None = key(
        None, "also save last.pt every N steps (resume mid-epoch)", flag="--checkpoint-every-steps", ge=1)
    select_metric: str = key(
        "val_acc", "metric that picks best.pt: accuracy, balanced_accuracy, macro_f1, top5, loss",
        flag="--select-metric", choices=(*METRIC_ALIASES, *SELECT_METRICS), kind="select metric", doc=(
            "validation metric that decides ``best.pt``: ``accuracy`` (= ``val_acc``), ``balanced_accuracy`` (mean "
            "per-class recall), ``macro_f1``, ``top5`` or ``loss`` (lower is better; every other metric is "
            "maximised)."))  # fmt: skip
    log_every: int = key(20, "steps between progress-bar refreshes of the running loss", ge=1)
    threads: int | None = key(None, "CPU threads for torch (default: one per core)", flag="--threads", ge=1)
    freeze: bool = key(False, "train only the head of a backbone model (backbone weights and BatchNorm statistics "
                       "frozen)", switches=(("--freeze", True, "train only the new head; the backbone stays "
                                             "frozen"),))  # fmt: skip
    fine_tune: list[int] | None = key(
        None, "E1,E2: head only for E1 epochs, then all layers for E2 epochs", flag="--fine-tune", parse=str, doc=(
            "``[E1, E2]``: train the head alone for E1 epochs, then everything for E2 epochs with the backbone at "
            "``backbone_lr_scale`` x lr (replaces ``epochs``)."))  # fmt: skip
    backbone_lr_scale: float = key(0.1, "backbone lr as a fraction of --lr when fine-tuning (default 0.1)",
                                   flag="--backbone-lr-scale", gt=0, le=10)  # fmt: skip
    cache_features: str = key(
        "auto", "compute a frozen backbone's features once: auto (when training images are not augmented), on, off",
        choices=SWITCH_MODES, kind="--cache-features mode",
        switches=(("--cache-features", "on", "cache frozen-backbone features even with augmentation"),
                  ("--no-cache-features", "off", "never cache backbone features")))  # fmt: skip
    tta: str = key("none", "test-time augmentation when validating/testing: none, flip, shift, flip-shift",
                   flag="--tta", choices=TTA_MODES, kind="test-time augmentation mode")  # fmt: skip
    channels_last: str = key("auto", "channels-last memory format: auto (CUDA), on, off", flag="--channels-last",
                             choices=SWITCH_MODES, kind="--channels-last mode")  # fmt: skip
    compile: str = key("auto", "torch.compile: auto (CUDA, when it pays off), on, off", flag="--compile",
                       choices=SWITCH_MODES, kind="--compile mode")  # fmt: skip
    profile: int = key(0, "print where the time of the first N epochs went", flag="--profile", ge=0)
    no_decay_norm_bias: bool = key(
        False, "no weight decay on normalisation-layer parameters and biases",
        switches=(("--no-decay-norm-bias", True, "no weight decay on normalisation layers and biases"),))  # fmt: skip
    norm_lr_scale: float = key(1.0, "learning-rate multiplier for normalisation-layer parameters; their weight decay "
                               "is divided by it, so the decay per step is unchanged", gt=0, le=1000)  # fmt: skip
    lr_start_factor: float = key(0.0, "``triangle`` schedule: learning rate at step 0 as a fraction of lr", ge=0, le=1)
    lr_end_factor: float = key(0.0, "``triangle`` and ``cosine`` schedules: learning rate at the last step as a "
                               "fraction of lr", ge=0, le=1)  # fmt: skip
    lookahead: bool = key(False, "airbench's lookahead: every 5 steps pull the weights (and BatchNorm statistics) "
                          "toward a running average of themselves; the last step takes the average")  # fmt: skip
    accumulate: int = key(1, "batches per optimizer step (gradient accumulation)", flag="--accumulate", ge=1)
    ema: float | None = key(None, "keep an EMA of the weights with this decay (e.g. 0.999; 0: off); it is what gets "
                            "evaluated and saved", flag="--ema", ge=0, lt=1)  # fmt: skip
    mixup: float = key(0.0, "mixup alpha (e.g. 0.2; 0: off)", flag="--mixup", ge=0)
    cutmix: float = key(0.0, "cutmix alpha (e.g. 1.0; 0: off)", flag="--cutmix", ge=0)
    mix_prob: float = key(1.0, "probability that a batch is mixed (default 1)", flag="--mix-prob", ge=0, le=1)
    lr_find: bool = key(False, "run the learning-rate range test first and train at its suggestion (``--lr auto``); "
                        "``lr`` is then replaced by the suggestion in ``config.yaml``")  # fmt: skip
    sync_bn: bool = key(False, "under torchrun, synchronise BatchNorm statistics across processes",
                        switches=(("--sync-bn", True, "torchrun: synchronise BatchNorm statistics across "
                                   "processes"),))  # fmt: skip


@_documented
@dataclass
class RunConfig:
    """Everything that defines a run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str | None = key(None, "run folder name (default: recipe/model + time)", flag="--name")
    output_dir: str = key("runs", "parent folder of run folders (default: runs)", flag="--output-dir")
    recipe: str | None = key(None, "the recipe this config started from (informational)")
    expected: str | None = key(None, "the result the recipe is expected to reach (informational)")
    notes: str | None = key(None, "what the recipe changed from its seed tutorial and why")
    report: bool = key(True, "write report/ (HTML + PNGs) into the run folder when training ends",
                       switches=(("--no-report", False,
                                  "do not write report/ (HTML + PNGs) when training ends"),))  # fmt: skip
    tensorboard: bool = key(True, "write TensorBoard event files to tensorboard/ in the run folder",
                            switches=(("--no-tensorboard", False, "do not write TensorBoard event files "
                                       "(RUN/tensorboard/)"),))  # fmt: skip
    loggers: str | None = key(None, "also log to these trackers, comma-separated: mlflow, wandb (TensorBoard is on "
                              "unless --no-tensorboard)", flag="--log")  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON/checkpoint safe)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """Build from a nested dict, rejecting unknown keys with the nearest valid one named."""
        cfg = cls()
        apply_overrides(cfg, flatten(values))
        return cfg


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

_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
_KWARGS_KEYS = ("model.kwargs", "data.kwargs")  # free-form dicts of a builder's own arguments
# Short keyword names accepted by train(); every other config field is reachable by its own name.
_ALIASES = {"data": "data.name", "model": "model.name", "model_kwargs": "model.kwargs", "data_kwargs": "data.kwargs",
            "name": "name"}  # fmt: skip


@functools.cache
def schema() -> tuple[tuple[str, dataclasses.Field, Key], ...]:
    """``(dotted key, dataclass field, Key)`` of every declared key, in declaration order."""
    rows = []
    for prefix, klass in (("", RunConfig), *((f"{s}.", k) for s, k in _SECTIONS.items())):
        for item in dataclasses.fields(klass):
            spec = item.metadata.get("cnnkit")
            if spec is not None:
                rows.append((prefix + item.name, item, spec))
    return tuple(rows)


def flag_of(dotted: str) -> str:
    """How errors name a key: its flag (``--lr``) when it has one, else the dotted key."""
    for name, _, spec in schema():
        if name == dotted:
            return spec.flag or (spec.switches[0][0] if len(spec.switches) == 1 else dotted)
    return dotted


# ----------------------------------------------------------------------------- parser


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


def _lr_auto(overrides: dict[str, Any]) -> dict[str, Any]:
    """``train.lr=auto`` -> ``train.lr_find=True`` (the range test picks the rate)."""
    if overrides.get("train.lr") == "auto":
        overrides = {k: v for k, v in overrides.items() if k != "train.lr"} | {"train.lr_find": True}
    return overrides


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


# ----------------------------------------------------------------------------- validation


def validate(cfg: RunConfig) -> None:
    """Check every value of ``cfg`` against its declared type, range and choices, and the
    rules that tie keys together; call it before anything is written.

    Raises:
        UsageError: one line naming the flag (or key) and what is valid, e.g.
            ``--lr must be > 0, got -1`` or ``unknown optimizer 'adm'; did you mean 'adam'? ...``.
    """
    for dotted, item, spec in schema():
        section, _, name = dotted.rpartition(".")
        owner = getattr(cfg, section) if section else cfg
        if spec.unless and getattr(owner, spec.unless):
            continue
        _check_value(dotted, getattr(owner, name), str(item.type), spec)
    _check_fractions(cfg.data)
    _check_stats(cfg.data)
    _check_fine_tune(cfg.train.fine_tune)
    _check_loggers(cfg.loggers)


def _check_value(dotted: str, value: Any, type_name: str, spec: Key) -> None:
    """One key's value: its type, then its choices or bounds."""
    where = flag_of(dotted)
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


def _check_type(where: str, value: Any, type_name: str) -> None:
    """A value set in Python (not parsed from text) must already have the field's type."""
    base = type_name.split("|")[0].split("[")[0].strip()
    kinds: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,),
                                          "list": (list, tuple), "dict": (dict,)}  # fmt: skip
    wanted = kinds.get(base)
    if wanted and (not isinstance(value, wanted) or (isinstance(value, bool) and base in ("int", "float"))):
        raise UsageError(f"{where} expects {type_name}, got {value!r}")


def _check_bounds(where: str, value: Any, spec: Key) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
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


# ----------------------------------------------------------------------------- resolving


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
    if recipe is not None:
        apply_overrides(cfg, flatten(recipe_config_values(recipe)))
    if config_file is not None:
        apply_overrides(cfg, flatten(load_yaml(config_file)))
    apply_overrides(cfg, overrides)
    validate(cfg)
    return cfg


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


def valid_keys() -> list[str]:
    """All dotted config keys, for error messages and documentation."""
    keys = [f.name for f in dataclasses.fields(RunConfig) if f.name not in _SECTIONS]
    for section, klass in _SECTIONS.items():
        keys += [f"{section}.{f.name}" for f in dataclasses.fields(klass)]
    return keys


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

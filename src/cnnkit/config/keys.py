"""The config schema: every key declared once, as a dataclass field carrying a :class:`Key`.

This module owns :class:`Key` and :func:`key` (a field's help text, flag, switches, choices
and bounds), the four config dataclasses (:class:`DataConfig`, :class:`ModelConfig`,
:class:`TrainConfig`, :class:`RunConfig`, each with an ``Attributes`` docstring section
built from its keys) and the read-only views of that declaration the other modules use:
:func:`schema` (every key in order), :func:`flag_of` (how errors name a key) and
:func:`valid_keys`. It parses, validates and resolves nothing itself.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cnnkit.config.choices import (
    AMP_MODES,
    AUGMENT_BACKENDS,
    AUGMENT_POLICIES,
    AUGMENT_PRESETS,
    BACKEND_CHOICES,
    BALANCE_MODES,
    INTERPOLATIONS,
    METRIC_ALIASES,
    OPTIMIZERS,
    SCHEDULERS,
    SELECT_METRICS,
    SWITCH_MODES,
    TTA_MODES,
)


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
        positional: a command's argument without a flag (``MODEL``, ``PATH...``); command options only.
        nargs, const, metavar, action: passed to argparse as they are (``action="append"``:
            repeatable); command options only (a bool option with a flag is ``store_true``).
        group: the ``--help`` section the option is listed under (empty: the command's own).
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
    positional: bool = False
    nargs: int | str | None = None
    const: Any = None
    metavar: str | tuple[str, ...] | None = None
    action: str | None = None
    group: str = ""


def key(default: Any = None, help: str = "", *, factory: Callable[[], Any] | None = None, **spec: Any) -> Any:
    """A dataclass field carrying its :class:`Key` (``help``, ``flag``, bounds...) as metadata."""
    meta = {"cnnkit": Key(help=help, **spec)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# The options several commands share, each declared once: its flag, type, range, choices and
# help. A command (or config section) takes one with :func:`shared`, giving only its default and,
# where the option means something narrower there, its own help sentence.
SHARED: dict[str, Key] = {
    "device": Key("where the model runs: auto (CUDA when present, else MPS or CPU), cpu, cuda, cuda:N or mps",
                  flag="--device"),
    "batch_size": Key("images per forward pass", flag="--batch-size", ge=1),
    "workers": Key("decoding worker processes (0: in the main process)", flag="--workers", ge=0),
    "data_dir": Key("folder holding torchvision datasets (e.g. ../shared/data)", flag="--data-dir"),
    "tta": Key("test-time augmentation: none, flip, shift, flip-shift", flag="--tta", choices=TTA_MODES,
               kind="test-time augmentation mode"),
    "amp": Key("mixed precision: auto (bf16 on CUDA), off, bf16, fp16", flag="--amp", choices=AMP_MODES,
               kind="amp mode"),
    "threads": Key("CPU threads for torch (default: one per core)", flag="--threads", ge=1),
    "seed": Key("random seed", flag="--seed"),
    "split": Key("which split: test, val or train (default: test when the run has one, else val)", flag="--split",
                 choices=("test", "val", "train"), kind="split"),
    "out": Key("where the output goes", flag="--out"),
    "json": Key("print JSON instead of a table", flag="--json"),
    "no_progress": Key("no progress bar", flag="--no-progress"),
    "host": Key("interface to bind (default 127.0.0.1: this machine only; 0.0.0.0 lets everyone on the network use "
                "the page, with no login: see the README's threat model)", flag="--host"),
    "port": Key("TCP port of the page", flag="--port", ge=1, le=65535),
    "topk": Key("classes listed per image", flag="--topk", ge=1),
    "backend": Key("auto: ONNX Runtime when the export extra is installed (a checkpoint runs through an ONNX file "
                   "built once, checked and cached), else torch; or torch, onnxruntime, openvino", flag="--backend",
                   choices=BACKEND_CHOICES, kind="backend"),
    "trust_code": Key("import this file or module if the checkpoint's model or dataset is your own code "
                      "(checkpoints only record it; repeatable)", flag="--trust-code", action="append",
                      metavar="FILE_OR_MODULE"),
}  # fmt: skip


def shared(name: str, default: Any = None, help: str = "", *, factory: Callable[[], Any] | None = None,
           **shown: Any) -> Any:
    """A field for the shared option ``name`` (:data:`SHARED`), with this command's default.

    ``help`` replaces the shared sentence where the option means something narrower here
    (``images per training step``); ``shown`` may set only how it is shown (``doc``,
    ``metavar``, ``group``). Flag, type, range and choices are the shared declaration's.
    """
    if set(shown) - {"doc", "metavar", "group"}:
        raise TypeError(f"shared({name!r}): only help, doc, metavar and group may differ, got {sorted(shown)}")
    base = SHARED[name].help
    if not help and default is not None and not isinstance(default, bool) and "default" not in base:
        help = f"{base} (default: {default})"  # the one thing a command changes, shown in its --help
    spec = dataclasses.replace(SHARED[name], help=help or base, **shown)
    meta = {"cnnkit": spec}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# Largest --image-size/--resize: 8192 px is beyond any photo classifier's input, and a batch of
# such images is already gigabytes (memory is estimated against the machine before training).
MAX_IMAGE_SIDE = 8192


def _lr_value(text: str) -> float | str:
    """``--lr``: a number, or ``auto`` (the range test picks it)."""
    return text if text == "auto" else float(text)


def _lr_auto(overrides: dict[str, Any]) -> dict[str, Any]:
    """``train.lr=auto`` -> ``train.lr_find=True`` (the range test picks the rate)."""
    if overrides.get("train.lr") == "auto":
        overrides = {k: v for k, v in overrides.items() if k != "train.lr"} | {"train.lr_find": True}
    return overrides


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
    data_dir: str | None = shared("data_dir", None, doc="folder holding torchvision datasets (None: "
                                  "``$CNNKIT_DATA_DIR`` or the user cache folder).")  # fmt: skip
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
                                 le=MAX_IMAGE_SIDE,
                                 doc="side of the square the model sees (None: the dataset's own size).")  # fmt: skip
    resize: int | None = key(None, "resize the short side to this before the centre crop", flag="--resize", ge=1,
                             le=MAX_IMAGE_SIDE,
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
    batch_size: int = shared("batch_size", 64, "images per training step")
    eval_batch_size: int | None = key(None, "images per evaluation step (None: 2 x batch_size, at least 256)", ge=1)
    workers: int = shared("workers", 2, "decoding worker processes for folder datasets")
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

    epochs: int = key(10, "passes over the training set (30 for a frozen backbone's head on cached features)",
                      flag="--epochs", ge=1)  # fmt: skip
    optimizer: str = key("adam", "sgd, adam or adamw", flag="--optimizer", choices=OPTIMIZERS, kind="optimizer")
    lr: float = key(1e-3, "peak learning rate (3e-3 for a frozen backbone's head on cached features), or auto: "
                    "run the learning-rate range test first and use its suggestion", flag="--lr", gt=0,
                    unless="lr_find", parse=_lr_value)  # fmt: skip
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
    amp: str = shared("amp", "auto", doc="mixed precision: ``auto`` (bf16 on CUDA, off elsewhere), ``off``, "
                      "``bf16``, ``fp16``.")  # fmt: skip
    device: str = shared("device", "auto")
    seed: int = shared("seed", 0, "random seed (split, init, order)",
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
    threads: int | None = shared("threads", None)
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
    tta: str = shared("tta", "none", "test-time augmentation when validating/testing: none, flip, shift, "
                      "flip-shift")  # fmt: skip
    open_set: str = key(
        "auto", "how the model tells an image of none of its classes: auto (knn where the head allows, else msp), "
        "knn, msp, energy, off", flag="--open-set", choices=("auto", "knn", "msp", "energy", "off"),
        kind="--open-set score", doc=(
            "After training, a known-ness score and its threshold are fitted on the validation split and stored "
            "with the weights (:mod:`cnnkit.confidence`): ``knn`` is the mean cosine similarity of an image's "
            "penultimate features to its 10 nearest training images, ``msp`` the top calibrated probability, "
            "``energy`` the calibrated log-sum-exp of the logits; ``off`` fits none. ``cnnkit predict --reject`` "
            "then writes ``unknown`` for an image below the threshold; serve says \"none of these?\"."))  # fmt: skip
    known_rate: float = key(0.95, "share of the validation images the none-of-these threshold keeps as known "
                            "(default 0.95)", flag="--known-rate", gt=0, le=1)  # fmt: skip
    channels_last: str = key("auto", "channels-last memory format: auto (CUDA), on, off", flag="--channels-last",
                             choices=SWITCH_MODES, kind="--channels-last mode")  # fmt: skip
    compile: str = key("auto", "torch.compile: auto (when it pays off; CPU: float32 training, a C++ compiler), on, off",
                       flag="--compile", choices=SWITCH_MODES, kind="--compile mode")  # fmt: skip
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
    exist_ok: bool = key(False, "write into the existing run folder of --name instead of a new NAME-2 (refused "
                         "while another process writes there)", switches=(
                             ("--exist-ok", True, "reuse the run folder of --name if it exists (not while another "
                              "process writes there); default: a new NAME-2, NAME-3..."),))  # fmt: skip
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


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
_KWARGS_KEYS = ("model.kwargs", "data.kwargs")  # free-form dicts of a builder's own arguments


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


def valid_keys() -> list[str]:
    """All dotted config keys, for error messages and documentation."""
    keys = [f.name for f in dataclasses.fields(RunConfig) if f.name not in _SECTIONS]
    for section, klass in _SECTIONS.items():
        keys += [f"{section}.{f.name}" for f in dataclasses.fields(klass)]
    return keys

"""Typed run configuration: dataclass defaults < recipe YAML < --config file < flags.

A :class:`RunConfig` is the single source of truth for a run; the resolved config is
written to ``config.yaml`` in the run folder and stored in every checkpoint, so a run can
be re-created from it alone. Overrides always go through :func:`apply_overrides` with
dotted keys (``"train.lr"``), whether they come from YAML, flags or Python keywords.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cnnkit.errors import UsageError


@dataclass
class DataConfig:
    """Where the images come from and how they are split, resized and augmented.

    Attributes:
        name: a registered dataset name (``mnist``, ``cifar10``...), a path to a
            class-per-folder tree or a ``path,label`` CSV file, or your own torch
            ``Dataset`` as ``FILE.py:NAME`` / ``package.module:NAME`` (see
            :mod:`cnnkit.data.custom`).
        kwargs: keyword arguments for your own dataset's constructor (``root``...).
        data_dir: folder holding torchvision datasets (None: ``$CNNKIT_DATA_DIR`` or the
            user cache folder).
        download: allow downloading torchvision datasets that are not in ``data_dir``.
        val_fraction: fraction of the training images held out for validation when the
            dataset has no validation split of its own; 0 validates on the test split.
        test_fraction: fraction held out for testing when a folder dataset has no test split.
        image_size: side of the square the model sees (None: the dataset's own size).
        resize: short side to resize to before the centre crop (None: same as image_size).
        interpolation: resampling for resizing files: ``bilinear``, ``bicubic`` or
            ``nearest`` (None: the pretrained weights' own, else bilinear).
        augment: name of a train-time augmentation preset (see ``data.transforms``).
        augment_policy: replace the preset's augmentation policy: ``randaugment``,
            ``trivialaugment``, ``autoaugment`` or ``none`` (None: the preset's own).
        random_erasing: random-erasing probability (None: the preset's own, 0 for all shipped).
        augment_backend: who applies the policy to in-memory batches: ``torchvision`` (image
            by image) or ``kornia`` (batched on the device; ``cnnkit[kornia]``).
        augment_eval: apply the train augmentation to evaluation too (a seed defect,
            kept only to reproduce it).
        mean: per-channel normalisation mean (None: the dataset's statistics).
        std: per-channel normalisation std (None: the dataset's statistics).
        channels: force 1 (greyscale) or 3 (RGB) channels (None: the dataset's own).
        batch_size: images per training step.
        eval_batch_size: images per evaluation step (None: 2 x batch_size, at least 256).
        workers: worker processes for per-sample (folder) datasets.
        shuffle: shuffle the training set every epoch.
        limit_train: use only the first N training images (after the split), for quick runs.
        limit_eval: use only the first N validation/test images.
        decode_cache: folder datasets: ``auto`` (keep decoded, resized uint8 images in a
            memory-mapped file under cnnkit's cache folder when they fit, so epochs after
            the first, and later runs, skip JPEG decoding), ``on`` (always) or ``off``.
    """

    name: str = "embedded-mnist"
    kwargs: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    download: bool = True
    val_fraction: float = 0.0
    test_fraction: float = 0.0
    image_size: int | None = None
    resize: int | None = None
    interpolation: str | None = None
    augment: str = "none"
    augment_policy: str | None = None
    random_erasing: float | None = None
    augment_backend: str = "torchvision"
    augment_eval: bool = False
    mean: list[float] | None = None
    std: list[float] | None = None
    channels: int | None = None
    batch_size: int = 64
    eval_batch_size: int | None = None
    workers: int = 2
    shuffle: bool = True
    limit_train: int | None = None
    limit_eval: int | None = None
    balance: str = "none"
    decode_cache: str = "auto"


@dataclass
class ModelConfig:
    """Which architecture to build and which weights to start from.

    Attributes:
        name: a registered model (``lenet``, ``vgg16_bn``, ``convnet``...), an outside
            backbone ``timm:ARCH`` / ``tv:ARCH`` (its classifier replaced by a new head), or
            your own code as ``FILE.py:NAME`` / ``package.module:NAME`` (see
            :mod:`cnnkit.usercode`).
        kwargs: the builder's own arguments (``head_hidden``, ``head_dropout``, ``dropout``...).
        pretrained: start the backbone from pretrained weights (hub, cache or offline package).
        weights: start from this local file instead (state dict, safetensors or checkpoint).
    """

    name: str = "lenet"
    kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = False
    weights: str | None = None


@dataclass
class TrainConfig:
    """How to train. Learning rates are per step at the configured batch size.

    Attributes:
        epochs: passes over the training set.
        optimizer: ``sgd``, ``adam`` or ``adamw``.
        lr: peak learning rate.
        momentum: SGD momentum (also Adam's beta1 is left at its default).
        nesterov: use Nesterov momentum with SGD.
        weight_decay: L2 penalty (decoupled for AdamW).
        scheduler: ``none``, ``step``, ``cosine`` or ``onecycle``.
        warmup_epochs: linear warm-up length in epochs (fractions allowed).
        step_size: epochs between decays for the ``step`` scheduler.
        gamma: decay factor for the ``step`` scheduler.
        label_smoothing: cross-entropy label smoothing in [0, 1).
        grad_clip: clip the global gradient norm to this value (None: no clipping).
        amp: mixed precision: ``auto`` (bf16 on CUDA, off elsewhere), ``off``, ``bf16``, ``fp16``.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        seed: seed for Python, NumPy and torch RNGs and the data split.
        deterministic: ask torch for deterministic kernels (slower, reproducible).
        patience: stop after this many epochs without improvement (None: never).
        save_every: also keep ``epoch_NNN.pt`` every N epochs (None: only last/best).
        select_metric: validation metric that decides ``best.pt``: ``accuracy`` (= ``val_acc``),
            ``balanced_accuracy`` (mean per-class recall), ``macro_f1``, ``top5`` or ``loss``
            (lower is better; every other metric is maximised).
        checkpoint_every_steps: also write ``last.pt`` every N optimizer steps within an
            epoch, so a killed run resumes mid-epoch (None: at epoch ends only).
        log_every: steps between progress-bar refreshes of the running loss.
        threads: CPU threads for torch (None: torch's default, one per core). Tiny
            models at tiny batch sizes run faster on one thread: the per-op work is too
            small to split, and idle threads spinning on a busy machine cost more.
        freeze: train only the head of a backbone model (backbone weights and BatchNorm
            statistics frozen).
        fine_tune: ``[E1, E2]``: train the head alone for E1 epochs, then everything
            for E2 epochs with the backbone at ``backbone_lr_scale`` x lr (replaces ``epochs``).
        backbone_lr_scale: backbone learning rate as a fraction of ``lr`` when it trains.
        cache_features: ``auto`` (compute a frozen backbone's features once when training
            images are not augmented), ``on`` (also when they are: features of the
            un-augmented images) or ``off``.
        tta: test-time augmentation when validating and testing: ``none``, ``flip``,
            ``shift`` or ``flip-shift`` (see :mod:`cnnkit.engine.tta`).
        no_decay_norm_bias: no weight decay on normalisation-layer parameters and biases
            (decay only shrinks them toward 0 without regularising the function).
        norm_lr_scale: learning-rate multiplier for normalisation-layer parameters; their
            weight decay is divided by it, so the decay per step is unchanged (airbench
            trains its BatchNorm biases at 64x the learning rate).
        lr_start_factor: ``triangle`` schedule: learning rate at step 0 as a fraction of lr,
            rising linearly to lr at the end of warm-up.
        lr_end_factor: ``triangle`` and ``cosine`` schedules: learning rate at the last
            step as a fraction of lr.
        lookahead: airbench's lookahead: every 5 steps the weights (and BatchNorm
            statistics) are pulled toward a running average of themselves, with a weight
            growing from 0 to 0.77 as (step / total)^3; the last step takes the average.
        accumulate: batches whose gradients add up into one optimizer step (an effective
            batch of ``accumulate * batch_size``; lr is per optimizer step).
        ema: decay of an exponential moving average of the weights, e.g. 0.999 (None or 0:
            no average). The average is what is validated, checkpointed and deployed.
        mixup: mixup's Beta(alpha, alpha) parameter, e.g. 0.2 (0: off).
        cutmix: cutmix's Beta(alpha, alpha) parameter, e.g. 1.0 (0: off); with both on,
            each mixed batch uses one of the two at random.
        mix_prob: probability that a batch is mixed when mixup or cutmix is on.
        lr_find: run the learning-rate range test first and train at its suggestion
            (``--lr auto``); ``lr`` is then replaced by the suggestion in ``config.yaml``.
        sync_bn: under torchrun, synchronise BatchNorm statistics across processes
            (worth it when each process's batch is small).
    """

    epochs: int = 10
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    scheduler: str = "none"
    warmup_epochs: float = 0.0
    step_size: int = 10
    gamma: float = 0.1
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    amp: str = "auto"
    device: str = "auto"
    seed: int = 0
    deterministic: bool = False
    patience: int | None = None
    save_every: int | None = None
    checkpoint_every_steps: int | None = None
    select_metric: str = "val_acc"
    log_every: int = 20
    threads: int | None = None
    freeze: bool = False
    fine_tune: list[int] | None = None
    backbone_lr_scale: float = 0.1
    cache_features: str = "auto"
    tta: str = "none"
    channels_last: str = "auto"
    compile: str = "auto"
    profile: int = 0
    no_decay_norm_bias: bool = False
    norm_lr_scale: float = 1.0
    lr_start_factor: float = 0.0
    lr_end_factor: float = 0.0
    lookahead: bool = False
    accumulate: int = 1
    ema: float | None = None
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0
    lr_find: bool = False
    sync_bn: bool = False


@dataclass
class RunConfig:
    """Everything that defines a run.

    Attributes:
        name: run folder name under ``output_dir`` (None: derived from recipe/model and time).
        output_dir: parent folder of run folders.
        recipe: the recipe this config started from (informational).
        expected: the result the recipe is expected to reach (informational).
        notes: what the recipe changed from its seed tutorial and why.
        report: write ``report/`` (HTML + PNGs) into the run folder when training ends.
        tensorboard: write TensorBoard event files (per-epoch metrics, training images,
            the model graph) to ``tensorboard/`` in the run folder.
        loggers: experiment trackers to log to as well, comma-separated: ``mlflow``,
            ``wandb`` (each needs its package; see :mod:`cnnkit.tracking`). None: none.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str | None = None
    output_dir: str = "runs"
    recipe: str | None = None
    expected: str | None = None
    notes: str | None = None
    report: bool = True
    tensorboard: bool = True
    loggers: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON/checkpoint safe)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """Build from a nested dict, rejecting unknown keys with the valid ones listed."""
        cfg = cls()
        apply_overrides(cfg, flatten(values))
        return cfg


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
_KWARGS_KEYS = ("model.kwargs", "data.kwargs")  # free-form dicts of a builder's own arguments


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Turn ``{"train": {"lr": 1}}`` into ``{"train.lr": 1}``; ``model.kwargs`` and ``data.kwargs`` stay dicts."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted not in _KWARGS_KEYS and dotted in _SECTIONS:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def apply_overrides(cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Set dotted keys on ``cfg`` in place, type-checking each value; returns ``cfg``.

    Raises:
        UsageError: a key that does not exist (the valid ones are listed) or a value of
            the wrong type.
    """
    for dotted, value in overrides.items():
        kwargs_key, _, name = dotted.partition(".kwargs.")
        if f"{kwargs_key}.kwargs" in _KWARGS_KEYS and name:  # model.kwargs.width=32: one entry of the dict
            getattr(cfg, kwargs_key).kwargs[name] = _yaml_scalar(value)
            continue
        section, _, key = dotted.rpartition(".")
        target = getattr(cfg, section) if section in _SECTIONS else cfg
        if (section and section not in _SECTIONS) or not _has_field(target, key) or key in _SECTIONS:
            raise UsageError(f"unknown config key {dotted!r}; valid keys: {', '.join(valid_keys())}")
        setattr(target, key, _coerce(dotted, value, _field_type(target, key)))
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


def _has_field(obj: Any, key: str) -> bool:
    return dataclasses.is_dataclass(obj) and key in {f.name for f in dataclasses.fields(obj)}


def _field_type(obj: Any, key: str) -> str:
    return str(next(f.type for f in dataclasses.fields(obj) if f.name == key))


def _coerce(key: str, value: Any, type_name: str) -> Any:
    """Check/convert a value against the field's annotation (annotations are strings here)."""
    if value is None:
        if "None" in type_name:
            return None
        raise UsageError(f"config key {key!r} cannot be empty")
    try:
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
        if type_name.startswith("list[float]"):
            items = value.split(",") if isinstance(value, str) else list(value)
            return [float(v) for v in items]
        if type_name.startswith("list[int]"):
            items = value.split(",") if isinstance(value, str) else list(value)
            return [int(v) for v in items]
        if type_name.startswith("dict"):
            if not isinstance(value, dict):
                raise ValueError(value)
            return dict(value)
        return str(value) if not isinstance(value, str) else value
    except (TypeError, ValueError):
        raise UsageError(f"config key {key!r} expects {type_name}, got {value!r}") from None


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


def save_yaml(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config (keys in dataclass order)."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")


# ---- TEMPORARY (lead): replaced by the config-schema branch at merge
def resolve_config(recipe=None, config_file=None, overrides=None):
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
    return cfg


_ALIASES = {"data": "data.name", "model": "model.name", "model_kwargs": "model.kwargs", "data_kwargs": "data.kwargs",
            "name": "name"}  # fmt: skip


def keyword_overrides(values):
    skip = {"data.name", "model.name", "model.kwargs", "data.kwargs"}
    fields = {key.rpartition(".")[2]: key for key in valid_keys() if key not in skip}
    dotted = {}
    for key, value in values.items():
        if key in _ALIASES:
            dotted[_ALIASES[key]] = value
        elif "." in key:
            dotted[key] = value
        elif key in fields:
            dotted[fields[key]] = value
        else:
            raise UsageError(f"unknown option {key!r}; valid: {', '.join(sorted(set(fields) | set(_ALIASES)))}")
    return dotted


def validate(cfg):
    from cnnkit.engine.optim import check_train_config

    check_train_config(cfg.train)

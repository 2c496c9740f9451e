"""The config schema: every key declared once, the parser generated from it, one validate().

Each rule rejects a bad value with a one-line message that names the flag and what is
valid, and accepts a good one; the generated parser keeps the command line's flags; a
mistyped key suggests the nearest one; a fraction of 0 means no holdout.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

import cnnkit
from cnnkit.config import (
    DataConfig,
    RunConfig,
    TrainConfig,
    add_config_flags,
    config_flags,
    config_from_dict,
    keyword_overrides,
    overrides_from_args,
    resolve_config,
    schema,
    to_yaml,
    validate,
)
from cnnkit.errors import UsageError, nearest, unknown_name
from polling import WAIT_S

SRC = Path(__file__).resolve().parents[1] / "src"


def _parse(*argv: str) -> dict:
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    return overrides_from_args(parser.parse_args(list(argv)))


# ----------------------------------------------------------------------------- no torch


def test_config_module_imports_neither_torch_nor_numpy() -> None:
    # Load the config package under a bare ``cnnkit`` package, so only its own imports count
    # (the package's __init__ still imports the whole stack until it is made lazy).
    code = ("import sys, types; pkg = types.ModuleType('cnnkit'); pkg.__path__ = [sys.argv[1]]; "
            "sys.modules['cnnkit'] = pkg; import cnnkit.config as c; c.resolve_config('cifar10-cnn'); "
            "heavy = {'torch', 'numpy'} & set(sys.modules); assert not heavy, heavy")  # fmt: skip
    subprocess.run([sys.executable, "-c", code, str(SRC / "cnnkit")], check=True, timeout=WAIT_S)


def test_import_cnnkit_config_does_not_import_torch() -> None:
    light = subprocess.run([sys.executable, "-c", "import cnnkit, sys; sys.exit('torch' in sys.modules)"],
                           timeout=WAIT_S)  # fmt: skip
    if light.returncode:
        pytest.skip("cnnkit/__init__.py still imports torch (issue 17: `import cnnkit` must stay light)")
    code = "import cnnkit.config, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=WAIT_S)


# ----------------------------------------------------------------------------- rules

# (overrides, the message a bad value gives, overrides with a good value)
RULES = [
    ({"train.lr": -1}, "--lr must be > 0, got -1", {"train.lr": 0.01}),
    ({"train.lr": 0}, "--lr must be > 0, got 0", {"train.lr": 0, "train.lr_find": True}),
    ({"train.epochs": 0}, "--epochs must be >= 1, got 0", {"train.epochs": 1}),
    ({"data.batch_size": 0}, "--batch-size must be >= 1, got 0", {"data.batch_size": 1}),
    ({"data.eval_batch_size": 0}, "data.eval_batch_size must be >= 1, got 0", {"data.eval_batch_size": None}),
    ({"data.image_size": 0}, "--image-size must be in [1, 8192], got 0", {"data.image_size": 32}),
    ({"data.resize": 0}, "--resize must be in [1, 8192], got 0", {"data.resize": 36}),
    ({"data.workers": -1}, "--workers must be >= 0, got -1", {"data.workers": 0}),
    ({"data.val_fraction": 1}, "--val-fraction must be in [0, 1), got 1", {"data.val_fraction": 0}),
    ({"data.val_fraction": -0.1}, "--val-fraction must be in [0, 1), got -0.1", {"data.val_fraction": 0.5}),
    ({"data.test_fraction": 1.5}, "--test-fraction must be in [0, 1), got 1.5", {"data.test_fraction": 0.1}),
    ({"data.val_fraction": 0.5, "data.test_fraction": 0.5},
     "--val-fraction and --test-fraction must sum below 1 (something must be left to train on), got 0.5 + 0.5",
     {"data.val_fraction": 0.5, "data.test_fraction": 0.4}),
    ({"train.momentum": 1}, "--momentum must be in [0, 1), got 1", {"train.momentum": 0.99}),
    ({"train.weight_decay": -1e-4}, "--weight-decay must be >= 0, got -0.0001", {"train.weight_decay": 5e-4}),
    ({"train.label_smoothing": 1}, "--label-smoothing must be in [0, 1), got 1", {"train.label_smoothing": 0.1}),
    ({"train.grad_clip": 0}, "--grad-clip must be > 0, got 0", {"train.grad_clip": None}),
    ({"train.patience": 0}, "--patience must be >= 1, got 0", {"train.patience": 3}),
    ({"train.accumulate": 0}, "--accumulate must be >= 1, got 0", {"train.accumulate": 2}),
    ({"train.ema": 1}, "--ema must be in [0, 1), got 1", {"train.ema": 0}),
    ({"train.mix_prob": 1.5}, "--mix-prob must be in [0, 1], got 1.5", {"train.mix_prob": 1}),
    ({"train.mixup": -0.2}, "--mixup must be >= 0, got -0.2", {"train.mixup": 0.2}),
    ({"train.cutmix": -1}, "--cutmix must be >= 0, got -1", {"train.cutmix": 1}),
    ({"data.channels": 2}, "--channels must be one of 1, 3, got 2", {"data.channels": 1}),
    ({"data.mean": [0.5, 0.5, 0.5], "data.std": [0.5]},
     "--mean and --std must have the same number of values, got 3 and 1", {"data.mean": [0.5], "data.std": [0.5]}),
    ({"data.mean": "0.5,0.5"}, "--mean takes 1 or 3 comma-separated values, got 2", {"data.mean": "0.5,0.5,0.5"}),
    ({"data.std": "0.2,0,0.2"}, "--std must be > 0, got 0", {"data.std": "0.2,0.1,0.2"}),
    ({"train.fine_tune": "3"}, "--fine-tune expects E1,E2 (head-only epochs, then all-layer epochs; non-negative, "
     "at least one epoch in all), got 3", {"train.fine_tune": "0,3", "model.name": "timm:resnet18"}),
    ({"train.fine_tune": "-1,3"}, "--fine-tune expects E1,E2", {"train.fine_tune": "1,3", "model.name": "tv:resnet18"}),
    ({"train.freeze": True}, "--freeze needs a pretrained backbone model (timm:NAME or tv:NAME",
     {"train.freeze": True, "model.name": "tv:resnet18"}),
    ({"model.pretrained": True, "model.name": "vgg11_bn"}, "--pretrained needs a pretrained backbone model",
     {"model.pretrained": True, "model.name": "tv:vgg11_bn"}),
    ({"train.backbone_lr_scale": 0}, "--backbone-lr-scale must be in (0, 10], got 0", {"train.backbone_lr_scale": 1}),
    ({"train.lr_end_factor": 1.5}, "train.lr_end_factor must be in [0, 1], got 1.5", {"train.lr_end_factor": 0.1}),
    ({"train.checkpoint_every_steps": 0}, "--checkpoint-every-steps must be >= 1, got 0",
     {"train.checkpoint_every_steps": 100}),
    ({"data.random_erasing": 2}, "--random-erasing must be in [0, 1], got 2", {"data.random_erasing": 0.25}),
    ({"data.limit_train": 0}, "--limit-train must be >= 1, got 0", {"data.limit_train": 100}),
    ({"train.optimizer": "adm"}, "unknown optimizer 'adm'; did you mean 'adam'? valid optimizers: adam, adamw, sgd",
     {"train.optimizer": "sgd"}),
    ({"train.scheduler": "cosin"}, "unknown scheduler 'cosin'; did you mean 'cosine'? valid schedulers: cosine, ",
     {"train.scheduler": "onecycle"}),
    ({"train.amp": "bf61"}, "unknown amp mode 'bf61'; did you mean 'bf16'?", {"train.amp": "off"}),
    ({"train.tta": "flipp"}, "unknown test-time augmentation mode 'flipp'; did you mean 'flip'?",
     {"train.tta": "shift"}),
    ({"data.augment": "crop-flp"}, "unknown augmentation preset 'crop-flp'; did you mean 'crop-flip'?",
     {"data.augment": "airbench"}),
    ({"data.augment_policy": "randaug"}, "unknown augmentation policy 'randaug'; did you mean 'randaugment'?",
     {"data.augment_policy": "none"}),
    ({"data.interpolation": "bicubc"}, "unknown interpolation 'bicubc'; did you mean 'bicubic'?",
     {"data.interpolation": "nearest"}),
    ({"data.balance": "sampeler"}, "unknown --balance mode 'sampeler'; did you mean 'sampler'?",
     {"data.balance": "weights"}),
    ({"data.decode_cache": "offf"}, "unknown --decode-cache mode 'offf'; did you mean 'off'?",
     {"data.decode_cache": "on"}),
    ({"train.select_metric": "acuracy"}, "unknown select metric 'acuracy'; did you mean 'accuracy'?",
     {"train.select_metric": "macro_f1"}),
    ({"train.compile": "yes"}, "unknown --compile mode 'yes'; valid --compile modes: auto, off, on",
     {"train.compile": "off"}),
    ({"loggers": "mlflow,wnadb"}, "unknown logger 'wnadb'; did you mean 'wandb'?", {"loggers": "mlflow,wandb"}),
]


@pytest.mark.parametrize(("bad", "message", "good"), RULES, ids=[next(iter(r[0])) + "=" + str(next(iter(r[0].values())))
                                                                  for r in RULES])  # fmt: skip
def test_each_rule_rejects_a_bad_value_and_accepts_a_good_one(bad: dict, message: str, good: dict) -> None:
    with pytest.raises(UsageError) as info:
        resolve_config(None, None, bad)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)

    resolve_config(None, None, good)  # no error


def test_every_choice_key_lists_its_choices_and_defaults_to_one() -> None:
    defaults = RunConfig()
    for dotted, _, spec in schema():
        if not spec.choices:
            continue
        section, _, name = dotted.rpartition(".")
        default = getattr(getattr(defaults, section) if section else defaults, name)
        assert default is None or default in spec.choices, dotted
        with pytest.raises(UsageError, match=", ".join(sorted(map(str, spec.choices)))):
            resolve_config(None, None, {dotted: "zzzz" if isinstance(spec.choices[0], str) else 7})


def test_python_values_of_the_wrong_type_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="--epochs expects int, got '3'"):
        validate(RunConfig(train=TrainConfig(epochs="3")))
    with pytest.raises(UsageError, match="--batch-size cannot be empty"):
        validate(RunConfig(data=DataConfig(batch_size=None)))


def test_old_check_functions_are_the_schema_rules() -> None:
    from cnnkit.engine.optim import check_train_config
    from cnnkit.tta import check_tta

    with pytest.raises(UsageError, match="^--lr must be > 0, got -1$"):
        check_train_config(TrainConfig(lr=-1.0))
    check_train_config(TrainConfig(lr=-1.0, lr_find=True))  # --lr auto: the sweep picks it
    with pytest.raises(UsageError, match="unknown test-time augmentation mode 'flp'; did you mean 'flip'"):
        check_tta("flp")
    assert check_tta("flip-shift") == "flip-shift"


def test_choice_lists_agree_with_the_modules_that_use_them() -> None:
    from cnnkit.config import (
        AUGMENT_PRESETS,
        BACKBONE_SOURCES,
        BACKENDS,
        EXPORT_FORMATS,
        EXPORT_PRECISIONS,
        INTERPOLATIONS,
    )
    from cnnkit.data import transforms
    from cnnkit.engine.loop import metric_column
    from cnnkit.inference import backends, export, metadata
    from cnnkit.models import list_sources

    assert set(AUGMENT_PRESETS) == set(transforms.AUGMENT_PRESETS)
    assert set(INTERPOLATIONS) == set(transforms._INTERPOLATION)
    assert BACKENDS == backends.BACKENDS and set(BACKBONE_SOURCES) == set(list_sources())
    assert EXPORT_FORMATS == export.FORMATS and EXPORT_PRECISIONS == metadata.PRECISIONS
    select = next(spec for dotted, _, spec in schema() if dotted == "train.select_metric")
    for name in select.choices:
        metric_column(name)  # every accepted name means a metrics.csv column


@pytest.mark.parametrize("preset", ["none", "flip", "digits", "randaugment"])
@pytest.mark.parametrize(("policy", "erasing"), [(None, None), ("none", 0.0), ("trivialaugment", None), (None, 0.25)])
def test_the_config_knows_without_torch_which_data_is_augmented(preset: str, policy: str | None,
                                                                 erasing: float | None) -> None:  # fmt: skip
    from cnnkit.config.augment import config_preset
    from cnnkit.data.transforms import config_augment

    data = DataConfig(augment=preset, augment_policy=policy, random_erasing=erasing)
    assert config_preset(data) == config_augment(data)  # one definition: the data layer adds no augmentation


# ----------------------------------------------------------------------------- every command's options


def _options(name: str, **values):
    from cnnkit.config import options

    return getattr(options, name)(**values)


# (options class, bad values, the message, good values): one validate() for every command
OPTION_RULES = [
    ("PredictOptions", {"topk": 0}, "--topk must be >= 1, got 0", {"topk": 1}),
    ("PredictOptions", {"threshold": 1.5}, "--threshold must be in [0, 1], got 1.5", {"threshold": 0.5}),
    ("PredictOptions", {"threshold": float("nan")}, "--threshold must be a finite number, got nan", {}),
    ("PredictOptions", {"batch_size": "8"}, "--batch-size expects int, got '8'", {"batch_size": 8}),
    ("PredictOptions", {"tta": "flp"}, "unknown test-time augmentation mode 'flp'; did you mean 'flip'",
     {"tta": True}),
    ("PredictOptions", {"backend": "onnx"}, "unknown backend 'onnx'", {"backend": "onnxruntime"}),
    ("PredictOptions", {"model": "m.onnx", "amp": "bf16"}, "--amp applies to the torch backend",
     {"model": "m.onnx", "amp": "off"}),
    ("PredictOptions", {"model": "m.ONNX", "backend": "torch"}, "m.ONNX is an ONNX file", {"model": "m.pt"}),
    ("ServeOptions", {"queue_size": 0}, "--queue-size must be >= 1, got 0", {"queue_size": 1}),
    ("ServeOptions", {"checkpoint": "m.onnx", "backend": "torch"}, "m.onnx is an ONNX file", {"checkpoint": "m.onnx"}),
    ("EvalOptions", {"split": "tset"}, "unknown split 'tset'; did you mean 'test'", {"split": "val"}),
    ("ExportOptions", {"precision": "int4"}, "unknown precision 'int4'", {"precision": "int8"}),
    ("ExportOptions", {"out": "model.txt"}, "--out model.txt: an ONNX file must end in .onnx", {"out": "m.onnx"}),
    ("ExportOptions", {"fmt": "torchscript", "out": "m.onnx"},
     "--out m.onnx: a TorchScript file must end in .pt or .pth", {"fmt": "torchscript", "out": "m.pth"}),
    ("ExportOptions", {"fmt": "torchscript", "dynamic_batch": True}, "--dynamic-batch and --opset apply to",
     {"dynamic_batch": True}),
    ("CheckOptions", {"epochs": 2}, "--epochs only apply to the label check: add --labels",
     {"epochs": 2, "labels": True}),
    ("CheckOptions", {"near_distance": 17}, "--near-distance must be in [0, 16], got 17", {"near_distance": 16}),
    ("SummaryOptions", {"input_size": [3, 0, 28]}, "--input-size must be >= 1, got 0", {"input_size": [3, 28, 28]}),
    ("LrFindOptions", {"end_lr": float("inf")}, "--end-lr must be a finite number, got inf", {"end_lr": 1.0}),
]  # fmt: skip


@pytest.mark.parametrize(("klass", "bad", "message", "good"), OPTION_RULES,
                         ids=[f"{r[0]}-{next(iter(r[1]))}" for r in OPTION_RULES])  # fmt: skip
def test_each_command_option_rule_rejects_a_bad_value_and_accepts_a_good_one(klass, bad, message, good) -> None:
    with pytest.raises(UsageError) as info:
        validate(_options(klass, **bad))
    assert str(info.value).startswith(message) and "\n" not in str(info.value)

    validate(_options(klass, **good))  # no error


def test_every_command_s_defaults_validate() -> None:
    import dataclasses

    from cnnkit.config import options

    classes = [k for k in vars(options).values() if dataclasses.is_dataclass(k)]
    assert len(classes) == 13
    for klass in classes:
        validate(klass())


def test_the_python_predict_checks_its_options_before_reading_anything(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="^--topk must be >= 1, got 0$"):
        cnnkit.predict(tmp_path / "no-such-run", [str(tmp_path)], topk=0)
    with pytest.raises(UsageError, match="unknown option 'top_k'; did you mean 'topk'"):
        cnnkit.predict(tmp_path / "no-such-run", [str(tmp_path)], top_k=3)


# ----------------------------------------------------------------------------- parser


def test_parser_has_a_flag_for_every_key_that_declares_one() -> None:
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    actions = parser._option_string_actions
    for dotted, _, spec in schema():
        for flag in [spec.flag, *(s[0] for s in spec.switches)]:
            if flag:
                assert actions[flag].dest == dotted, flag
    for flag in ("--recipe", "--config", "--set", "--model-kwargs", "--data-kwargs"):
        assert flag in actions


# The flags of `cnnkit train` before the schema generated them: every one still works, to the same key.
FLAGS_BEFORE_THE_SCHEMA = {
    "--data": "data.name", "--data-dir": "data.data_dir", "--model": "model.name", "--weights": "model.weights",
    "--fine-tune": "train.fine_tune", "--backbone-lr-scale": "train.backbone_lr_scale", "--epochs": "train.epochs",
    "--lr": "train.lr", "--batch-size": "data.batch_size", "--device": "train.device", "--seed": "train.seed",
    "--image-size": "data.image_size", "--resize": "data.resize", "--interpolation": "data.interpolation",
    "--channels": "data.channels", "--augment": "data.augment", "--val-fraction": "data.val_fraction",
    "--test-fraction": "data.test_fraction", "--mean": "data.mean", "--std": "data.std", "--workers": "data.workers",
    "--limit-train": "data.limit_train", "--limit-eval": "data.limit_eval", "--decode-cache": "data.decode_cache",
    "--balance": "data.balance", "--optimizer": "train.optimizer", "--momentum": "train.momentum",
    "--weight-decay": "train.weight_decay", "--scheduler": "train.scheduler", "--warmup-epochs": "train.warmup_epochs",
    "--label-smoothing": "train.label_smoothing", "--grad-clip": "train.grad_clip", "--amp": "train.amp",
    "--patience": "train.patience", "--save-every": "train.save_every", "--select-metric": "train.select_metric",
    "--checkpoint-every-steps": "train.checkpoint_every_steps", "--threads": "train.threads",
    "--accumulate": "train.accumulate", "--ema": "train.ema", "--mixup": "train.mixup", "--cutmix": "train.cutmix",
    "--mix-prob": "train.mix_prob", "--compile": "train.compile", "--channels-last": "train.channels_last",
    "--profile": "train.profile", "--augment-policy": "data.augment_policy", "--random-erasing": "data.random_erasing",
    "--augment-backend": "data.augment_backend", "--tta": "train.tta", "--open-set": "train.open_set",
    "--known-rate": "train.known_rate", "--name": "name", "--output-dir": "output_dir",
    "--exist-ok": "exist_ok",
    "--log": "loggers", "--pretrained": "model.pretrained", "--no-pretrained": "model.pretrained",
    "--freeze": "train.freeze", "--cache-features": "train.cache_features",
    "--no-cache-features": "train.cache_features",
    "--no-report": "report", "--no-tensorboard": "tensorboard", "--deterministic": "train.deterministic",
    "--nesterov": "train.nesterov", "--sync-bn": "train.sync_bn", "--no-decay-norm-bias": "train.no_decay_norm_bias",
    "--augment-eval": "data.augment_eval", "--no-shuffle": "data.shuffle", "--no-download": "data.download",
    "--layers": "model.kwargs.layers", "--head": "model.kwargs.head", "--dropout": "model.kwargs.dropout",
    "--head-hidden": "model.kwargs.head_hidden", "--head-dropout": "model.kwargs.head_dropout",
    "--drop-path": "model.kwargs.drop_path", "--batch-norm": "model.kwargs.batch_norm",
    "--no-batch-norm": "model.kwargs.batch_norm",
}  # fmt: skip


def test_the_generated_parser_keeps_every_flag_of_the_hand_written_one() -> None:
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    actions = parser._option_string_actions
    for flag, dotted in FLAGS_BEFORE_THE_SCHEMA.items():
        assert actions[flag].dest == dotted, flag
        assert actions[flag].help, flag
    assert set(config_flags()) == set(FLAGS_BEFORE_THE_SCHEMA)


def test_parsing_flags_gives_the_overrides() -> None:
    assert _parse("--epochs", "3", "--lr", "0.01", "--no-report") == {
        "train.epochs": 3, "train.lr": 0.01, "report": False}  # fmt: skip
    assert _parse("--lr", "auto") == {"train.lr_find": True}
    assert _parse("--set", "train.gamma=0.5", "--model-kwargs", "width=32", "--layers", "8,M") == {
        "train.gamma": "0.5", "model.kwargs.width": "32", "model.kwargs.layers": "8,M"}  # fmt: skip
    assert _parse() == {}


@pytest.mark.parametrize("value", ["-1", "-1e-3", "-.5"])
def test_a_negative_flag_value_reaches_validation(value: str) -> None:
    overrides = _parse("--lr", value)

    assert overrides == {"train.lr": float(value)}
    with pytest.raises(UsageError, match=r"^--lr must be > 0, got -"):
        resolve_config(None, None, overrides)


def test_set_with_a_typo_suggests_the_key() -> None:
    with pytest.raises(UsageError, match=r"unknown config key 'train\.epocs'; did you mean 'train\.epochs'\?"):
        resolve_config(None, None, _parse("--set", "train.epocs=3"))


def test_set_none_clears_an_optional_number() -> None:
    cfg = resolve_config("cifar10-cnn", None, _parse("--set", "train.ema=none"))

    assert cfg.train.ema is None
    assert resolve_config(None, None, {"data.augment_policy": "none"}).data.augment_policy == "none"  # a name


def test_keyword_and_yaml_typos_suggest_the_key(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown option 'epocs'; did you mean 'epochs'"):
        keyword_overrides({"epocs": 3})
    assert keyword_overrides({"lr": "auto", "data": "mnist"}) == {"train.lr_find": True, "data.name": "mnist"}
    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  epoks: 3\n")
    with pytest.raises(UsageError, match="did you mean 'train.epochs'"):
        resolve_config(None, path)


def test_nearest_and_unknown_name() -> None:
    assert nearest("adm", ["sgd", "adam", "adamw"]) == "adam"
    assert nearest("xyz", ["sgd", "adam"]) is None
    assert str(unknown_name("optimizer", "rmsprop", ["sgd", "adam"])) == (
        "unknown optimizer 'rmsprop'; valid optimizers: adam, sgd")


# ----------------------------------------------------------------------------- recipes, YAML


@pytest.mark.parametrize("name", cnnkit.list_recipes())
def test_every_recipe_resolves_and_validates(name: str) -> None:
    cfg = resolve_config(name)

    validate(cfg)
    assert config_from_dict(yaml.safe_load(to_yaml(cfg))) == cfg


def test_docstrings_document_every_key() -> None:
    for dotted, _, spec in schema():
        section, _, name = dotted.rpartition(".")
        klass = {"data": DataConfig, "model": cnnkit.ModelConfig, "train": TrainConfig}.get(section, RunConfig)
        assert f"        {name}: " in klass.__doc__, dotted
        assert spec.help and "\n" not in spec.help, dotted


# ----------------------------------------------------------------------------- fractions


def _tree(root: Path, classes: int = 2, per_class: int = 8) -> Path:
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (8, 8), (30 * c + i, 100, 200)).save(folder / f"{i}.png")
    return root


def _build(**values):
    from cnnkit.data import build

    cfg = resolve_config(None, None, {"data.image_size": 8, "data.workers": 0, "data.decode_cache": "off",
                                      **{f"data.{k}": v for k, v in values.items()}})  # fmt: skip
    return build(cfg.data, seed=0)


def test_val_fraction_0_holds_out_nothing_and_validates_on_the_test_split(tmp_path: Path) -> None:
    tree = str(_tree(tmp_path / "photos"))

    _, spec = _build(name=tree, val_fraction=0, test_fraction=0.25)

    assert spec.sizes == {"train": 12, "val": 4, "test": 4}  # nothing held out for val: it is the test split
    files = spec.split["files"]
    assert files["val"]["paths"] == files["test"]["paths"]
    assert any("validating on the test split" in note for note in spec.notes)


def test_val_fraction_default_still_holds_out_a_fifth(tmp_path: Path) -> None:
    tree = str(_tree(tmp_path / "photos"))

    _, spec = _build(name=tree)

    assert spec.sizes == {"train": 12, "val": 4}  # 0.2 of 8 per class rounds to 2
    assert not set(spec.split["files"]["train"]["paths"]) & set(spec.split["files"]["val"]["paths"])


def test_val_fraction_0_without_a_test_split_is_a_usage_error(tmp_path: Path) -> None:
    tree = str(_tree(tmp_path / "photos"))

    with pytest.raises(UsageError, match="^--val-fraction 0 holds out no validation images and the data has no val "
                                         "or test split"):  # fmt: skip
        _build(name=tree, val_fraction=0)


def test_registered_datasets_validate_on_their_test_split_with_val_fraction_0() -> None:
    _, spec = _build(name="embedded-mnist", val_fraction=0, image_size=None)

    assert spec.sizes == {"train": 10_000, "val": 2_000, "test": 2_000}
    assert spec.split["indices"]["val"]["from"] == "test"


def test_a_legacy_config_keeps_what_its_val_fraction_meant() -> None:
    from cnnkit.config import upgrade_legacy

    stored = RunConfig().to_dict()  # as format-1 checkpoints stored it: 0.0 meant "the default"
    stored["data"]["val_fraction"] = 0.0

    assert config_from_dict(upgrade_legacy(stored)).data.val_fraction is None
    assert stored["data"]["val_fraction"] == 0.0  # the caller's dict is left alone
    assert upgrade_legacy({"data": {"val_fraction": 0.1}})["data"]["val_fraction"] == 0.1

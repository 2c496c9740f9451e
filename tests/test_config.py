"""Typed config: recipes resolve, precedence, unknown keys, coercion of flag strings.

Parametrized over every shipped recipe, so a new recipe is checked without new test code.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import cnnkit
from cnnkit.config import RunConfig, apply_overrides, config_from_dict, load_yaml, save_yaml, valid_keys
from cnnkit.data.transforms import AUGMENT_PRESETS
from cnnkit.device import AMP_MODES
from cnnkit.engine.loop import SELECT_METRICS
from cnnkit.engine.optim import OPTIMIZERS, SCHEDULERS
from cnnkit.recipes import load_recipe

SEED_RECIPES = {"mnist-lenet", "cifar10-cnn", "cifar10-vgg16", "animals-cnn", "flowers-transfer"}


# ----------------------------------------------------------------------------- recipes


def test_the_five_seed_recipes_ship() -> None:
    assert SEED_RECIPES <= set(cnnkit.list_recipes())


@pytest.mark.parametrize("name", cnnkit.list_recipes())
def test_recipe_resolves_to_a_usable_config(name: str) -> None:
    cfg = cnnkit.resolve_config(name)
    raw = load_recipe(name)

    assert isinstance(cfg, RunConfig) and cfg.recipe == name
    assert cfg.expected and cfg.expected == raw["expected"]
    assert raw.get("description")
    # Every model name resolves (outside timm:/tv: backbones included), without building it.
    assert cnnkit.models.model_info(cfg.model.name).name == cfg.model.name
    if cfg.model.pretrained:  # the recipe says which weights it needs
        assert "weights" in raw.get("requires", "")
    assert cfg.data.augment in AUGMENT_PRESETS
    assert cfg.train.optimizer in OPTIMIZERS
    assert cfg.train.scheduler in SCHEDULERS
    assert cfg.train.select_metric in SELECT_METRICS
    assert cfg.train.amp in AMP_MODES
    assert cfg.train.epochs >= 1 and cfg.train.lr > 0 and cfg.data.batch_size >= 1
    for stats in (cfg.data.mean, cfg.data.std):
        assert stats is None or len(stats) in (1, 3)
    # Every value in the file landed in the config (no key silently dropped).
    for section in ("data", "model", "train"):
        for key, value in (raw.get(section) or {}).items():
            assert getattr(getattr(cfg, section), key) == value, f"{section}.{key}"


@pytest.mark.parametrize("name", cnnkit.list_recipes())
def test_recipe_config_survives_a_yaml_round_trip(name: str, tmp_path: Path) -> None:
    cfg = cnnkit.resolve_config(name)
    save_yaml(cfg, tmp_path / "config.yaml")

    assert config_from_dict(load_yaml(tmp_path / "config.yaml")) == cfg


def test_unknown_recipe_lists_the_valid_ones() -> None:
    with pytest.raises(cnnkit.UsageError, match="unknown recipe 'mnist-resnet'.*mnist-lenet"):
        cnnkit.resolve_config("mnist-resnet")


# ----------------------------------------------------------------------------- precedence


def test_precedence_defaults_recipe_file_overrides(tmp_path: Path) -> None:
    config_file = tmp_path / "mine.yaml"
    config_file.write_text(yaml.safe_dump({"data": {"batch_size": 8}, "train": {"lr": 0.01, "epochs": 3}}))

    cfg = cnnkit.resolve_config("mnist-lenet", config_file, {"train.lr": "0.05"})

    defaults = RunConfig()
    assert cfg.train.label_smoothing == defaults.train.label_smoothing  # nobody set it
    assert cfg.train.optimizer == "sgd" != defaults.train.optimizer  # recipe over default
    assert cfg.data.name == "mnist"  # recipe
    assert cfg.data.batch_size == 8  # file over recipe (4)
    assert cfg.train.epochs == 3  # file over recipe (2)
    assert cfg.train.lr == 0.05  # override over file (0.01) and recipe (0.001)
    assert cfg.train.momentum == 0.9  # recipe, untouched by the file


def test_no_recipe_means_the_default_recipe() -> None:
    cfg = cnnkit.resolve_config()

    assert cfg.recipe == "default"
    assert cfg.data.name == "embedded-mnist" and cfg.model.name == "lenet"


def test_keyword_overrides_in_train_reach_every_key(tmp_path: Path) -> None:
    from cnnkit.config import keyword_overrides

    dotted = keyword_overrides({"epochs": 2, "data": "mnist", "output_dir": str(tmp_path), "train.gamma": 0.5})

    assert dotted == {"train.epochs": 2, "data.name": "mnist", "output_dir": str(tmp_path), "train.gamma": 0.5}
    with pytest.raises(cnnkit.UsageError, match="unknown option 'epoch'.*epochs"):
        keyword_overrides({"epoch": 2})


# ----------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize("key", ["train.learning_rate", "optim.lr", "batch_size", "train.data.name", "data"])
def test_unknown_key_lists_the_valid_keys(key: str) -> None:
    with pytest.raises(cnnkit.UsageError) as info:
        apply_overrides(RunConfig(), {key: 1})

    message = str(info.value)
    assert repr(key) in message
    assert "train.lr" in message and "data.batch_size" in message


def test_unknown_key_in_a_config_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: 0.1\n  epoks: 3\n")

    with pytest.raises(cnnkit.UsageError, match="'train.epoks'"):
        cnnkit.resolve_config(None, path)


@pytest.mark.parametrize(
    ("text", "match"),
    [("- a\n- b\n", "mapping"), ("train: [1, 2\n", "not valid YAML")],
)
def test_bad_config_files(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)

    with pytest.raises(cnnkit.UsageError, match=match):
        cnnkit.resolve_config(None, path)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(cnnkit.UsageError, match="not found"):
        cnnkit.resolve_config(None, tmp_path / "nope.yaml")


def test_valid_keys_cover_every_field() -> None:
    keys = valid_keys()

    assert len(keys) == len(set(keys))
    assert {"output_dir", "data.name", "model.kwargs", "train.lr", "train.select_metric"} <= set(keys)


# ----------------------------------------------------------------------------- coercion


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("train.lr", "0.1", 0.1),
        ("train.lr", 1, 1.0),
        ("train.epochs", "3", 3),
        ("train.epochs", 4.0, 4),
        ("train.nesterov", "true", True),
        ("train.nesterov", "off", False),
        ("data.shuffle", "0", False),
        ("train.grad_clip", None, None),
        ("data.image_size", "64", 64),
        ("data.mean", "0.485, 0.456,0.406", [0.485, 0.456, 0.406]),
        ("data.std", [1, 2, 3], [1.0, 2.0, 3.0]),
        ("model.kwargs", {"dropout": 0.3}, {"dropout": 0.3}),
        ("data.name", "cifar10", "cifar10"),
    ],
)
def test_values_are_coerced_to_the_field_type(key: str, value, expected) -> None:
    cfg = apply_overrides(RunConfig(), {key: value})
    section, _, name = key.partition(".")
    got = getattr(getattr(cfg, section), name)

    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("train.lr", "fast"),
        ("train.epochs", "two"),
        ("train.epochs", 2.5),
        ("train.nesterov", "maybe"),
        ("data.mean", "0.5,grey"),
        ("model.kwargs", "dropout=0.3"),
        ("train.epochs", None),  # not optional
        ("train.lr", [0.1]),
    ],
)
def test_bad_values_are_usage_errors(key: str, value) -> None:
    with pytest.raises(cnnkit.UsageError, match=key.replace(".", r"\.")):
        apply_overrides(RunConfig(), {key: value})

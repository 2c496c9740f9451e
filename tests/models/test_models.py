"""Every registered model, from the registry: shapes, gradients, head surgery, seed
parameter counts, and the errors a user sees for bad names, arguments and sizes."""

from __future__ import annotations

import ast
import copy
import functools
import inspect
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.utils import parameters_to_vector

import cnnkit.models
from cnnkit.errors import UsageError
from cnnkit.models import (
    ClassifierBase,
    count_parameters,
    create_model,
    list_models,
    model_info,
    register_model,
    smallest_input_size,
)

ALL = list_models()
VGGS = [name for name in ALL if name.startswith("vgg")]


def images(name: str, size: tuple[int, int] | None = None, chans: int | None = None):
    """A fixed batch of 2 random images at the model's default size and channels."""
    info = model_info(name)
    h, w = size or info.default_input_size
    c = chans or info.default_in_chans
    return torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(0))


@functools.cache
def _built(name: str) -> nn.Module:
    return create_model(name, num_classes=5)


def fresh_model(name: str) -> nn.Module:
    """A new ``create_model(name, num_classes=5)``; copying a cached one is ~10x faster than
    initialising VGG19's weights again."""
    return copy.deepcopy(_built(name))


def test_registry_lists_every_family():
    assert {"lenet", "cifar_cnn", "animals_cnn", "vgg16", "vgg19_bn"} <= set(ALL)
    assert ALL == sorted(ALL)


@pytest.mark.parametrize("name", ALL)
def test_registered_defaults_match_the_builder(name):
    info = model_info(name)
    params = inspect.signature(info.fn).parameters
    assert params["in_chans"].default == info.default_in_chans
    assert tuple(params["input_size"].default) == info.default_input_size
    assert info.description


@pytest.mark.parametrize("name", ALL)
def test_forward_backward(name):
    model = fresh_model(name)
    assert isinstance(model, ClassifierBase) and model.num_classes == 5
    logits = model(images(name))
    assert logits.shape == (2, 5)
    F.cross_entropy(logits, torch.tensor([0, 4])).backward()
    missing = [pname for pname, p in model.named_parameters() if p.grad is None]
    assert not missing
    grads = parameters_to_vector(p.grad for p in model.parameters())
    assert torch.isfinite(grads).all() and grads.any()


@pytest.mark.parametrize("name", ALL)
def test_features_then_head_is_forward(name):
    model = fresh_model(name).eval()
    x = images(name)
    with torch.no_grad():
        f = model.forward_features(x)
        assert f.dim() == 4 and f.shape[0] == 2  # [B, C', H', W']
        torch.testing.assert_close(model.forward_head(f), model(x))


@pytest.mark.parametrize("name", ALL)
def test_reset_head_keeps_hidden_layers(name):
    model = fresh_model(name)
    before = [m for m in model.head.modules() if isinstance(m, nn.Linear)]
    model.reset_head(7)
    after = [m for m in model.head.modules() if isinstance(m, nn.Linear)]
    assert all(a is b for a, b in zip(after[:-1], before[:-1], strict=True))
    assert (after[-1].in_features, after[-1].out_features) == (before[-1].in_features, 7)
    assert model.num_classes == 7
    assert model(images(name)).shape == (2, 7)


@pytest.mark.parametrize(
    ("name", "in_chans", "side", "expected"),
    [("lenet", 1, 28, 44_426), ("cifar_cnn", 3, 32, 5_852_170), ("animals_cnn", 3, 256, 2_230_170)],
)
def test_seed_parameter_counts(name, in_chans, side, expected):
    model = create_model(name, num_classes=10, in_chans=in_chans, input_size=side)
    assert count_parameters(model) == expected


def test_count_parameters_trainable_only():
    model = create_model("lenet")
    model.features.requires_grad_(False)
    head = sum(p.numel() for p in model.head.parameters())
    assert count_parameters(model, trainable_only=True) == head
    assert count_parameters(model) == 44_426


@pytest.mark.parametrize(
    ("name", "size", "feature_shape"),
    [
        ("lenet", (32, 32), (16, 5, 5)),
        ("cifar_cnn", (24, 40), (256, 3, 5)),
        ("vgg16_bn", (64, 64), (512, 2, 2)),
        ("vgg11", (32, 32), (512, 1, 1)),  # the seed's torchsummary check
    ],
)
def test_other_input_sizes(name, size, feature_shape):
    model = create_model(name, num_classes=3, input_size=size)
    x = images(name, size=size)
    assert model.forward_features(x).shape[1:] == feature_shape
    assert model(x).shape == (2, 3)


def test_one_channel_cifar_cnn():
    model = create_model("cifar_cnn", in_chans=1)
    assert model(images("cifar_cnn", chans=1)).shape == (2, 10)


def test_unknown_name_lists_valid_models():
    with pytest.raises(UsageError, match="lenet") as err:
        create_model("lenet6")
    assert "vgg16_bn" in str(err.value)


def test_too_small_input_names_the_smallest_size():
    # Each unpadded block maps side s -> (s - 4) // 2; five blocks need s >= 156.
    assert smallest_input_size("animals_cnn") == 156
    with pytest.raises(UsageError, match="at least 156x156 pixels, got 64x64"):
        create_model("animals_cnn", input_size=64)
    model = create_model("animals_cnn", input_size=156)
    assert model(images("animals_cnn", size=(156, 156))).shape == (2, 10)


@pytest.mark.parametrize("name", ALL)
def test_smallest_input_size_is_tight(name):
    side = smallest_input_size(name)
    x = images(name, size=(side, side)).to("meta")
    with torch.device("meta"):  # shapes only: cheap even for VGG19
        model = create_model(name, num_classes=3, input_size=side).eval()
    assert model(x).shape == (2, 3)
    try:  # one pixel less must leave no features (an empty map or a conv/pool error)
        fits = model.forward_features(x[:, :, 1:, 1:]).numel() > 0
    except RuntimeError:
        fits = False
    assert not fits


def test_unknown_argument_names_the_accepted_ones():
    with pytest.raises(UsageError, match="'dropuot'.*accepted arguments: dropout"):
        create_model("vgg16", dropuot=0.1)
    with pytest.raises(UsageError, match="accepted arguments: none"):
        create_model("lenet", dropout=0.1)
    model = create_model("vgg16", dropout=0.0)
    assert all(m.p == 0.0 for m in model.head.modules() if isinstance(m, nn.Dropout))


@pytest.mark.parametrize(
    "bad", [{"num_classes": 0}, {"in_chans": 0}, {"input_size": (28,)}, {"input_size": -1}]
)
def test_bad_sizes_are_usage_errors(bad):
    with pytest.raises(UsageError):
        create_model("lenet", **bad)


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_model("lenet", default_input_size=(28, 28), default_in_chans=1, description="")(
            nn.Identity
        )


@pytest.mark.parametrize("name", VGGS)
def test_vgg_trunk_matches_torchvision(name):
    # Same layers in the same order, so torchvision's ImageNet features load into ours.
    with torch.device("meta"):
        ours = create_model(name).features.state_dict()
        theirs = getattr(torchvision.models, name)().features.state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def test_vgg_init():
    torch.manual_seed(0)
    model = create_model("vgg16_bn")
    for m in model.features.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            assert m.weight.std().item() == pytest.approx((2 / n) ** 0.5, rel=0.1)
            assert not m.bias.any()
        elif isinstance(m, nn.BatchNorm2d):
            assert (m.weight == 1).all() and not m.bias.any()


def test_models_do_not_import_data_or_engine():
    forbidden = ("cnnkit.data", "cnnkit.engine", "cnnkit.cli", "cnnkit.config")
    for path in Path(cnnkit.models.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(forbidden), (path.name, node.module)
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith(forbidden) for a in node.names), path.name

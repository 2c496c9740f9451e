"""The weight sources: the hubs, exercised offline through their real caches, and cnnkit's
own checkpoints and run folders.

A file placed where the Hugging Face hub (timm) or torch hub (torchvision) keeps its
downloads is what an earlier online run would have left; loading it runs the libraries'
own code paths with no network. A cnnkit checkpoint starts any architecture, cnnkit's own
included; the head stays new when the classes differ.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import cnnkit
from cnnkit.checkpoint import Checkpoint, ModelDesc
from cnnkit.data import build
from cnnkit.errors import CnnkitError
from cnnkit.inference.predictor import model_from_checkpoint
from cnnkit.models import create_model, find_weights, list_models, load_weights
from cnnkit.models.pretrained import _lite_package


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path / "hf"


def _put_in_hf_cache(cache, repo_id: str, tensors: dict[str, torch.Tensor]) -> None:
    """The layout huggingface_hub writes: refs/main -> snapshots/<revision>/<file>."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    revision = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(snapshot / "model.safetensors"))


def test_timm_hub_weights_load_from_the_hugging_face_cache_offline(hf_cache) -> None:
    import timm

    reference = timm.create_model("efficientnet_lite0")  # the timm names and shapes
    package = _lite_package("efficientnet_lite0").state_dict
    renamed = dict(zip(reference.state_dict(), package.values(), strict=True))
    _put_in_hf_cache(hf_cache, "timm/efficientnet_lite0.ra_in1k", renamed)

    weights = find_weights("timm:efficientnet_lite0")

    assert weights.source == "timm hub timm/efficientnet_lite0.ra_in1k"
    # timm's own pretrained config: ImageNet statistics, bicubic, 0.875 crop.
    assert weights.preprocess == {
        "input_size": [224, 224], "resize": 256, "interpolation": "bicubic",
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
    }  # fmt: skip
    model = create_model("timm:efficientnet_lite0", num_classes=3)
    report = load_weights(model, weights)
    assert report.loaded == report.total == len(model.backbone.state_dict())
    assert report.how == "matched by name"
    assert torch.equal(model.backbone.conv_stem.weight, renamed["conv_stem.weight"])


def test_torchvision_hub_weights_load_from_the_torch_hub_cache_offline(tmp_path, monkeypatch) -> None:
    import torchvision

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch-hub"))
    source = torchvision.models.resnet18(weights=None).state_dict()
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    (tmp_path / "torch-hub" / "checkpoints").mkdir(parents=True)
    torch.save(source, tmp_path / "torch-hub" / "checkpoints" / url.rsplit("/", 1)[1])

    weights = find_weights("tv:resnet18")

    assert weights.source == "torchvision resnet18.IMAGENET1K_V1"
    assert weights.preprocess == {
        "input_size": [224, 224], "resize": 256, "interpolation": "bilinear",
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
    }  # fmt: skip
    model = create_model("tv:resnet18", num_classes=4)
    report = load_weights(model, weights)
    assert report.loaded == report.total
    assert report.unused == ["fc.weight", "fc.bias"]  # the replaced classifier
    assert torch.equal(model.backbone.conv1.weight, source["conv1.weight"])


def test_a_named_torchvision_weight_set_that_does_not_exist_lists_the_real_ones() -> None:
    with pytest.raises(Exception, match="IMAGENET1K_V1"):
        find_weights("tv:resnet18.NOPE")


# ----------------------------------------------------------------------------- cnnkit checkpoints


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory: pytest.TempPathFactory) -> cnnkit.Run:
    """LeNet trained one epoch on 1,000 of the embedded MNIST digits."""
    out = tmp_path_factory.mktemp("runs")
    return cnnkit.train(limit_train=1000, limit_eval=200, epochs=1, device="cpu", output_dir=str(out), name="lenet",
                        report=False, progress=False, log=lambda _: None)  # fmt: skip


def test_a_run_folder_starts_lenet_with_new_classes_keeping_the_trunk(lenet_run: cnnkit.Run) -> None:
    best = lenet_run.dir / "checkpoints" / "best.pt"
    trained = Checkpoint.load(best).state_dict
    torch.manual_seed(1)
    model = create_model("lenet", num_classes=3)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}

    report = load_weights(model, find_weights("lenet", weights=lenet_run.dir))

    state = model.state_dict()
    assert report.lines() == [f"weights: loaded 8/10 tensors from {best}; new head: head.5.weight, head.5.bias "
                              "(10 -> 3 classes)"]  # fmt: skip
    for key in ("features.0.weight", "features.3.weight", "head.1.weight", "head.3.bias"):
        assert torch.equal(state[key], trained[key]), key
    assert torch.equal(state["head.5.weight"], fresh["head.5.weight"])  # as initialised, not trained
    assert state["head.5.weight"].shape == (3, 84)


def test_a_checkpoint_with_the_same_classes_gives_identical_logits(lenet_run: cnnkit.Run) -> None:
    loaders, _ = build(lenet_run.config.data, seed=lenet_run.config.train.seed, split=lenet_run.spec.split)
    images, _ = next(iter(loaders.val))  # real digits [B, 1, 28, 28]
    best = lenet_run.dir / "checkpoints" / "best.pt"
    model = create_model("lenet", num_classes=10)

    report = load_weights(model, find_weights("lenet", weights=best))

    assert report.lines() == [f"weights: loaded 10/10 tensors from {best}"]
    with torch.no_grad():
        assert torch.equal(model.eval()(images), model_from_checkpoint(Checkpoint.load(best))(images))


def test_a_checkpoint_of_another_architecture_is_one_line_naming_both(lenet_run: cnnkit.Run) -> None:
    best = lenet_run.dir / "checkpoints" / "best.pt"
    with pytest.raises(CnnkitError) as caught:
        find_weights("cifar_cnn", weights=lenet_run.dir)
    assert str(caught.value) == (f"{best} holds a lenet model, not cifar_cnn: weights start only the same "
                                 "architecture; use --model lenet or another checkpoint")  # fmt: skip


@pytest.mark.parametrize("name", [n for n in list_models() if ":" not in n] + ["tv:resnet18"])
def test_every_architecture_starts_from_its_own_checkpoint_with_a_new_head(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = create_model(name, num_classes=10)
    ckpt = Checkpoint(ModelDesc(name, {}, 10), source.state_dict())
    weights = find_weights(name, weights=ckpt.save(tmp_path / "best.pt"))
    model = create_model(name, num_classes=3)

    report = load_weights(model, weights)

    head = [k for k in model.state_dict() if k.startswith("head.")]
    assert report.new and set(report.new) <= set(head)  # only the head's last layer is new
    assert report.classes == (10, 3)
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items() if k not in report.new)


def test_a_checkpoint_trained_with_other_channels_is_refused(tmp_path: Path) -> None:
    ckpt = Checkpoint(ModelDesc("lenet", {}, 10, 3), create_model("lenet", in_chans=3).state_dict())
    weights = find_weights("lenet", weights=ckpt.save(tmp_path / "rgb.pt"))
    with pytest.raises(CnnkitError, match=r"do not fit this model outside its head: 1 tensor\(s\) differ, e.g. "
                                          r"features.0.weight: file \[6, 3, 5, 5\] vs model \[6, 1, 5, 5\]"):
        load_weights(create_model("lenet"), weights)


def test_a_plain_state_dict_starts_one_of_cnnkit_s_own_architectures(tmp_path: Path) -> None:
    source = create_model("lenet")
    torch.save(source.state_dict(), tmp_path / "lenet.pth")
    model = create_model("lenet")
    report = load_weights(model, find_weights("lenet", weights=tmp_path / "lenet.pth"))
    assert report.lines() == [f"weights: loaded 10/10 tensors from file {tmp_path / 'lenet.pth'}"]
    assert torch.equal(model.head[5].weight, source.head[5].weight)

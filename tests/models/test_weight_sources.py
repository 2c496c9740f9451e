"""The hub weight sources, exercised offline through their real caches.

A file placed where the Hugging Face hub (timm) or torch hub (torchvision) keeps its
downloads is what an earlier online run would have left; loading it runs the libraries'
own code paths with no network.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from cnnkit.models import create_model, find_weights, load_weights
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
    renamed = dict(zip(reference.state_dict(), package.values()))
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

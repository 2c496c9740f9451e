"""Kernels, feature maps and Grad-CAM: real digits, four architectures, the command line.

The localisation test trains LeNet briefly on the embedded real MNIST subset and checks
where Grad-CAM puts its heat on real test digits; the architecture tests use random
weights (shapes, ranges, figures that decode); the CLI tests reuse the trained run.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import cnnkit
from cli_helpers import one_line_error, run_cli
from cnnkit import load_checkpoint
from cnnkit.data.spec import Preprocess
from cnnkit.evaluation.explain import (
    feature_maps,
    feature_maps_figure,
    first_conv_kernels,
    grad_cam,
    grad_cam_figure,
    kernels_figure,
    save_figure,
)
from cnnkit.evaluation.layers import conv_stages, default_gradcam_layer, map_centres
from cnnkit.models import BackboneClassifier, create_model

DIGITS = 20


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LeNet after 2 epochs on 2,000 embedded MNIST digits: 85% test accuracy, 1 s on 2 idle
    cores (up to 27 s when they are shared)."""
    run = cnnkit.train(
        data="embedded-mnist", epochs=2, limit_train=2000, limit_eval=200, lr=0.002, report=False,
        output_dir=tmp_path_factory.mktemp("explain-runs"), progress=False, log=lambda s: None,
    )  # fmt: skip
    return run.dir


@pytest.fixture(scope="module")
def test_digits() -> torch.Tensor:
    """The first real MNIST test digits shipped in the package, ``[N, 28, 28]`` in [0, 1]."""
    with resources.as_file(
        resources.files("cnnkit.data") / "embedded" / "mnist_subset.npz"
    ) as path:
        with np.load(path) as arrays:
            return torch.from_numpy(arrays["test_images"][:DIGITS]).float() / 255


def heat_on_digit(
    model: torch.nn.Module, pre: Preprocess, digits: torch.Tensor, layer: str
) -> tuple[float, float]:
    """(mean share of heat on the digit's pixels, mean share of the image those pixels cover).

    Digit pixels: brighter than 0.2 of the digit's maximum, dilated by one pixel.
    """
    on_digit, area = [], []
    for digit in digits:
        heat = grad_cam(model, pre.normalize(digit[None, None]), layer=layer).heatmap
        mask = F.max_pool2d((digit > 0.2 * digit.max()).float()[None, None], 3, 1, 1)[0, 0]
        on_digit.append(float((heat * mask).sum() / heat.sum().clamp_min(1e-9)))
        area.append(float(mask.mean()))
    return float(np.mean(on_digit)), float(np.mean(area))


def test_grad_cam_on_a_trained_lenet_highlights_the_digit(
    lenet_run: Path, test_digits: torch.Tensor
) -> None:
    loaded = load_checkpoint(lenet_run)
    pre = loaded.preprocess
    # Measured on 20 digits (the digit pixels cover 28% of the image) for this run, two
    # other seeds of it and the 15-epoch default recipe (98%):
    #   features.0 (first conv, 24x24):         heat on digit 0.60-0.98, 2.1-3.5x the area
    #   features.2 (first conv stage, 12x12):   0.40-0.68, 1.4-2.4x (this run: 0.63, 2.2x)
    #   features.3 (last conv, 8x8, default):   0.22-0.38, 0.8-1.4x: its 14-pixel receptive
    #     fields weigh the empty space around strokes too (what tells a 7 from a 9), so
    #     no claim is made there.
    share, area = heat_on_digit(loaded.model, pre, test_digits, "features.0")
    assert share >= 0.5 and share >= 1.8 * area, (share, area)
    share, area = heat_on_digit(loaded.model, pre, test_digits, "features.2")
    assert share >= 1.2 * area, (share, area)
    assert default_gradcam_layer(loaded.model, pre.input_size) == "features.3"


def test_map_centres_follow_the_unpadded_convs_of_lenet() -> None:
    model = create_model("lenet")

    # conv 5x5 -> cells at pixels 2..25; pool 2 -> 2.5, 4.5...; conv 5x5 -> 6.5, 8.5 ... 20.5
    assert map_centres(model, "features.0", (28, 28)) == ((2.0, 1.0), (2.0, 1.0))
    assert map_centres(model, "features.3", (28, 28)) == ((6.5, 2.0), (6.5, 2.0))


ARCHITECTURES = [
    ("lenet", 1, 32),
    ("cifar_cnn", 3, 32),
    ("vgg16_bn", 3, 32),
    ("timm:efficientnet_lite0", 3, 64),
]


@pytest.mark.parametrize(
    ("name", "chans", "side"), ARCHITECTURES, ids=[a[0] for a in ARCHITECTURES]
)
def test_kernels_feature_maps_and_grad_cam(
    name: str, chans: int, side: int, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=chans, input_size=(side, side))
    if isinstance(model, BackboneClassifier):
        model.freeze_backbone()  # Grad-CAM must still get gradients through a frozen backbone
    model.train()
    image = torch.randn(1, chans, side, side)

    kernels = first_conv_kernels(model)
    assert (
        kernels.shape[0] == (3 if chans == 3 else 1) and 0 <= kernels.min() and kernels.max() <= 1
    )
    stages = conv_stages(model, (side, side))
    maps = feature_maps(model, image, stages)
    assert list(maps) == stages and all(m.dim() == 3 for m in maps.values())
    result = grad_cam(model, image)
    assert result.class_index == int(result.probabilities.argmax())
    assert result.probabilities.shape == (10,) and abs(float(result.probabilities.sum()) - 1) < 1e-5
    # With random weights a class's weighted maps may be negative everywhere (an all-zero
    # heatmap after the ReLU), so every class is explained; measured over these four models
    # and seeds 0-2: 5 to 10 of the 10 heatmaps are not flat.
    heatmaps = torch.stack(
        [grad_cam(model, image, target_class=c, layer=result.layer).heatmap for c in range(10)]
    )
    assert heatmaps.shape == (10, side, side)
    assert 0 <= heatmaps.min() and heatmaps.max() <= 1
    assert (heatmaps.flatten(1).std(dim=1) > 0.05).sum() >= 3
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())
    if isinstance(model, BackboneClassifier):
        assert not any(p.requires_grad for p in model.backbone.parameters())

    shown = image[0, 0].sigmoid() if chans == 1 else image[0].permute(1, 2, 0).sigmoid()
    names = [f"class {i}" for i in range(10)]
    figures = {
        "kernels": kernels_figure(model),
        "features": feature_maps_figure(maps),
        "gradcam": grad_cam_figure(shown, result, names),
    }
    for label, fig in figures.items():
        assert_png_with_content(save_figure(fig, tmp_path / f"{label}.png"))


def assert_png_with_content(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("L"), dtype=np.float32)
    assert pixels.std() > 10, path  # not a blank page
    assert not list(path.parent.glob(".*.tmp"))  # the atomic write left no temporary file


def test_grad_cam_stages_of_backbones_and_own_architectures() -> None:
    stages = {
        "lenet": ["features.2", "features.5"],
        "cifar_cnn": [f"features.{i}" for i in (2, 5, 8, 11, 15, 18)],
    }
    for name, expected in stages.items():
        assert conv_stages(create_model(name)) == expected
    model = create_model("timm:efficientnet_lite0", num_classes=10)
    assert conv_stages(model, (64, 64)) == [f"backbone.blocks.{i}" for i in (0, 1, 2, 4, 6)] + [
        "backbone.bn2"
    ]
    assert default_gradcam_layer(model, (64, 64)) == "backbone.bn2"


# ----------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory: pytest.TempPathFactory, test_digits: torch.Tensor) -> Path:
    path = tmp_path_factory.mktemp("images") / "seven.png"
    Image.fromarray((test_digits[0] * 255).round().byte().numpy(), mode="L").save(path)
    return path


def test_cli_explain_writes_three_pngs_and_the_top5(
    capsys, lenet_run: Path, digit_png: Path, tmp_path: Path
) -> None:
    code, out, err = run_cli(
        capsys, "explain", str(lenet_run), str(digit_png), "--out", str(tmp_path)
    )

    assert code == 0, err
    for name in ("kernels.png", "seven_features.png", "seven_gradcam.png"):
        assert_png_with_content(tmp_path / name)
        assert str(tmp_path / name) in out
    assert "at layer features.3" in out  # the default layer: LeNet's last conv
    assert all(f"  {rank}. " in out for rank in range(1, 6))


def test_cli_explain_class_layer_and_default_folder(
    capsys, lenet_run: Path, digit_png: Path
) -> None:
    code, out, err = run_cli(
        capsys, "explain", str(lenet_run), str(digit_png), "--class", "3", "--layer", "features.2"
    )

    assert code == 0, err
    assert "Grad-CAM of class '3' at layer features.2" in out
    assert (lenet_run / "explain" / "seven_gradcam.png").is_file()


def test_cli_explain_of_a_text_file_exits_1(capsys, lenet_run: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not an image\n", encoding="utf-8")

    code, _, err = run_cli(
        capsys, "explain", str(lenet_run), str(text), "--out", str(tmp_path / "out")
    )

    assert code == 1
    assert str(text) in one_line_error(err)


def test_cli_explain_unknown_layer_lists_the_stages(
    capsys, lenet_run: Path, digit_png: Path, tmp_path: Path
) -> None:
    code, _, err = run_cli(
        capsys, "explain", str(lenet_run), str(digit_png), "--layer", "nope", "--out", str(tmp_path)
    )

    assert code == 2
    line = one_line_error(err)
    assert "'nope'" in line and "features.2, features.5" in line
    assert not list(tmp_path.iterdir())  # refused before writing anything
    code, _, err = run_cli(capsys, "explain", str(lenet_run), str(digit_png), "--layer", "head.1")
    assert code == 2
    assert "'head.1' gives no feature maps" in one_line_error(err)  # a Linear layer: no maps

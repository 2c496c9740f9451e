"""The fast models' own contracts: airbench's whitening stem decorrelates real image patches,
stays frozen, travels in the state dict; mnist_fast learns real digits in seconds.

(Shapes, gradients and head surgery of every registered model, these included, are in
test_models.py.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import cnnkit
from cnnkit.models import count_parameters, create_model

CIFAR_MEAN = torch.tensor((0.4914, 0.4822, 0.4465)).view(1, 3, 1, 1)
CIFAR_STD = torch.tensor((0.2470, 0.2435, 0.2616)).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def cifar(shared_data: Path) -> torch.Tensor:
    """600 real CIFAR-10 training images, normalised float [600, 3, 32, 32]."""
    folder = shared_data / "cifar10" / "train"
    if not folder.is_dir():
        pytest.skip(f"CIFAR-10 PNGs not found under {folder}")
    paths = [p for klass in sorted(folder.iterdir()) for p in sorted(klass.glob("*.png"))[:60]]
    arrays = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    images = torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 255
    return (images - CIFAR_MEAN) / CIFAR_STD


def _patch_covariance(stem: torch.nn.Conv2d, images: torch.Tensor) -> torch.Tensor:
    """Second moment of the stem's outputs over every 2x2 patch position, [K, K]."""
    with torch.no_grad():
        out = F.conv2d(images, stem.weight)  # no bias: the whitening itself
    flat = out.permute(0, 2, 3, 1).reshape(-1, out.shape[1]).double()
    return flat.T @ flat / len(flat)


def test_whitening_stem_decorrelates_real_patches(cifar: torch.Tensor) -> None:
    model = create_model("airbench")
    fit, held_out = cifar[torch.arange(600) % 6 != 0], cifar[::6]  # 500 to fit, 100 unseen, every class
    before = _patch_covariance(model.stem, fit)
    model.init_from_data(fit)
    stem = model.stem

    assert stem.weight.shape == (24, 3, 2, 2)  # 12 eigenvectors of the 12-value patches, and their negatives
    torch.testing.assert_close(stem.weight[12:], -stem.weight[:12])
    cov = _patch_covariance(stem, fit)[:12, :12]
    off_diagonal = cov - torch.diag(torch.diag(cov))
    # Unit variance in every direction but the faintest (eps = 5e-4 damps those), no correlation.
    assert torch.diag(cov)[:8].min() > 0.95 and torch.diag(cov).max() < 1.0 + 1e-6
    assert off_diagonal.abs().max() < 1e-4  # float32 conv arithmetic
    before_off = (before - torch.diag(torch.diag(before))).abs().max()
    assert before_off > 100 * off_diagonal.abs().max()  # random filters correlate strongly
    # Unseen images of the same kind come out nearly white too: variances near 1, small correlations.
    held = _patch_covariance(stem, held_out)[:8, :8]
    scale = torch.diag(held).sqrt()
    correlation = held / scale[:, None] / scale[None, :]
    assert ((scale**2 > 0.5) & (scale**2 < 2.0)).all()
    assert (correlation - torch.eye(8, dtype=held.dtype)).abs().max() < 0.25


def test_whitening_stem_is_frozen_and_saved(cifar: torch.Tensor) -> None:
    model = create_model("airbench")
    model.init_from_data(cifar[:200])

    assert "features.0.weight" not in dict(model.named_parameters())  # never trained
    assert "features.0.bias" in dict(model.named_parameters())  # its bias trains
    state = model.state_dict()
    assert torch.equal(state["features.0.weight"], model.stem.weight)
    fresh = create_model("airbench")
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh(cifar[:4]), model(cifar[:4]))


def test_airbench_sizes_and_variants() -> None:
    model = create_model("airbench")
    assert count_parameters(model) == 1_971_352  # airbench94's network
    assert model.forward_features(torch.zeros(2, 3, 32, 32)).shape == (2, 256, 1, 1)
    small = create_model("airbench", widths=[32, 64, 64], num_classes=100)
    assert small(torch.zeros(2, 3, 32, 32)).shape == (2, 100)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][1:]
    for conv in convs:  # identity-initialised: the first in_channels filters pass their input
        eye = torch.zeros_like(conv.weight[: conv.in_channels])
        torch.nn.init.dirac_(eye)
        assert torch.equal(conv.weight[: conv.in_channels], eye)


def test_mnist_fast_learns_real_digits_in_one_short_epoch(mnist_root: Path, tmp_path: Path) -> None:
    run = cnnkit.train(recipe="mnist-fast", data_dir=str(mnist_root), limit_train=6000, limit_eval=1000,
                       output_dir=str(tmp_path), report=False, progress=False, log=lambda line: None)  # fmt: skip

    assert run.config.train.epochs == 1
    assert run.metrics["test_acc"] > 0.9  # chance is 0.1; 6,000 digits, one pass

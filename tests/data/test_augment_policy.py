"""RandAugment / TrivialAugment / AutoAugment, random erasing and stochastic depth."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2

import cnnkit
from cnnkit.data.spec import Preprocess
from cnnkit.data.tensor_data import Batching, TensorLoader
from cnnkit.data.transforms import (
    ERASE_AREA,
    apply_erase,
    batch_policy,
    draw_augment,
    get_augment,
    train_transform,
)
from cnnkit.errors import UsageError
from cnnkit.models import create_model

PRE = Preprocess(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=(32, 32), channels=3)


def _images(count: int = 64, seed: int = 0) -> torch.Tensor:
    """Smooth colour images (uint8 [N, 3, 32, 32]) so that every policy op changes them."""
    generator = torch.Generator().manual_seed(seed)
    low = torch.rand(count, 3, 4, 4, generator=generator)
    return (torch.nn.functional.interpolate(low, size=32, mode="bilinear") * 255).to(torch.uint8)


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment", "autoaugment"])
@pytest.mark.parametrize("backend", ["torchvision", "kornia"])
def test_policy_changes_each_image_with_its_own_draw(policy: str, backend: str) -> None:
    if backend == "kornia":
        pytest.importorskip("kornia")
    augment = get_augment("none", policy=policy, backend=backend)
    apply = batch_policy(augment, (32, 32))
    same = _images(1).repeat(64, 1, 1, 1)
    torch.manual_seed(0)
    out = apply(same)
    assert out.dtype == torch.uint8 and out.shape == same.shape
    changed = (out != same).flatten(1).any(1)
    assert changed.sum() >= 16  # the policy did something to many images...
    distinct = {bytes(image.flatten().tolist()) for image in out}
    # ...and not the same thing to all of them: one draw per image (kornia: per group of 16)
    assert len(distinct) >= (16 if backend == "torchvision" else 2)
    torch.manual_seed(0)
    assert torch.equal(apply(same), out)  # torch's global RNG (saved in checkpoints) decides


def test_policy_presets_run_in_the_in_memory_loader_and_keep_labels() -> None:
    images, labels = _images(40), torch.arange(40) % 10
    loader = TensorLoader(images, labels, PRE, Batching(8, shuffle=True, seed=1), augment=get_augment("randaugment"))
    batches = list(loader)
    assert sum(len(b[1]) for b in batches) == 40
    assert all(torch.isfinite(b[0]).all() for b in batches)
    plain = list(TensorLoader(images, labels, PRE, Batching(8, shuffle=True, seed=1), augment=get_augment("crop-flip")))
    differing = sum(not torch.equal(a[0], b[0]) for a, b in zip(batches, plain, strict=True))
    assert differing >= 3  # the policy acted after the same crops and flips...
    assert all(torch.equal(a[1], b[1]) for a, b in zip(batches, plain, strict=True))  # ...in the same order


def test_random_erasing_boxes_follow_the_probability_and_area_and_become_zero() -> None:
    augment = get_augment("none", erase_p=0.5)
    draws = draw_augment(augment, 4000, (32, 32), torch.Generator().manual_seed(0))
    boxes = draws.erase
    erased = boxes[:, 2] > 0
    assert 0.45 < erased.float().mean() < 0.55
    area = (boxes[erased, 2] * boxes[erased, 3]).float() / (32 * 32)
    assert area.min() >= ERASE_AREA[0] * 0.5 and area.max() <= ERASE_AREA[1] * 1.6  # rounding and clipping
    assert ((boxes[:, 0] + boxes[:, 2]) <= 32).all() and ((boxes[:, 1] + boxes[:, 3]) <= 32).all()
    x = torch.ones(8, 3, 32, 32)
    apply_erase(x, boxes[:8])
    for image, (top, left, height, width) in zip(x, boxes[:8].tolist(), strict=True):
        assert image.eq(0).sum().item() == 3 * height * width  # exactly its box, all channels
        if height:
            assert image[:, top : top + height, left : left + width].eq(0).all()


def test_the_per_sample_file_transform_has_the_policy_and_random_erasing() -> None:
    augment = get_augment("trivialaugment", erase_p=0.25)
    steps = train_transform(PRE, augment).transforms
    kinds = [type(step) for step in steps]
    assert v2.TrivialAugmentWide in kinds
    erasing = [step for step in steps if isinstance(step, v2.RandomErasing)]
    assert len(erasing) == 1 and erasing[0].p == 0.25
    assert kinds.index(v2.TrivialAugmentWide) < kinds.index(v2.Normalize) < kinds.index(v2.RandomErasing)


def test_training_with_a_policy_and_erasing_end_to_end(tmp_path) -> None:
    run = cnnkit.train(augment="randaugment", random_erasing=0.25, epochs=1, limit_train=1000, report=False,
                       tensorboard=False, output_dir=str(tmp_path), progress=False, log=lambda line: None)  # fmt: skip
    assert run.config.data.augment_policy is None and run.config.data.random_erasing == 0.25
    assert torch.isfinite(torch.tensor(run.history[0]["train_loss"]))


def test_bad_policy_backend_or_probability_are_usage_errors(hide_package) -> None:
    with pytest.raises(UsageError, match="valid augmentation policies: autoaugment, none, randaugment, trivialaugment"):
        get_augment("none", policy="randaug")
    with pytest.raises(UsageError, match=r"\[0, 1\]"):
        get_augment("none", erase_p=1.5)
    hide_package("kornia")
    with pytest.raises(UsageError, match=r"pip install 'cnnkit\[kornia\]'"):
        get_augment("randaugment", backend="kornia")


def test_drop_path_sets_stochastic_depth_where_the_model_has_it() -> None:
    pytest.importorskip("timm")
    model = create_model("timm:resnet10t", num_classes=10, drop_path=0.2)
    rates = [m.drop_prob for m in model.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) == pytest.approx(0.2, abs=0.05)
    for module in model.modules():  # timm zero-initialises each block's last BN: a dropped block would change nothing
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(module.weight)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    assert torch.equal(model(x), model(x))  # off at evaluation
    model.train()
    torch.manual_seed(0)
    first = model(x)
    assert not torch.equal(first, model(x))  # random block drops while training
    tv = create_model("tv:efficientnet_b0", num_classes=10, drop_path=0.1)
    assert any(type(m).__name__ == "StochasticDepth" and m.p > 0 for m in tv.modules())
    with pytest.raises(UsageError, match="no stochastic depth"):
        create_model("tv:resnet18", num_classes=10, drop_path=0.1)
    with pytest.raises(UsageError, match="needs residual blocks"):
        create_model("lenet", num_classes=10, drop_path=0.1)

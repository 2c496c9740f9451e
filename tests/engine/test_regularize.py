"""Regularisers inside the training step: mixup/cutmix soft targets, the weight EMA,
gradient accumulation; on real digits where training is involved."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import cnnkit
from cnnkit.config import DataConfig, TrainConfig
from cnnkit.data import build
from cnnkit.engine import FitHooks, fit, read_checkpoint
from cnnkit.engine.regularize import BatchMixer, WeightEma
from cnnkit.models import create_model

# Random images with consecutive labels that differ: every pixel of a pasted box differs from
# the original, and the mass each class gets can be read straight off the targets.
IMAGES = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
LABELS = torch.arange(64) % 10
ONE_HOT = torch.nn.functional.one_hot(LABELS, 10).float()


def test_mixup_targets_hold_lambda_and_one_minus_lambda() -> None:
    torch.manual_seed(1)
    mixed, targets = BatchMixer(10, mixup=0.4)(IMAGES, LABELS)

    assert targets.shape == (64, 10) and torch.allclose(targets.sum(1), torch.ones(64))
    lam = float(targets[0, LABELS[0]])  # torchvision mixes each image with its neighbour in the rolled batch
    assert 0 < lam < 1
    assert torch.allclose(mixed, lam * IMAGES + (1 - lam) * IMAGES.roll(1, 0), atol=1e-6)
    assert torch.allclose(targets, lam * ONE_HOT + (1 - lam) * ONE_HOT.roll(1, 0), atol=1e-6)


def test_cutmix_target_mass_equals_the_pasted_area() -> None:
    torch.manual_seed(2)
    mixed, targets = BatchMixer(10, cutmix=1.0)(IMAGES, LABELS)

    assert torch.allclose(targets.sum(1), torch.ones(64))
    pasted = (mixed != IMAGES).flatten(1).float().mean(1)  # [64] share of each image replaced
    assert float(pasted.max()) > 0
    rolled = IMAGES.roll(1, 0)
    assert torch.equal(mixed[mixed != IMAGES], rolled[mixed != IMAGES])  # what was pasted is the neighbour
    assert torch.allclose(targets[torch.arange(64), LABELS.roll(1)], pasted, atol=1e-6)
    assert torch.allclose(targets[torch.arange(64), LABELS], 1 - pasted, atol=1e-6)


def test_mix_prob_zero_leaves_hard_one_hot_targets() -> None:
    mixed, targets = BatchMixer(10, mixup=0.4, cutmix=1.0, prob=0.0)(IMAGES, LABELS)
    assert torch.equal(mixed, IMAGES) and torch.equal(targets, ONE_HOT)


def test_ema_is_what_best_pt_holds_and_what_was_validated(tmp_path: Path) -> None:
    run = cnnkit.train(limit_train=2000, limit_eval=500, epochs=2, ema=0.9, device="cpu", deterministic=True,
                       output_dir=str(tmp_path), name="ema", report=False, progress=False,
                       log=lambda _: None)  # fmt: skip
    best = read_checkpoint(run.dir / "checkpoints" / "best.pt")
    last = read_checkpoint(run.dir / "checkpoints" / "last.pt")

    assert best["raw_state_dict"] is None and best["optimizer"] is None  # best.pt: the deployed weights only
    assert last["raw_state_dict"] is not None and last["ema_updates"] == 2 * (2000 // 64)
    differs = [k for k in last["state_dict"] if not torch.equal(last["state_dict"][k], last["raw_state_dict"][k])]
    assert differs  # the average is not the last step's weights
    if best["metrics"]["epoch"] == 2:  # the same epoch's average in both files
        assert all(torch.equal(best["state_dict"][k], last["state_dict"][k]) for k in best["state_dict"])
    report = cnnkit.evaluate_checkpoint(run.dir, split="val", device="cpu")
    row = next(r for r in run.history if r["epoch"] == best["metrics"]["epoch"])
    assert report.result.acc == pytest.approx(row["val_acc"], abs=1e-6)  # validation scored the average


def test_ema_decay_warms_up_then_holds_at_the_requested_decay() -> None:
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = WeightEma(model, 0.999)
    ema.update(model)  # the first update copies the weights: 0
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # decay (1 + 1) / (10 + 1) = 2/11: the average moves 9/11 of the way
    assert ema.module.weight.detach().item() == pytest.approx(9 / 11)
    assert ema.updates == 2
    ema.load(ema.module.state_dict(), 100_000)
    assert ema.current_decay() == pytest.approx(0.999)


def test_ema_batchnorm_statistics_forget_the_initial_unit_variance() -> None:
    # Without the warm-up, 0.999 ** 2730 = 6.5 % of BatchNorm's initial running_var (1.0) was
    # still in the average after 7 CIFAR-10 epochs, three times the true 0.02: 30 % test accuracy.
    model = torch.nn.BatchNorm2d(4)
    ema = WeightEma(model, 0.999)
    ema.update(model)  # the first update (after the first step) copies the still-initial statistics
    model.running_var.fill_(0.02)
    for _ in range(200):
        ema.update(model)
    assert torch.allclose(ema.module.running_var, torch.full((4,), 0.02), rtol=1e-3)


def test_ema_with_a_slow_decay_is_already_useful_after_one_short_epoch(tmp_path: Path) -> None:
    # 31 steps: without the warm-up, decay 0.999 would leave 97 % of the random init in the average
    run = cnnkit.train(limit_train=2000, limit_eval=500, epochs=1, ema=0.999, device="cpu", output_dir=str(tmp_path),
                       name="slow-ema", report=False, progress=False, log=lambda _: None)  # fmt: skip
    assert run.history[0]["val_acc"] > 0.5


def test_ema_zero_switches_a_recipe_s_average_off(tmp_path: Path) -> None:
    # cifar10-cnn sets ema: 0.999; --ema 0 must give the seed's plain training, not an error
    run = cnnkit.train(ema=0, limit_train=256, limit_eval=64, epochs=1, device="cpu", output_dir=str(tmp_path),
                       name="no-ema", report=False, progress=False, log=lambda _: None)  # fmt: skip
    assert read_checkpoint(run.dir / "checkpoints" / "last.pt")["raw_state_dict"] is None


def test_ema_survives_resume_bit_for_bit(tmp_path: Path) -> None:
    straight = cnnkit.train(limit_train=1000, limit_eval=300, epochs=2, save_every=1, ema=0.9, device="cpu",
                            deterministic=True, output_dir=str(tmp_path), name="straight", report=False,
                            progress=False, log=lambda _: None)  # fmt: skip
    # the same run as if it had been killed after epoch 1: its last.pt is then epoch 1's
    resumed = tmp_path / "resumed"
    shutil.copytree(straight.dir, resumed)
    shutil.copyfile(resumed / "checkpoints" / "epoch_001.pt", resumed / "checkpoints" / "last.pt")
    cnnkit.train(resume=resumed, progress=False, log=lambda _: None)

    a = read_checkpoint(straight.dir / "checkpoints" / "last.pt")
    b = read_checkpoint(resumed / "checkpoints" / "last.pt")
    assert a["ema_updates"] == b["ema_updates"]
    for key in ("state_dict", "raw_state_dict"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key


def test_accumulating_two_half_batches_matches_one_full_batch() -> None:
    loaders_half, spec = build(DataConfig(limit_train=640, limit_eval=64, batch_size=16), seed=0)
    loaders_full, _ = build(DataConfig(limit_train=640, limit_eval=64, batch_size=32), seed=0)
    weights = []
    for loaders, accumulate in ((loaders_half, 2), (loaders_full, 1)):
        torch.manual_seed(0)
        model = create_model("lenet", num_classes=10)  # no BatchNorm, no dropout: the sums must agree
        cfg = TrainConfig(epochs=1, optimizer="sgd", lr=0.05, momentum=0.0, device="cpu", accumulate=accumulate,
                          amp="off")  # fmt: skip
        fit(model, loaders, cfg, num_classes=spec.num_classes, hooks=FitHooks(log=lambda _: None, progress=False))
        weights.append(model.state_dict())
    for key in weights[0]:
        assert torch.allclose(weights[0][key], weights[1][key], atol=1e-5), key

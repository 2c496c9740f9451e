"""Class imbalance on real MNIST made 20:1: loss weights and a balanced sampler recover the
minority class that plain training all but ignores; --select-metric picks by the metric asked."""

from __future__ import annotations

import pytest
import torch

import cnnkit
from cli_helpers import one_line_error, run_cli
from cnnkit.commands.train_run import balanced_class_weights
from cnnkit.config import TrainConfig
from cnnkit.data.spec import Preprocess
from cnnkit.data.tensor_data import Batching, TensorLoader, epoch_order
from cnnkit.engine import FitHooks, evaluate, fit
from cnnkit.models import create_model

MINORITY, PER_CLASS = 5, 600  # 600 training digits of each class, 30 fives: 20:1
PRE = Preprocess(1, (28, 28), (0.1307,), (0.3081,))


@pytest.fixture(scope="module")
def imbalanced(mnist_digits) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = mnist_digits["train"]
    keep = [(labels == c).nonzero().squeeze(1)[: PER_CLASS // 20 if c == MINORITY else PER_CLASS] for c in range(10)]
    index = torch.cat(keep)
    return images[index].unsqueeze(1), labels[index]


@pytest.fixture(scope="module")
def test_loader(mnist_digits) -> TensorLoader:
    images, labels = mnist_digits["test"]
    return TensorLoader(images[:2000].unsqueeze(1), labels[:2000], PRE, Batching(500))  # 180 fives among them


def _train(imbalanced, test_loader, balance: str):
    images, labels = imbalanced
    train = TensorLoader(images, labels, PRE, Batching(32, shuffle=True, drop_last=True, seed=0))
    if balance == "sampler":
        train.balance_classes()
    weights = balanced_class_weights(train, 10) if balance == "weights" else None
    torch.manual_seed(0)
    model = create_model("lenet", num_classes=10)
    fit(model, (train, test_loader), TrainConfig(epochs=2, lr=2e-3, device="cpu", seed=0), num_classes=10,
        class_weights=weights, hooks=FitHooks(log=lambda _: None, progress=False))  # fmt: skip
    return evaluate(model, test_loader, 10)


def test_balancing_lifts_minority_recall_and_balanced_accuracy(imbalanced, test_loader) -> None:
    plain = _train(imbalanced, test_loader, "none")
    for mode in ("weights", "sampler"):
        balanced = _train(imbalanced, test_loader, mode)
        # measured: recall of the fives 0.12 -> 0.87 (weights) / 0.85 (sampler); balanced acc 0.86 -> 0.91 / 0.92
        assert balanced.per_class_acc[MINORITY] > plain.per_class_acc[MINORITY] + 0.3, mode
        assert balanced.balanced_acc > plain.balanced_acc + 0.02, mode


def test_class_weights_follow_the_counts() -> None:
    images = torch.zeros(30, 1, 2, 2, dtype=torch.uint8)
    loader = TensorLoader(images, torch.tensor([0] * 20 + [1] * 10), PRE, Batching(5))
    # N / (K * n_k): 30 / (3 * 20), 30 / (3 * 10), and 1 for the class never seen
    assert torch.allclose(balanced_class_weights(loader, 3), torch.tensor([0.5, 1.0, 1.0]))


def test_balanced_sampler_draws_each_class_equally_often_and_reproducibly() -> None:
    labels = torch.tensor([0] * 950 + [1] * 50)
    images = torch.zeros(1000, 1, 2, 2, dtype=torch.uint8)
    loader = TensorLoader(images, labels, PRE, Batching(100, shuffle=True, seed=1))
    loader.balance_classes()
    drawn = torch.cat([batch.labels for batch in loader])
    assert len(drawn) == 1000
    assert 0.43 < drawn.float().mean() < 0.57  # about half ones, from 5 % of the data
    loader.set_epoch(0)
    assert torch.equal(torch.cat([batch.labels for batch in loader]), drawn)  # (seed, epoch) fixes the draw
    assert not torch.equal(epoch_order(1000, shuffle=True, seed=1, epoch=1, weights=loader.sample_weights),
                           epoch_order(1000, shuffle=True, seed=1, epoch=0, weights=loader.sample_weights))  # fmt: skip


def test_train_with_balance_and_select_metric_from_the_cli(tmp_path, capsys) -> None:
    code, out, err = run_cli(capsys, "train", "--limit-train", "600", "--limit-eval", "300", "--epochs", "2",
                             "--balance", "weights", "--select-metric", "balanced_accuracy", "--device", "cpu",
                             "--output-dir", str(tmp_path), "--name", "b", "--no-report", "--no-progress")  # fmt: skip
    assert code == 0, err
    assert "note: class-balanced loss weights (" in out
    run = cnnkit.load_checkpoint(tmp_path / "b")
    history = run.metrics  # the best epoch's row
    rows = [line.split(",") for line in (tmp_path / "b" / "metrics.csv").read_text().splitlines()]
    column = rows[0].index("val_balanced_acc")
    best = max(range(1, len(rows)), key=lambda i: float(rows[i][column]))
    assert history["epoch"] == int(rows[best][0])


@pytest.mark.parametrize(
    ("flag", "value", "valid"),
    [("--balance", "oversample", "none, sampler, weights"), ("--select-metric", "precision", "balanced_accuracy")],
)
def test_bad_balance_or_metric_names_list_the_valid_ones(flag, value, valid, capsys) -> None:
    code, _, err = run_cli(capsys, "train", flag, value, "--epochs", "1")
    assert code == 2
    assert valid in one_line_error(err)

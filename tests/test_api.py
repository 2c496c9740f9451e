"""The Python API a notebook user meets: fit on their own Dataset, create_model, train.

The custom datasets below are written the way the seed tutorials write theirs: a class
with ``__init__``/``__len__``/``__getitem__`` over real MNIST digits, returning PIL
images (no transform) or tensors from the user's own torchvision transform.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset
from torchvision import transforms

import cnnkit
from cnnkit.checkpoint import Checkpoint
from cnnkit.inference import Predictor

DIGITS = [str(d) for d in range(10)]


class DigitImages(Dataset):
    """Seed-style dataset: (PIL image or transformed tensor, int label) per item."""

    classes = DIGITS

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None) -> None:
        self.images = images  # uint8 [N, 28, 28]
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index].numpy(), mode="L")
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


SEED_TRANSFORM = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])


@pytest.mark.parametrize("transform", [None, SEED_TRANSFORM], ids=["pil", "tensor"])
def test_fit_on_a_custom_dataset_learns(mnist_digits, transform) -> None:
    images, labels = mnist_digits["train"]
    test_images, test_labels = mnist_digits["test"]
    train_ds = DigitImages(images[:4000], labels[:4000], transform)
    val_ds = DigitImages(test_images[:1000], test_labels[:1000], transform)
    torch.manual_seed(0)
    model = cnnkit.create_model("lenet", num_classes=10)
    lines: list[str] = []

    result = cnnkit.fit(model, train_ds, val_ds, epochs=1, lr=2e-3, batch_size=32, device="cpu",
                        progress=False, log=lines.append)  # fmt: skip

    assert isinstance(result, cnnkit.FitResult)
    assert len(result.history) == 1 and result.best_epoch == 1
    assert result.history[0]["val_acc"] >= 0.80  # chance is 0.10
    assert result.best_metric == result.history[0]["val_acc"]
    assert len(lines) == 1 and "epoch 1/1" in lines[0]
    # The model is trained in place and usable right away.
    model.eval()
    first, label = val_ds[0]
    x = first if isinstance(first, torch.Tensor) else transforms.functional.to_tensor(first)
    assert model(x.unsqueeze(0)).shape == (1, 10)
    assert int(label) == int(test_labels[0])


def test_fit_writes_a_run_dir_when_asked(mnist_digits, tmp_path: Path) -> None:
    images, labels = mnist_digits["train"]
    ds = DigitImages(images[:512], labels[:512])

    result = cnnkit.fit(cnnkit.create_model("lenet"), ds, ds, epochs=2, run_dir=tmp_path, progress=False,
                        log=lambda _: None)  # fmt: skip

    assert result.run_dir == tmp_path
    assert len((tmp_path / "metrics.csv").read_text().strip().splitlines()) == 1 + 2
    assert (tmp_path / "checkpoints" / "last.pt").is_file()


def test_fit_checkpoints_load_in_the_predictor(mnist_digits, tmp_path: Path) -> None:
    """A create_model model on PIL images: the checkpoint describes itself, so the Predictor
    rebuilds the network and scores an image as the trained model does."""
    images, labels = mnist_digits["train"]
    ds = DigitImages(images[:512], labels[:512])
    torch.manual_seed(0)
    model = cnnkit.create_model("lenet", num_classes=10)
    lines: list[str] = []

    cnnkit.fit(model, ds, ds, epochs=1, run_dir=tmp_path, progress=False, log=lines.append)

    predictor = Predictor.from_checkpoint(tmp_path)
    assert predictor.metadata.class_names == DIGITS
    image = Image.fromarray(images[600].numpy(), mode="L")
    model.load_state_dict(Checkpoint.load(tmp_path).state_dict)  # best.pt's weights (fit keeps the last)
    expected = model.eval()(transforms.functional.to_tensor(image).unsqueeze(0))
    assert torch.allclose(predictor.logits(predictor.prepare(image).unsqueeze(0)), expected, atol=1e-4)
    assert not any(line.startswith("note:") for line in lines)


def test_fit_of_tensor_images_needs_their_preprocessing(mnist_digits, tmp_path: Path) -> None:
    images, labels = mnist_digits["train"]
    ds = DigitImages(images[:256], labels[:256], SEED_TRANSFORM)
    lines: list[str] = []

    cnnkit.fit(cnnkit.create_model("lenet"), ds, ds, epochs=1, run_dir=tmp_path / "bare", progress=False,
               log=lines.append)  # fmt: skip
    cnnkit.fit(cnnkit.create_model("lenet"), ds, ds, epochs=1, run_dir=tmp_path / "told", progress=False,
               log=lambda _: None, preprocess=cnnkit.Preprocess(1, (28, 28), (0.5,), (0.5,)))  # fmt: skip

    assert "pass preprocess=cnnkit.Preprocess(...)" in lines[0] and lines[0].startswith("note:")
    with pytest.raises(cnnkit.CnnkitError, match="holds weights only.*load Checkpoint.load\\(path\\).state_dict"):
        Predictor.from_checkpoint(tmp_path / "bare")
    told = Predictor.from_checkpoint(tmp_path / "told")
    assert told.metadata.preprocess.mean == (0.5,)


def test_fit_of_an_arbitrary_module_says_why_its_checkpoint_does_not_load(mnist_digits, tmp_path: Path) -> None:
    images, labels = mnist_digits["train"]
    ds = DigitImages(images[:128], labels[:128])
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    lines: list[str] = []

    cnnkit.fit(model, ds, ds, epochs=1, run_dir=tmp_path, progress=False, log=lines.append)

    assert "Sequential is not a cnnkit.create_model model" in lines[0]
    with pytest.raises(cnnkit.CnnkitError) as refused:
        Predictor.from_checkpoint(tmp_path)
    assert "\n" not in str(refused.value) and "no model description" in str(refused.value)
    model.load_state_dict(Checkpoint.load(tmp_path).state_dict)  # the way the message gives


@pytest.mark.parametrize(("options", "message"), [
    ({"lr": -1.0}, "--lr must be > 0, got -1"),
    ({"epochs": 0}, "--epochs must be >= 1"),
    ({"batch_size": 0}, "--batch-size must be >= 1"),
    ({"optimizer": "adm"}, "unknown optimizer 'adm'"),
    ({"lr": "auto"}, "does not run the learning-rate range test"),
])
def test_fit_checks_its_values_as_a_run_config_does(mnist_digits, options, message) -> None:
    images, labels = mnist_digits["train"]
    ds = DigitImages(images[:64], labels[:64])

    with pytest.raises(cnnkit.UsageError, match=message):
        cnnkit.fit(cnnkit.create_model("lenet"), ds, ds, progress=False, **options)


def test_fit_needs_to_know_the_classes(mnist_digits) -> None:
    class Bare(Dataset):
        def __len__(self) -> int:
            return 8

        def __getitem__(self, index: int):
            return torch.zeros(1, 28, 28), 0

    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    with pytest.raises(cnnkit.UsageError, match="class_names"):
        cnnkit.fit(model, Bare(), Bare(), epochs=1, progress=False)


def test_fit_rejects_unknown_options(mnist_digits) -> None:
    images, labels = mnist_digits["train"]
    ds = DigitImages(images[:64], labels[:64])

    with pytest.raises(cnnkit.UsageError, match="unknown training option 'learning_rate'.*lr"):
        cnnkit.fit(cnnkit.create_model("lenet"), ds, ds, learning_rate=0.1)


def test_create_model_prints_and_runs() -> None:
    model = cnnkit.create_model("cifar_cnn", num_classes=10)
    text = str(model)

    assert "Conv2d" in text and "BatchNorm2d" in text and "Dropout" in text
    assert cnnkit.count_parameters(model) == 5_852_170
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_create_model_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(cnnkit.UsageError, match="unknown model 'resnet50'.*cifar_cnn.*lenet"):
        cnnkit.create_model("resnet50")


def test_train_returns_a_run(tmp_path: Path) -> None:
    lines: list[str] = []
    run = cnnkit.train(epochs=1, limit_train=2000, limit_eval=500, output_dir=str(tmp_path), name="quick",
                       progress=False, log=lines.append)  # fmt: skip

    assert isinstance(run, cnnkit.Run)
    assert run.dir == tmp_path / "quick" and run.dir.is_dir()
    assert run.checkpoint == run.dir / "checkpoints" / "best.pt" and run.checkpoint.is_file()
    assert set(run.metrics) >= {"best_epoch", "val_acc", "val_loss", "test_acc", "test_loss", "seconds"}
    assert run.metrics["test_acc"] > 0.5  # embedded real digits, 1 epoch; chance is 0.1
    assert run.config.data.name == "embedded-mnist" and run.config.train.epochs == 1
    assert run.spec.sizes == {"train": 2000, "val": 500, "test": 500}
    assert not run.model.training
    device = next(run.model.parameters()).device  # the GPU when there is one
    with torch.no_grad():
        assert run.model(torch.zeros(1, 1, 28, 28, device=device)).shape == (1, 10)
    assert (run.dir / "log.txt").read_text() == "".join(line + "\n" for line in lines)
    assert "quick" in repr(run)

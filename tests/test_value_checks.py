"""Every value checked before work starts (issue 28, item 3): one line, the right exit code,
no traceback, and nothing written for a usage error; a non-finite loss stops training at once.

Exit codes: 0 ok, 1 failure (missing or unreadable files, disk, a run that diverged), 2 usage.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from cli_helpers import one_line_error, run_cli
from cnnkit.commands.train_run import check_memory
from cnnkit.config import resolve_config
from cnnkit.engine.epoch import EpochOptions, NonFiniteLoss, TrainState, train_one_epoch
from cnnkit.engine.memory import estimate
from cnnkit.errors import UsageError
from cnnkit.models import create_model

# ----------------------------------------------------------------------------- train / lr-find config values


@pytest.mark.parametrize(("argv", "words"), [
    (["train", "--image-size", "100000"], "--image-size must be in [1, 8192], got 100000"),
    (["train", "--model", "vgg11_bn", "--image-size", "8000"], "needs about"),  # terabytes: no machine has them
    (["train", "--model", "vgg11_bn", "--dropout", "1.5"], "--dropout (model option dropout)"),
    (["train", "--model", "timm:resnet18", "--drop-path", "1"], "--drop-path (model option drop_path)"),
    (["train", "--model", "convnet", "--model-kwargs", "dropout=-0.1"], "must be in [0, 1)"),
    (["train", "--lr", "inf"], "--lr must be a finite number, got inf"),
    (["train", "--lr", "nan"], "--lr must be"),
    (["train", "--momentum", "nan"], "--momentum must be"),
    (["lr-find", "--end-lr", "inf"], "--end-lr must be a finite number"),
    (["lr-find", "--steps", "0"], "--steps must be >= 1, got 0"),
])  # fmt: skip
def test_bad_training_values_exit_2_before_anything_is_written(capsys, tmp_path, argv, words) -> None:
    out = tmp_path / "runs"
    code, _, err = run_cli(capsys, *argv, "--output-dir", str(out), "--epochs", "1")

    assert code == 2
    assert words in one_line_error(err)
    assert not out.exists()


def test_the_memory_estimate_names_its_parts_and_what_to_try(capsys, tmp_path) -> None:
    code, _, err = run_cli(capsys, "train", "--model", "vgg11_bn", "--image-size", "8000", "--output-dir",
                           str(tmp_path))  # fmt: skip
    line = one_line_error(err)
    assert code == 2
    assert "TB" in line and "activations" in line and "weights" in line
    assert "smaller --image-size" in line and "--batch-size" in line


def test_the_memory_estimate_refuses_only_what_does_not_fit(monkeypatch) -> None:
    # VGG11-BN on a batch of 64 RGB 64x64 images: about 0.5 GB of activations and 0.1 GB of
    # weights x 4 (weights, gradients, Adam's two moments), on the meta device (no memory used)
    need = estimate(lambda: create_model("vgg11_bn", num_classes=10, in_chans=3, input_size=64), 64, 3, 64)
    assert 2e8 < need.activations < 2e9 and 5e7 < need.parameters < 1e9
    assert need.inputs == 64 * 3 * 64 * 64 * 4

    cfg = resolve_config(None, None, {"model.name": "vgg11_bn", "data.image_size": 64, "train.device": "cpu"})
    check_memory(cfg)  # fits any machine that runs these tests
    monkeypatch.setattr("cnnkit.commands.train_run.available_bytes", lambda device: need.total // 2)
    with pytest.raises(UsageError, match="--image-size 64 needs about .* but cpu has"):
        check_memory(cfg)
    cfg.data.image_size = None  # the data's own size is not second-guessed
    check_memory(cfg)


def test_a_model_refusing_an_option_value_is_one_usage_error() -> None:
    # the config refuses this before any model is built; the factory itself names the option too
    with pytest.raises(UsageError, match=r"model 'vgg11_bn' refuses its options \(dropout=1.5\): .*dropout"):
        create_model("vgg11_bn", num_classes=10, dropout=1.5)


# ----------------------------------------------------------------------------- every command's numeric flags


@pytest.mark.parametrize(("argv", "words"), [
    (["eval", "RUN", "--batch-size", "-5"], "--batch-size must be >= 1, got -5"),
    (["eval", "RUN", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["predict", "RUN", "x.png", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["predict", "RUN", "x.png", "--workers", "-1"], "--workers must be >= 0, got -1"),
    (["predict", "RUN", "x.png", "--threshold", "nan"], "--threshold must be a finite number"),
    (["predict", "RUN", "x.png", "--topk", "0"], "--topk must be >= 1, got 0"),
    (["export", "RUN", "--check-count", "0"], "--check-count must be >= 1"),
    (["export", "RUN", "--tolerance", "inf"], "--tolerance must be a finite number"),
    (["export", "RUN", "--out", "model.txt"], "an ONNX file must end in .onnx, e.g. --out model.onnx"),
    (["export", "RUN", "--format", "torchscript", "--out", "m.onnx"], "must end in .pt or .pth"),
    (["summary", "lenet", "--num-classes", "0"], "--num-classes must be >= 1"),
    (["summary", "lenet", "--input-size", "1", "0", "28"], "--input-size must be >= 1"),
    (["check", "DATA", "--min-side", "0"], "--min-side must be >= 1, got 0"),
    (["check", "DATA", "--labels", "--folds", "1"], "--folds must be >= 2"),
    (["serve", "RUN", "--examples", "-1"], "--examples must be >= 0, got -1"),
    (["runs", "--json", "DIR"], None),
])  # fmt: skip
def test_bad_numbers_of_every_command_exit_2_before_any_file_is_read(capsys, tmp_path, monkeypatch, argv,
                                                                      words) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)  # RUN, DATA, x.png do not exist: the values are refused first
    code, _, err = run_cli(capsys, *argv)

    if words is None:  # a missing folder is a failure, not a usage error
        assert code == 1 and "not found" in one_line_error(err)
        return
    assert code == 2
    assert words in one_line_error(err)
    assert not list(tmp_path.iterdir())  # no export written, nothing created


# ----------------------------------------------------------------------------- a loss that is no longer finite


class _NanAfter(nn.Module):
    """Cross-entropy that turns nan from its ``bad``-th call on (a diverged model's loss)."""

    def __init__(self, bad: int) -> None:
        super().__init__()
        self.calls, self.bad = 0, bad

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = nn.functional.cross_entropy(logits, labels)
        return loss * float("nan") if self.calls >= self.bad else loss


def test_a_nan_loss_stops_the_epoch_at_that_step() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    batches = [(torch.randn(4, 1, 4, 4), torch.randint(0, 3, (4,))) for _ in range(10)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = _NanAfter(bad=3)

    with pytest.raises(NonFiniteLoss, match="loss became nan at epoch 2 step 3") as stopped:
        train_one_epoch(TrainState(model, optimizer), batches, loss_fn, EpochOptions(torch.device("cpu"), epoch=2))
    assert loss_fn.calls == 3  # stopped after that step, not at the epoch's end
    assert stopped.value.exit_code == 1


def test_the_first_bad_step_is_remembered_between_reads() -> None:
    """On a GPU the loss is read every ``log_every`` steps: the step named is still the first bad one."""
    from cnnkit.engine.epoch import EpochProgress, _RunningSums

    sums = _RunningSums(EpochProgress(), torch.device("cpu"))
    logits, labels = torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)
    for loss in (1.0, 0.9, float("inf"), float("nan"), 0.5):
        sums.add(torch.tensor(loss), logits, labels)
    with pytest.raises(NonFiniteLoss, match="^loss became inf at epoch 4 step 3$"):
        sums.check_finite(epoch=4)


def test_training_that_diverges_stops_with_one_line_and_a_failed_status(capsys, tmp_path) -> None:
    code, _, err = run_cli(capsys, "train", "--optimizer", "sgd", "--lr", "1e10", "--epochs", "2", "--limit-train",
                           "600", "--no-report", "--no-tensorboard", "--no-progress",
                           "--output-dir", str(tmp_path))  # fmt: skip

    assert code == 1
    line = err.strip().splitlines()[-1]
    assert "Traceback" not in err
    assert line.startswith("cnnkit: error: loss became nan at epoch 1 step ")
    assert "try a lower --lr (now 1e+10) or --grad-clip 1.0" in line
    (run,) = tmp_path.iterdir()
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed" and "loss became nan at epoch 1" in status["reason"]
    assert not (run / "checkpoints" / "best.pt").exists()  # the diverged weights were never saved


# ----------------------------------------------------------------------------- exit codes: 0 only when the job was done


def test_runs_of_a_folder_that_does_not_exist_exits_1(capsys, tmp_path, monkeypatch) -> None:
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "runs", "runz")

    assert code == 1
    assert one_line_error(err) == ("cnnkit: error: runs folder not found: runz; did you mean runs? "
                                   "(`cnnkit train --output-dir DIR` writes runs there)")  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch LeNet on 600 embedded digits (seconds)."""
    from cnnkit.cli import main

    out = tmp_path_factory.mktemp("tiny")
    assert main(["train", "--epochs", "1", "--limit-train", "600", "--no-report", "--no-tensorboard",
                 "--no-progress", "--output-dir", str(out), "--name", "tiny"]) == 0  # fmt: skip
    return out / "tiny"


def test_predict_with_no_readable_file_exits_1_after_listing_them(capsys, tmp_path, tiny_run) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("not an image")
    code, _, err = run_cli(capsys, "predict", str(tiny_run), str(tmp_path), "--backend", "torch", "--no-progress")

    assert code == 1 and "Traceback" not in err
    assert "empty.png: zero bytes" in err and "notes.jpg" in err  # listed as before
    last = err.strip().splitlines()[-1]
    assert last == "cnnkit: error: no file could be read: all 2 were skipped (see the list above)"


@pytest.mark.parametrize(("target", "words"), [
    ("text.pt", "text.pt is a file, not a cnnkit run folder"),
    ("dataset", "dataset is not a run folder (no config.yaml)"),
    ("checkpoint", "is a file, not a cnnkit run folder (a folder made by `cnnkit train`, with config.yaml and "
                   "checkpoints/); resume its run folder: --resume "),
])  # fmt: skip
def test_resume_of_something_that_is_not_a_run_folder_says_so(capsys, tmp_path, tiny_run, target, words) -> None:
    (tmp_path / "text.pt").write_text("hello")
    (tmp_path / "dataset" / "cats").mkdir(parents=True)
    path = tiny_run / "checkpoints" / "last.pt" if target == "checkpoint" else tmp_path / target
    code, _, err = run_cli(capsys, "train", "--resume", str(path))

    assert code == 1
    assert words in one_line_error(err)
    assert "stopped before its first checkpoint" not in err


def test_check_that_cannot_write_its_files_exits_1_before_the_work(capsys, tmp_path, imagenette) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, _, err = run_cli(capsys, "check", str(imagenette / "val"), "--labels", "--labels-out", str(blocker / "out"))
    assert code == 1
    assert "--labels-out: cannot write to" in one_line_error(err) and "is a file, not a folder" in err

    code, _, err = run_cli(capsys, "check", str(imagenette / "val"), "--quick", "--out", str(blocker / "r.json"))
    assert code == 1 and "--out: cannot write to" in one_line_error(err)


# ----------------------------------------------------------------------------- bad files: counted, not warned


def test_training_on_bad_files_counts_them_without_raw_warnings(capsys, tmp_path, imagenette) -> None:
    data = tmp_path / "photos"
    for name in sorted(p.name for p in (imagenette / "train").iterdir())[:2]:
        (data / name).mkdir(parents=True)
        for image in sorted((imagenette / "train" / name).iterdir())[:10]:
            shutil.copy(image, data / name)
    first = sorted((data / name).iterdir())[0]
    (data / name / "zero.jpg").write_bytes(b"")
    (data / name / "cut.jpg").write_bytes(first.read_bytes()[:3000])  # a JPEG header, then nothing

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        code, out, err = run_cli(capsys, "train", "--data", str(data), "--model", "convnet", "--image-size", "32",
                                 "--epochs", "1", "--batch-size", "8", "--workers", "0", "--no-check", "--no-report",
                                 "--no-tensorboard", "--no-progress",
                                 "--output-dir", str(tmp_path / "runs"))  # fmt: skip

    assert code == 0
    assert [str(w.message) for w in seen if "skipping" in str(w.message)] == []
    assert "RuntimeWarning" not in out + err
    assert "skipped files: 2 unreadable (2 met while training); listed in skipped_files.json" in out

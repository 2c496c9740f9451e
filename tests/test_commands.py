"""The commands' contracts from a user's side: relative data paths, run status, channels,
short schedules, learning-rate groups, light start-up.

The data is real: digits from the embedded MNIST subset, saved as greyscale PNG files in a
class-per-folder tree (what a user with their own scans has).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cnnkit
from cli_helpers import one_line_error, run_cli
from digit_folders import write_digits
from polling import WAIT_S


def _digit_folder(root: Path, per_class: int, classes: int = 10) -> Path:
    """``root/<digit>/<i>.png``: real greyscale digits, ``per_class`` of each."""
    return write_digits(root, range(classes), per_class)


@pytest.fixture(scope="module")
def digits_600(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _digit_folder(tmp_path_factory.mktemp("digits") / "digits", per_class=60)


def test_a_greyscale_folder_trains_as_one_channel(digits_600: Path, tmp_path: Path) -> None:
    run = cnnkit.train(data=str(digits_600), model="lenet", epochs=2, batch_size=16, output_dir=str(tmp_path),
                       report=False, progress=False, log=lambda _: None, tensorboard=False)  # fmt: skip
    assert run.spec.channels == 1
    assert next(run.model.parameters()).shape[1] == 1  # LeNet's first conv takes one channel
    assert run.metrics["val_acc"] > 0.5  # 10 classes: chance is 0.1


def test_mnist_fast_recipe_on_a_600_image_folder_trains(digits_600: Path, tmp_path: Path) -> None:
    """One-cycle over a handful of optimizer steps used to raise ZeroDivisionError."""
    run = cnnkit.train(recipe="mnist-fast", data=str(digits_600), output_dir=str(tmp_path), report=False,
                       progress=False, log=lambda _: None, tensorboard=False)  # fmt: skip
    assert len(run.history) == 1 and np.isfinite(run.history[0]["train_loss"])


def test_a_run_with_relative_data_works_from_another_folder(digits_600: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    os.symlink(digits_600, work / "my_digits")
    monkeypatch.chdir(work)
    code, _, err = run_cli(capsys, "train", "--data", "my_digits", "--epochs", "1", "--name", "rel", "--no-progress",
                           "--no-tensorboard", "--no-report")  # fmt: skip
    assert code == 0, err
    run = work / "runs" / "rel"
    monkeypatch.chdir(elsewhere)
    code, out, err = run_cli(capsys, "eval", str(run), "--json")
    assert code == 0, err
    assert json.loads(out)["images"] > 0
    code, out, err = run_cli(capsys, "report", str(run))
    assert code == 0, err
    code, out, err = run_cli(capsys, "export", str(run), "--format", "torchscript")
    assert code == 0, err
    code, out, err = run_cli(capsys, "train", "--resume", str(run), "--epochs", "2", "--no-progress")
    assert code == 0, err
    assert len((run / "metrics.csv").read_text().splitlines()) == 3  # header + 2 epochs


def test_status_json_records_how_a_run_ended(tmp_path: Path) -> None:
    run = cnnkit.train(epochs=1, limit_train=500, output_dir=str(tmp_path), name="ok", report=False,
                       progress=False, log=lambda _: None, tensorboard=False)  # fmt: skip
    assert json.loads((run.dir / "status.json").read_text())["status"] == "completed"


def test_runs_with_no_runs_yet_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(capsys, "runs")
    assert code == 0
    assert out.startswith("no runs yet")


def test_runs_lists_a_failed_run_with_its_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = cnnkit.RunFolder.create(tmp_path, "broken")
    (folder.file("config.yaml")).write_text("data: {name: mnist}\nmodel: {name: lenet}\ntrain: {epochs: 2}\n")
    folder.write_json("env.json", {"started": "2026-01-01T00:00:00"})
    folder.set_status("failed", "DataError: data folder not found")
    code, out, _ = run_cli(capsys, "runs", str(tmp_path))
    assert code == 0
    assert "failed" in out and "data folder not found" in out


def test_a_recipe_below_its_expectation_says_so() -> None:
    from types import SimpleNamespace

    from cnnkit.commands.train import expectation_line, parse_bar

    assert parse_bar(">= 97% on the 2,000 held-out test digits") == (">=", 0.97)
    cfg = cnnkit.resolve_config("default")
    low = SimpleNamespace(test=SimpleNamespace(acc=0.9645), metrics={"val_acc": 0.98})
    (line,) = expectation_line(cfg, low)
    assert line.startswith("warning: below the default recipe's expectation: 96.45%")
    high = SimpleNamespace(test=SimpleNamespace(acc=0.975), metrics={"val_acc": 0.98})
    assert expectation_line(cfg, high) == ["expected >= 97.0%: reached 97.50%"]
    cfg.data.name = "/some/other/folder"
    (note,) = expectation_line(cfg, low)
    assert "for the recipe as shipped" in note and "the data" in note


def test_the_checkpoint_description_is_a_typed_checkpoint_that_round_trips(tmp_path: Path) -> None:
    """What every checkpoint of a run carries is built as a Checkpoint with a ModelDesc (no raw
    dict), and reads back equal from the file."""
    from cnnkit.checkpoint import Checkpoint, ModelDesc
    from cnnkit.commands.train_run import describe_checkpoint
    from cnnkit.data import build

    cfg = cnnkit.resolve_config("default", None, {"data.limit_train": 100, "data.limit_eval": 50})
    _, spec = build(cfg.data, seed=cfg.train.seed)
    described = describe_checkpoint(cfg, spec, weights_source="runs/earlier")

    assert isinstance(described, Checkpoint) and isinstance(described.model, ModelDesc)
    assert (described.model.name, described.model.num_classes, described.model.in_chans) == ("lenet", 10, 1)
    assert described.model.input_size == [28, 28] and described.model.source == "runs/earlier"
    assert described.class_names == list(spec.class_names) and described.preprocess == spec.preprocess
    assert described.config.train.seed == cfg.train.seed and described.data_fingerprint == spec.fingerprint
    assert described.training is None and described.state_dict == {}
    described.save(tmp_path / "described.pt")
    assert Checkpoint.load(tmp_path / "described.pt") == described


def test_a_backbone_from_scratch_trains_every_layer_at_lr() -> None:
    from cnnkit.engine.optim import param_groups
    from cnnkit.engine.phases import phase_train_config

    cfg = cnnkit.resolve_config(overrides={"data.name": "cifar10", "model.name": "tv:resnet18", "train.lr": 0.01})
    model = cnnkit.create_model("tv:resnet18", num_classes=10, input_size=(32, 32))
    groups = param_groups(model, phase_train_config(cfg, model, 1))
    assert {group["lr"] for group in groups} == {0.01}
    cfg.model.pretrained = True  # fine-tuning pretrained weights: the backbone gets its scale
    groups = param_groups(model, phase_train_config(cfg, model, 1))
    assert sorted({group["lr"] for group in groups}) == [pytest.approx(0.001), 0.01]


@pytest.mark.parametrize("code", [
    "import cnnkit, sys; assert 'torch' not in sys.modules, 'import cnnkit loads torch'",
    "import sys; from cnnkit.cli import build_parser; build_parser();"
    "assert 'torch' not in sys.modules, 'the parser loads torch'",
])  # fmt: skip
def test_start_up_does_not_import_torch(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True, timeout=WAIT_S)


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        run_cli(capsys, "--version")
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"cnnkit {cnnkit.__version__}"


@pytest.fixture
def locked(tmp_path: Path):
    """A folder nobody may write into: read-only for a user, immutable (chattr +i) for root."""
    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o500)
        yield folder
        folder.chmod(0o700)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root without chattr +i: no folder is read-only to root here")
    yield folder
    subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_a_read_only_output_folder_is_one_line_and_leaves_nothing(
    locked: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(capsys, "train", "--output-dir", str(locked / "runs"), "--epochs", "1")
    assert code == 1
    line = one_line_error(err)
    assert "ermission denied" in line or "not permitted" in line
    assert str(locked) in line
    assert list(locked.iterdir()) == []


def test_a_mistyped_flag_suggests_the_nearest(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        run_cli(capsys, "train", "--epocs", "3")
    assert stop.value.code == 2
    assert "did you mean --epochs?" in capsys.readouterr().err


def test_best_pt_is_weights_only_and_starts_a_run_on_other_data(
    digits_600: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """best.pt used to carry Adam's two moments (3x the weights); --weights refused cnnkit's own models."""
    import torch

    run = cnnkit.train(data=str(digits_600), model="cifar_cnn", image_size=32, epochs=1, output_dir=str(tmp_path),
                       name="first", report=False, progress=False, log=lambda _: None, tensorboard=False)  # fmt: skip
    tensors = list(run.model.parameters()) + list(run.model.buffers())
    weight_bytes = sum(t.numel() * t.element_size() for t in tensors)
    assert (run.dir / "checkpoints" / "best.pt").stat().st_size <= 1.2 * weight_bytes
    assert (run.dir / "checkpoints" / "last.pt").stat().st_size > 2 * weight_bytes  # the optimizer state is there

    three = _digit_folder(tmp_path / "three", per_class=40, classes=3)
    code, out, err = run_cli(capsys, "train", "--weights", str(run.dir), "--data", str(three), "--model", "cifar_cnn",
                             "--image-size", "32", "--epochs", "1", "--output-dir", str(tmp_path), "--name", "second",
                             "--no-progress", "--no-report", "--no-tensorboard")  # fmt: skip
    assert code == 0, err
    assert "new head" in out and "(10 -> 3 classes)" in out
    second = cnnkit.load_checkpoint(tmp_path / "second")
    assert second.class_names == ["0", "1", "2"]
    first_conv = next(iter(torch.load(run.dir / "checkpoints" / "best.pt", weights_only=True)["state_dict"].values()))
    assert first_conv.shape == next(second.model.parameters()).shape


@pytest.mark.parametrize(("flags", "message"), [
    (["--lr", "-1"], "--lr must be > 0, got -1"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--image-size", "0"], "--image-size must be in [1, 8192], got 0"),
])  # fmt: skip
def test_bad_values_stop_before_a_run_folder_exists(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    flags: list[str], message: str) -> None:  # fmt: skip
    code, _, err = run_cli(capsys, "train", *flags, "--output-dir", str(tmp_path / "runs"))
    assert code == 2
    assert message in one_line_error(err)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("content", [b"hello, I am a text file\n", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(64)])
def test_a_file_that_is_no_checkpoint_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   content: bytes) -> None:  # fmt: skip
    fake = tmp_path / "x.pt"
    fake.write_bytes(content)
    for command in ("eval", "export", "report"):
        code, _, err = run_cli(capsys, command, str(fake))
        assert code == 1, command
        line = one_line_error(err)
        assert "x.pt" in line and "weights_only" not in line


def _quick_run(tmp_path: Path, name: str, **extra) -> dict:
    return dict(epochs=1, limit_train=300, output_dir=str(tmp_path), name=name, report=False, progress=False,
                log=lambda _: None, tensorboard=False, **extra)  # fmt: skip


def test_ctrl_c_marks_the_run_interrupted_and_says_how_to_continue(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cnnkit.commands import train as train_command

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_command, "fit_phases", interrupted)
    code, out, err = run_cli(capsys, "train", "--epochs", "1", "--output-dir", str(tmp_path), "--name", "stop",
                             "--no-tensorboard", "--no-progress")  # fmt: skip
    assert code == 130
    status = json.loads((tmp_path / "stop" / "status.json").read_text())
    assert status["status"] == "interrupted"
    assert f"cnnkit train --resume {tmp_path / 'stop'}" in out + err


def test_a_run_that_fails_is_marked_failed_with_its_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cnnkit.commands import train as train_command
    from cnnkit.errors import DataError

    def broken(*args, **kwargs):
        raise DataError("the disk with the photos went away")

    monkeypatch.setattr(train_command, "fit_phases", broken)
    with pytest.raises(DataError):
        cnnkit.train(**_quick_run(tmp_path, "broken"))
    status = json.loads((tmp_path / "broken" / "status.json").read_text())
    assert status == {**status, "status": "failed", "reason": "DataError: the disk with the photos went away"}


def test_eval_of_a_run_without_a_test_split_names_the_split_it_scored(
    digits_600: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = cnnkit.train(data=str(digits_600), **_quick_run(tmp_path, "no-test"))
    assert run.test is None
    code, out, err = run_cli(capsys, "eval", str(run.dir), "--json")
    assert code == 0, err
    assert json.loads(out)["split"] == "val"


def test_runs_names_the_epoch_training_chose_when_accuracies_tie(tmp_path: Path) -> None:
    from cnnkit.runs import read_run

    folder = cnnkit.RunFolder.create(tmp_path, "tied")
    folder.file("config.yaml").write_text("data: {name: mnist}\nmodel: {name: lenet}\ntrain: {epochs: 3}\n")
    folder.file("metrics.csv").write_text("epoch,val_acc,val_loss\n1,0.95,0.20\n2,0.981,0.09\n3,0.981,0.07\n")
    row, _ = read_run(folder.path)
    assert (row.best, row.best_epoch) == (0.981, 3)  # the tie goes to the lower validation loss, as in fit


def test_lr_find_checks_the_config_as_train_does(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """train and lr-find share one check: a transfer flag on a from-scratch model, a bad value."""
    for flags, message in ((["--freeze"], "--freeze needs a pretrained backbone model"),
                           (["--lr", "-1"], "--lr must be > 0, got -1")):  # fmt: skip
        code, _, err = run_cli(capsys, "lr-find", "--model", "lenet", *flags, "--output-dir", str(tmp_path / "runs"))
        assert code == 2
        assert message in one_line_error(err)
    assert not (tmp_path / "runs").exists()

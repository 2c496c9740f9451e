"""The command line: listings, one-line errors with the right exit codes, train then eval.

Commands run in-process through ``cnnkit.cli.main`` (output captured by capsys); one
subprocess run checks the real ``python -m cnnkit`` entry point end to end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO
from pathlib import Path

import pytest

from cli_helpers import one_line_error, run_cli
from cnnkit import cli
from cnnkit.cli import build_parser, main
from cnnkit.data import list_datasets
from cnnkit.models import list_models
from cnnkit.recipes import list_recipes
from polling import WAIT_S

SEED_RECIPES = ("mnist-lenet", "cifar10-cnn", "cifar10-vgg16", "animals-cnn", "flowers-transfer")
DATASETS = ("mnist", "fashion-mnist", "kmnist", "emnist-digits", "emnist-letters", "emnist-balanced",
            "cifar10", "cifar100", "flowers102")  # fmt: skip


# ----------------------------------------------------------------------------- listings


def test_models_lists_parameter_counts(capsys) -> None:
    code, out, _ = run_cli(capsys, "models")

    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith("cifar_cnn "))
    assert "5,852,170" in line
    assert "44,426" in next(line for line in out.splitlines() if line.startswith("lenet "))
    for name in list_models():
        assert re.search(rf"^{re.escape(name)}\s", out, re.M), name


def test_recipes_lists_the_seed_recipes_with_expected_results(capsys) -> None:
    code, out, _ = run_cli(capsys, "recipes")

    assert code == 0
    for name in SEED_RECIPES:
        block = out.split(name, 1)[1].splitlines()
        assert block[1].strip().startswith("expected:"), name
        assert "n/a" not in block[1]
    assert out.count("expected:") == len(list_recipes())


def test_datasets_lists_the_names(capsys) -> None:
    code, out, _ = run_cli(capsys, "datasets")

    assert code == 0
    names = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert set(DATASETS) <= names
    assert set(list_datasets()) <= names
    assert "PATH" in names  # folders and CSV files are explained too


# ----------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    ("flag", "value", "valid"),
    [
        ("--model", "resnet9000", ["lenet", "cifar_cnn", "vgg16_bn"]),
        ("--data", "imagenet21k", ["mnist", "cifar10", "flowers102"]),
        ("--recipe", "mnist-resnet", list(SEED_RECIPES)),
        ("--augment", "jitter", ["crop-flip", "digits"]),
    ],
)
def test_unknown_names_exit_2_listing_valid_ones(capsys, tmp_path, flag, value, valid) -> None:
    code, out, err = run_cli(capsys, "train", flag, value, "--output-dir", str(tmp_path))

    assert code == 2
    line = one_line_error(err)
    assert repr(value) in line
    for name in valid:
        assert name in line
    assert not list(tmp_path.iterdir())  # no run folder for a run that never started


def test_bad_set_key_exits_2(capsys, tmp_path) -> None:
    code, _, err = run_cli(capsys, "train", "--set", "train.learning_rate=0.1", "--output-dir", str(tmp_path))

    assert code == 2
    line = one_line_error(err)
    assert "'train.learning_rate'" in line and "train.lr" in line


@pytest.mark.parametrize("item", ["train.epochs=many", "train.lr"])
def test_bad_set_value_exits_2(capsys, tmp_path, item) -> None:
    code, _, err = run_cli(capsys, "train", "--set", item, "--output-dir", str(tmp_path))

    assert code == 2
    one_line_error(err)


def test_flowers_transfer_offline_lists_the_weight_sources_it_tried(capsys, tmp_path) -> None:
    code, _, err = run_cli(capsys, "train", "--recipe", "flowers-transfer", "--output-dir", str(tmp_path))

    assert code == 1
    assert "Traceback" not in err
    assert "no pretrained weights for tv:vgg16" in err
    assert "torchvision hub" in err and "--weights" in err
    assert not list(tmp_path.iterdir())


def test_python_m_cnnkit_bad_name_has_no_traceback(tmp_path) -> None:
    env = {**os.environ, "CNNKIT_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "cnnkit", "train", "--model", "nope", "--output-dir", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=WAIT_S,
    )  # fmt: skip

    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    valid = ", ".join(sorted(list_models() + ["timm:ARCH", "tv:ARCH"]))
    assert proc.stderr.strip().splitlines() == [f"cnnkit: error: unknown model 'nope'; valid models: {valid}"]


# ----------------------------------------------------------------------------- data errors


def test_missing_data_folder_exits_1(capsys, tmp_path) -> None:
    missing = tmp_path / "photos" / "raw-img"
    code, _, err = run_cli(capsys, "train", "--data", str(missing), "--output-dir", str(tmp_path / "runs"))

    assert code == 1
    line = one_line_error(err)
    assert str(missing) in line and "sub-folder" in line


def test_empty_class_folder_is_named(capsys, tmp_path, imagenette) -> None:
    root = tmp_path / "photos"
    for name in ("church", "tench"):
        (root / name).mkdir(parents=True)
        for photo in sorted((imagenette / "train" / name).glob("*.JPEG"))[:3]:
            shutil.copy(photo, root / name / photo.name)
    (root / "parachute").mkdir()

    code, _, err = run_cli(capsys, "train", "--data", str(root), "--output-dir", str(tmp_path / "runs"))

    assert code == 1
    line = one_line_error(err)
    assert str(root / "parachute") in line and "no images" in line


def test_csv_with_a_missing_file_is_named(capsys, tmp_path, imagenette) -> None:
    photos = sorted((imagenette / "train" / "church").glob("*.JPEG"))[:2]
    for photo in photos:
        shutil.copy(photo, tmp_path / photo.name)
    rows = [f"{photos[0].name},church", f"{photos[1].name},tench", "gone.jpg,tench"]
    (tmp_path / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")

    code, _, err = run_cli(capsys, "train", "--data", str(tmp_path / "labels.csv"),
                        "--output-dir", str(tmp_path / "runs"))  # fmt: skip

    assert code == 1
    line = one_line_error(err)
    assert "gone.jpg" in line and "line 4" in line


def test_eval_of_a_missing_run_exits_1(capsys, tmp_path) -> None:
    code, _, err = run_cli(capsys, "eval", str(tmp_path / "no-such-run"))

    assert code == 1
    assert "no-such-run" in one_line_error(err)


# ----------------------------------------------------------------------------- train, then eval


@pytest.fixture(scope="module")
def cli_run(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    """``cnnkit train`` on 3,000 real MNIST digits for one epoch: (run folder, summary, stdout)."""
    out = tmp_path_factory.mktemp("cli-runs")
    stdout = StringIO()  # a module-scoped fixture cannot use capsys
    with redirect_stdout(stdout), redirect_stderr(StringIO()):
        code = main(["train", "--data", "mnist", "--data-dir", str(mnist_root), "--limit-train", "3000",
                     "--limit-eval", "1000", "--epochs", "1", "--output-dir", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    (run_dir,) = out.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    return run_dir, summary, stdout.getvalue()


def test_train_reports_and_writes_a_run(cli_run) -> None:
    run_dir, summary, stdout = cli_run

    assert (run_dir / "checkpoints" / "best.pt").is_file()
    assert f"run folder: {run_dir}" in stdout
    assert "epoch 1/1" in stdout
    assert f"test acc {summary['test_acc']:.2%}" in stdout
    assert summary["best_epoch"] == 1
    assert summary["test_acc"] > 0.5  # one epoch on 3,000 digits; chance is 0.1


def test_eval_prints_the_training_accuracy_and_a_class_table(capsys, cli_run) -> None:
    run_dir, summary, _ = cli_run
    code, out, _ = run_cli(capsys, "eval", str(run_dir))

    assert code == 0
    assert f"top-1: {summary['test_acc']:.2%}" in out.splitlines()
    assert "(1,000 images)" in out
    table = out.split("accuracy  images", 1)[1].strip().splitlines()
    assert [row.split()[0] for row in table] == [str(d) for d in range(10)]
    assert sum(int(row.split()[-1]) for row in table) == 1000


@pytest.fixture
def eval_spy(monkeypatch) -> dict:
    """What ``cnnkit eval`` hands its scoring pass, recorded as it runs: the model's layout,
    the batches' layout, and whether denormals count as zero at that moment."""
    import torch

    from cnnkit.commands import evaluate as command

    seen: dict = {}
    real = command.score

    def spy(model, loader, settings):
        # the conv with the most input channels: a 1-channel kernel is contiguous in both layouts
        conv = max((p for p in model.parameters() if p.dim() == 4), key=lambda p: p.shape[1])
        seen.update(weights_channels_last=conv.is_contiguous(memory_format=torch.channels_last),
                    batches_channels_last=settings.channels_last, flushing=sys.float_info.min / 2 == 0.0)  # fmt: skip
        return real(model, loader, settings)

    monkeypatch.setattr(command, "score", spy)
    return seen


def test_a_model_command_runs_with_denormals_as_zero_and_restores_the_mode(capsys, cli_run, eval_spy) -> None:
    code, _, _ = run_cli(capsys, "eval", str(cli_run[0]), "--json")

    assert code == 0
    assert eval_spy["flushing"] is True  # the scoring ran with denormals as zero
    assert sys.float_info.min / 2 > 0.0  # and they are back after: hypothesis and numpy rely on them


def test_eval_scores_in_the_layout_the_run_validated_in(capsys, cli_run, eval_spy, mnist_root, tmp_path) -> None:
    code, out, _ = run_cli(capsys, "eval", str(cli_run[0]))  # channels-last auto: off on the CPU
    assert code == 0
    assert eval_spy["weights_channels_last"] is False and eval_spy["batches_channels_last"] is False

    code, _, _ = run_cli(capsys, "train", "--data", "mnist", "--data-dir", str(mnist_root), "--limit-train", "1000",
                         "--limit-eval", "500", "--epochs", "1", "--channels-last", "on", "--no-report",
                         "--output-dir", str(tmp_path), "--no-progress")  # fmt: skip
    assert code == 0
    (run_dir,) = tmp_path.iterdir()
    code, out, _ = run_cli(capsys, "eval", str(run_dir))

    assert code == 0
    assert eval_spy["weights_channels_last"] is True and eval_spy["batches_channels_last"] is True
    test_acc = json.loads((run_dir / "summary.json").read_text())["test_acc"]
    assert f"top-1: {test_acc:.2%}" in out.splitlines()  # the same figure as the run's own final test


def test_eval_json(capsys, cli_run) -> None:
    run_dir, summary, _ = cli_run
    code, out, _ = run_cli(capsys, "eval", str(run_dir), "--json")

    assert code == 0
    report = json.loads(out)
    assert report["top1"] == summary["test_acc"]
    assert report["images"] == 1000 and report["split"] == "test"
    per_class = report["per_class_accuracy"]
    assert list(per_class) == [str(d) for d in range(10)]
    assert all(0.0 <= acc <= 1.0 for acc in per_class.values())


# ----------------------------------------------------------------------------- the parser, generated


# Every command's arguments before the schema generated them (config keys aside: see
# tests/test_config_schema.py): each still parses, to the same destination.
ARGUMENTS_BEFORE_THE_SCHEMA = {
    "train": {"--no-progress": "no_progress", "--no-check": "no_check", "--resume": "resume",
        "--trust-code": "trust_code"},
    "lr-find": {"--start-lr": "start_lr", "--end-lr": "end_lr", "--steps": "steps"},
    "eval": {"checkpoint": "checkpoint", "--data": "data", "--data-dir": "data_dir", "--split": "split",
        "--device": "device", "--batch-size": "batch_size", "--tta": "tta", "--json": "json",
        "--trust-code": "trust_code"},
    "predict": {"model": "model", "inputs": "inputs", "--topk": "topk", "--batch-size": "batch_size",
        "--workers": "workers", "--tta": "tta", "--threshold": "threshold", "--out": "out", "--backend": "backend",
        "--device": "device", "--amp": "amp", "--no-progress": "no_progress", "--trust-code": "trust_code"},
    "report": {"run": "run", "--split": "split", "--robustness": "robustness", "--data-dir": "data_dir",
        "--device": "device", "--out": "out", "--trust-code": "trust_code"},
    "summary": {"model": "model", "--input-size": "input_size", "--num-classes": "num_classes", "--depth": "depth",
        "--json": "json", "--trust-code": "trust_code"},
    "explain": {"checkpoint": "checkpoint", "images": "images", "--layer": "layer", "--class": "target_class",
        "--out": "out", "--trust-code": "trust_code"},
    "export": {"checkpoint": "checkpoint", "--format": "fmt", "--out": "out", "--precision": "precision",
        "--calibration": "calibration", "--allow-drop": "allow_drop", "--dynamic-batch": "dynamic_batch",
        "--opset": "opset", "--check-images": "check_images", "--check-count": "check_count",
        "--tolerance": "tolerance", "--data-dir": "data_dir", "--trust-code": "trust_code"},
    "serve": {"checkpoint": "checkpoint", "--host": "host", "--port": "port", "--topk": "topk",
        "--examples": "examples", "--no-gradcam": "no_gradcam", "--data-dir": "data_dir", "--device": "device",
        "--backend": "backend", "--concurrency": "concurrency", "--queue-size": "queue_size",
        "--trust-code": "trust_code"},
    "studio": {"project": "project", "--host": "host", "--port": "port", "--allow-import": "allow_import"},
    "check": {"data": "data", "--json": "json", "--out": "out", "--quick": "quick", "--workers": "workers",
        "--near-distance": "near_distance", "--min-side": "min_side", "--no-progress": "no_progress",
        "--labels": "labels", "--model": "model", "--folds": "folds", "--epochs": "epochs",
        "--labels-out": "labels_out", "--fix-to": "fix_to", "--seed": "seed", "--device": "device"},
    "runs": {"dir": "dir", "--sort": "sort", "--json": "json"},
}  # fmt: skip


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_argument_of_every_command_still_parses_to_its_destination() -> None:
    commands = _commands()
    for name, arguments in ARGUMENTS_BEFORE_THE_SCHEMA.items():
        actions = {a.dest: a for a in commands[name]._actions}
        for flag, dest in arguments.items():
            assert dest in actions, (name, flag)
            assert flag == dest or flag in actions[dest].option_strings, (name, flag)
            assert actions[dest].help, (name, flag)  # --help stays informative


def test_cli_writes_no_flag_by_hand() -> None:
    source = Path(cli.__file__).read_text()
    assert source.count("add_argument(") == 1 and '"--version"' in source  # the rest is generated


def test_shared_options_are_declared_once_with_each_command_s_default() -> None:
    from cnnkit.config import SHARED, schema
    from cnnkit.config import options as options_module

    by_flag = {spec.flag: spec for spec in SHARED.values()}
    declared = [spec for _, _, spec in schema()]
    for _, klass in vars(options_module).items():
        if dataclasses.is_dataclass(klass):
            declared += [item.metadata["cnnkit"] for item in dataclasses.fields(klass)]
    shown = {"help": "", "doc": "", "metavar": None, "group": ""}
    for spec in declared:
        if spec.flag in by_flag and spec.flag != "--tta":  # predict's --tta also takes no value: its own
            assert dataclasses.replace(spec, **shown) == dataclasses.replace(by_flag[spec.flag], **shown), spec.flag
    seen = {flag: [name for name, command in _commands().items() if flag in command._option_string_actions]
            for flag in by_flag}  # fmt: skip
    assert len(seen["--device"]) == 7 and len(seen["--batch-size"]) == 4 and len(seen["--trust-code"]) == 8
    defaults = {name: command._option_string_actions["--device"].default for name, command in _commands().items()
                if name in ("eval", "predict", "report", "serve", "check")}  # fmt: skip
    assert defaults == {"eval": "auto", "predict": "cpu", "report": "auto", "serve": "auto", "check": "auto"}


@pytest.mark.parametrize(("argv", "words"), [
    (["eval", "RUN", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["predict", "RUN", "x.png", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["check", "DATA", "--workers", "-2"], "--workers must be >= 0, got -2"),
    (["serve", "RUN", "--port", "70000"], "--port must be in [1, 65535], got 70000"),
    (["predict", "RUN.onnx", "x.png", "--backend", "torch"], "RUN.onnx is an ONNX file"),
    (["export", "RUN", "--format", "torchscript", "--opset", "17"], "--dynamic-batch and --opset apply to"),
    (["export", "RUN", "--opset", "6"], "--opset must be >= 7, got 6"),
    (["check", "DATA", "--folds", "3"], "--folds only apply to the label check: add --labels"),
    (["check", "DATA", "--labels", "--quick"], "--labels decodes every image; it cannot run with --quick"),
    (["lr-find", "--start-lr", "0"], "--start-lr must be > 0, got 0"),
])  # fmt: skip
def test_every_command_s_values_are_checked_by_validate_before_any_file_is_read(capsys, tmp_path, monkeypatch,
                                                                             argv, words) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)  # RUN, DATA, x.png do not exist: the values are refused first
    code, _, err = run_cli(capsys, *argv)

    assert code == 2
    assert words in one_line_error(err)
    assert not list(tmp_path.iterdir())


def test_the_readme_command_reference_lists_every_argument() -> None:
    from cnnkit.config import config_flags

    readme = (Path(cli.__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip(" `"): line for line in readme.splitlines() if line.startswith("| `")}
    config_keys = {*config_flags().values(), "recipe", "config", "set", "model_kwargs", "data_kwargs"}
    for name, command in _commands().items():
        row = rows[name]
        for action in command._actions:
            if isinstance(action, argparse._HelpAction) or action.dest in config_keys:  # those: `train --help`
                continue
            shown = action.option_strings[0] if action.option_strings else action.metavar or action.dest.upper()
            assert shown.strip("[]") in row, (name, shown)

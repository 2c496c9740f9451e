"""Your own model and data: ``--model FILE.py:NAME``, ``--data FILE.py:NAME``, ``register_model``,
the no-code ``convnet``, and the rule that loading a checkpoint never imports code on its own.

The model and dataset files are written into temporary folders the way a user writes them
(a plain ``nn.Module``; a ``Dataset`` over real MNIST digits returning PIL images); each
file appends a line to ``imports.txt`` beside it whenever Python executes it, so the tests
can see exactly when cnnkit imported it.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cnnkit
from cli_helpers import one_line_error, run_cli
from cnnkit import usercode
from cnnkit.cli import main
from cnnkit.data.datasets import load_source
from cnnkit.engine import read_checkpoint
from cnnkit.errors import CnnkitError, UsageError
from cnnkit.inference import Predictor
from cnnkit.models import create_model, registry
from polling import WAIT_S

MODEL_CODE = '''
from pathlib import Path

from torch import nn

with open(Path(__file__).with_name("imports.txt"), "a") as log:  # the tests count imports
    log.write("imported\\n")


class DigitNet(nn.Module):
    """A user's plain nn.Module: no forward_features, no reset_head; forward returns logits."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, input_size=(28, 28), width: int = 8):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        flat = 2 * width * (input_size[0] // 4) * (input_size[1] // 4)
        self.fc = nn.Linear(flat, num_classes)

    def forward(self, x):
        return self.fc(self.convs(x).flatten(1))


class NeedsDepth(nn.Module):
    def __init__(self, num_classes, depth, width=8):
        super().__init__()
        self.fc = nn.Linear(depth, num_classes)


class TenLogits(nn.Module):
    """Ignores num_classes: always 10 logits."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(1, 10)

    def forward(self, x):
        return self.fc(x.mean((1, 2, 3))[:, None])
'''

DATA_CODE = '''
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import MNIST

with open(Path(__file__).with_name("imports.txt"), "a") as log:
    log.write("imported\\n")


class Digits(Dataset):
    """Real MNIST digits as PIL images; split="train" or "test"."""

    def __init__(self, root, split="train", size=1000):
        mnist = MNIST(root, train=split == "train", download=False)
        self.images, self.labels = mnist.data[:size], mnist.targets[:size]
        self.classes = [str(d) for d in range(10)]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return Image.fromarray(self.images[index].numpy()), int(self.labels[index])


class Normalised(Digits):
    """What the seed tutorials return: tensors after Normalize((0.5,), (0.5,))."""

    def __getitem__(self, index):
        return (self.images[index][None].float() / 255 - 0.5) / 0.5, int(self.labels[index])
'''


def _write(folder: Path, name: str, code: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(code), encoding="utf-8")
    return path


def _imports(code_file: Path) -> int:
    log = code_file.with_name("imports.txt")
    return len(log.read_text().splitlines()) if log.is_file() else 0


def _cli(*argv: str) -> tuple[int, str, str]:
    """``cnnkit ARGV`` in-process, for module-scoped fixtures (capsys is per test)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def new_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process as a fresh one would be: no user code imported or bound."""
    monkeypatch.setattr(usercode, "_BOUND", {})
    for name in [name for name in sys.modules if name.startswith("_cnnkit_user_")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delenv(usercode.ENV_VAR, raising=False)


# ----------------------------------------------------------------------------- your own model


@pytest.fixture(scope="module")
def model_run(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """``cnnkit train --model nets.py:DigitNet`` on 3,000 real MNIST digits, 1 epoch: (run, file, stdout)."""
    folder = tmp_path_factory.mktemp("user-model")
    code_file = _write(folder, "nets.py", MODEL_CODE)
    cwd = os.getcwd()
    os.chdir(folder)  # the reference is relative, as a user types it
    try:
        code, out, err = _cli("train", "--model", "nets.py:DigitNet", "--model-kwargs", '{"width": 12}',
                              "--data", "mnist", "--data-dir", str(mnist_root), "--limit-train", "3000",
                              "--limit-eval", "500", "--epochs", "1", "--threads", "1", "--output-dir",
                              str(folder / "runs"), "--no-progress", "--no-report")  # fmt: skip
    finally:
        os.chdir(cwd)
    assert code == 0, err
    (run_dir,) = (folder / "runs").iterdir()
    return run_dir, code_file, out


def test_user_model_trains_and_the_checkpoint_records_its_code(model_run) -> None:
    run_dir, code_file, out = model_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test_acc"] > 0.7  # one epoch on 3,000 real digits; chance is 0.1
    assert run_dir.name.startswith("DigitNet-")

    payload = read_checkpoint(run_dir / "checkpoints" / "best.pt")  # torch.load(weights_only=True)
    record = payload["model"]["code"]
    assert payload["model"]["name"] == "nets.py:DigitNet" and payload["model"]["kwargs"] == {"width": 12}
    assert record["kind"] == "file" and record["attr"] == "DigitNet"
    assert record["path"] == str(code_file.resolve())
    assert record["sha256"] == __import__("hashlib").sha256(code_file.read_bytes()).hexdigest()
    assert payload["data_code"] is None
    line = next(line for line in out.splitlines() if line.startswith("code: model DigitNet from "))
    assert f"--trust-code {code_file.resolve()}" in line
    assert line in (run_dir / "log.txt").read_text()


def test_loading_without_trust_imports_nothing_and_says_what_to_pass(model_run, new_process, capsys) -> None:
    run_dir, code_file, _ = model_run
    before = _imports(code_file)
    digit = run_dir / "digit.png"
    Image.fromarray(load_source("embedded-mnist", None, False).test[0][0, 0].numpy()).save(digit)

    for argv in (("predict", str(run_dir), str(digit)), ("eval", str(run_dir)), ("export", str(run_dir)),
                 ("summary", str(run_dir))):  # fmt: skip
        code, _, err = run_cli(capsys, *argv)
        assert code == 2, argv
        line = one_line_error(err)
        assert "your own code (DigitNet from" in line and f"--trust-code {code_file.resolve()}" in line
    with pytest.raises(UsageError, match="never imports code named inside a checkpoint"):
        cnnkit.load_checkpoint(run_dir)
    with pytest.raises(UsageError, match="--trust-code"):
        Predictor.from_checkpoint(run_dir)
    assert _imports(code_file) == before


def test_a_fresh_process_refuses_too(model_run) -> None:
    run_dir, code_file, _ = model_run
    before = _imports(code_file)
    env = {**os.environ, "CNNKIT_OFFLINE": "1"}
    env.pop(usercode.ENV_VAR, None)
    proc = subprocess.run([sys.executable, "-m", "cnnkit", "eval", str(run_dir)], capture_output=True, text=True,
                          env=env, timeout=WAIT_S, cwd=code_file.parent)  # the file is right there: still not imported
    assert proc.returncode == 2
    assert "--trust-code" in one_line_error(proc.stderr)
    assert _imports(code_file) == before


def test_trusted_code_predicts_and_exports_onnx(model_run, new_process, capsys, tmp_path) -> None:
    pytest.importorskip("onnxruntime", reason="the export extra is not installed")
    run_dir, code_file, _ = model_run
    images, labels = load_source("embedded-mnist", None, False).test
    paths = []
    for i in range(40):
        paths.append(tmp_path / f"digit{i}.png")
        Image.fromarray(images[i, 0].numpy()).save(paths[-1])
    copy = _write(tmp_path / "elsewhere", "nets.py", code_file.read_text())  # a moved copy: same name

    code, out, err = run_cli(capsys, "predict", str(run_dir), *map(str, paths), "--trust-code", str(copy),
                             "--out", str(tmp_path / "preds.json"), "--no-progress")  # fmt: skip
    assert code == 0, err
    rows = json.loads((tmp_path / "preds.json").read_text())["predictions"]
    predicted = [int(row["label"]) for row in rows]
    assert np.mean(np.array(predicted) == labels[:40].numpy()) > 0.8
    assert _imports(copy) == 1  # the trusted copy was imported, once

    code, out, err = run_cli(capsys, "export", str(run_dir), "--check-images", *map(str, paths[:8]))
    assert code == 0, err  # imported in this process by the predict above: no --trust-code needed again
    assert "top-1 agreement 100.00%" in out and out.rstrip().endswith("OK")
    onnx = Predictor.from_onnx(run_dir / "export" / "model.onnx")
    assert [p.index for p in onnx.predict(paths)] == predicted


def test_trust_code_keyword_and_environment(model_run, new_process, monkeypatch) -> None:
    run_dir, code_file, _ = model_run
    loaded = cnnkit.load_checkpoint(run_dir, trust_code=True)  # whatever the checkpoint names
    assert type(loaded.model).__name__ == "DigitNet"
    assert not hasattr(loaded.model, "forward_features")  # a plain module, used as it is

    monkeypatch.setattr(usercode, "_BOUND", {})
    monkeypatch.setenv(usercode.ENV_VAR, str(code_file))
    predictor = Predictor.from_checkpoint(run_dir)
    x = torch.zeros(1, 1, 28, 28)
    torch.testing.assert_close(predictor.logits(x), loaded.model(x).detach())


def test_constructor_mismatch_names_the_expected_arguments(model_run, capsys, tmp_path) -> None:
    _, code_file, _ = model_run
    ref = f"{code_file}:NeedsDepth"
    code, _, err = run_cli(capsys, "train", "--model", ref, "--output-dir", str(tmp_path))
    line = one_line_error(err)
    assert code == 2
    assert "missing a required argument: 'depth'" in line
    assert "NeedsDepth(num_classes, depth, width=8)" in line and "--model-kwargs" in line

    code, _, err = run_cli(capsys, "train", "--model", f"{code_file}:DigitNet", "--model-kwargs", "widht=4",
                           "--output-dir", str(tmp_path))  # fmt: skip
    assert code == 2
    assert "unknown argument(s) 'widht'; accepted arguments: width" in one_line_error(err)

    code, _, err = run_cli(capsys, "train", "--model", f"{code_file}:DigitNett", "--output-dir", str(tmp_path))
    assert code == 2
    assert "has no 'DigitNett'; it defines: DigitNet, NeedsDepth, TenLogits" in one_line_error(err)

    assert not list(tmp_path.iterdir())  # no run folder for runs that never started
    usercode.load(f"{code_file}:TenLogits")
    with pytest.raises(CnnkitError, match=r"returns shape \[2, 10\] for 2 images, but logits \[2, 3\] are needed"):
        create_model(f"{code_file}:TenLogits", num_classes=3, in_chans=1, input_size=28)


def test_model_from_an_importable_module(model_run, mnist_root, tmp_path, monkeypatch) -> None:
    _, code_file, _ = model_run
    package = tmp_path / "userpkg"
    for name in ("userpkg", "userpkg.nets"):  # imported below; gone again afterwards
        monkeypatch.setitem(sys.modules, name, None)
        del sys.modules[name]
    _write(package, "__init__.py", "")
    _write(package, "nets.py", code_file.read_text())
    monkeypatch.syspath_prepend(str(tmp_path))
    run = cnnkit.train(model="userpkg.nets:DigitNet", data="embedded-mnist", epochs=1, limit_train=1000,
                       limit_eval=200, threads=1, output_dir=str(tmp_path / "runs"), report=False, progress=False,
                       log=lambda line: None)  # fmt: skip
    record = read_checkpoint(run.checkpoint)["model"]["code"]
    assert record["kind"] == "module" and record["module"] == "userpkg.nets"
    monkeypatch.setattr(usercode, "_BOUND", {})
    with pytest.raises(UsageError, match="--trust-code userpkg.nets"):
        cnnkit.load_checkpoint(run.dir)
    with cnnkit.trust_code("userpkg.nets"):
        assert cnnkit.load_checkpoint(run.dir).model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


REGISTERED_CODE = '''
import cnnkit
from torch import nn


@cnnkit.register_model("user_tiny_test")
class Tiny(nn.Module):
    """A registered plain module taking only num_classes."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 5), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(), nn.Linear(8 * 6 * 6, num_classes)
        )

    def forward(self, x):
        return self.net(x)
'''


def test_register_model_in_python(tmp_path, monkeypatch) -> None:
    _write(tmp_path, "my_registered.py", REGISTERED_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "my_registered", None)  # (removed again afterwards)
    del sys.modules["my_registered"]
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))  # forget the registration afterwards
    importlib.import_module("my_registered")  # what a user's `import my_registered` does
    info = registry.model_info("user_tiny_test")
    assert info.default_in_chans == 3 and info.description.startswith("A registered plain module")

    run = cnnkit.train(model="user_tiny_test", epochs=1, limit_train=1000, limit_eval=200, threads=1,
                       output_dir=str(tmp_path / "runs"), report=False, progress=False,
                       log=lambda line: None)  # fmt: skip
    record = read_checkpoint(run.checkpoint)["model"]["code"]
    assert record["kind"] == "registered" and record["module"] == "my_registered" and record["attr"] == "Tiny"

    del registry._MODELS["user_tiny_test"]  # a new process: nothing registered it
    with pytest.raises(UsageError, match=r"--trust-code .*my_registered\.py"):
        cnnkit.load_checkpoint(run.dir)
    loaded = cnnkit.load_checkpoint(run.dir, trust_code=[str(tmp_path / "my_registered.py")])
    assert "user_tiny_test" in registry._MODELS and type(loaded.model).__name__ == "Tiny"


# ----------------------------------------------------------------------------- your own data, convnet


@pytest.fixture(scope="module")
def data_run(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """``--data digits.py:Digits`` (train and test splits) with the no-code convnet, 1 epoch."""
    folder = tmp_path_factory.mktemp("user-data")
    code_file = _write(folder, "digits.py", DATA_CODE)
    code, out, err = _cli("train", "--data", f"{code_file}:Digits", "--data-kwargs", f"root={mnist_root}", "size=2500",
                          "--model", "convnet", "--layers", "16,M,32,M", "--head", "64", "--dropout", "0.2",
                          "--epochs", "1", "--threads", "1", "--output-dir", str(folder / "runs"), "--no-progress",
                          "--no-report")  # fmt: skip
    assert code == 0, err
    (run_dir,) = (folder / "runs").iterdir()
    return run_dir, code_file, out


def test_user_dataset_trains_the_no_code_convnet(data_run) -> None:
    run_dir, code_file, out = data_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test_acc"] > 0.7  # 2,500 real digits, one epoch; chance is 0.1
    assert "train 2,500 / val 2,500 / test 2,500" in out  # split="test" gave the test pool
    assert f"code: dataset Digits from {code_file.resolve()}" in out
    payload = read_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert payload["model"]["kwargs"] == {"layers": "16,M,32,M", "head": 64, "dropout": 0.2}
    assert payload["data_code"]["attr"] == "Digits" and payload["config"]["data"]["kwargs"]["size"] == 2500
    model = cnnkit.load_checkpoint(run_dir).model  # convnet is cnnkit's: no trust needed for the model
    assert [m.out_channels for m in model.features if isinstance(m, torch.nn.Conv2d)] == [16, 32]


def test_eval_of_a_user_dataset_run_needs_trust(data_run, new_process, capsys) -> None:
    run_dir, code_file, _ = data_run
    before = _imports(code_file)
    code, _, err = run_cli(capsys, "eval", str(run_dir))
    assert code == 2
    assert f"--trust-code {code_file.resolve()}" in one_line_error(err) and _imports(code_file) == before

    code, out, err = run_cli(capsys, "eval", str(run_dir), "--json", "--trust-code", str(code_file))
    assert code == 0, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert json.loads(out)["top1"] == summary["test_acc"] and json.loads(out)["images"] == 2500


def test_normalised_images_are_refused_with_the_reason(data_run, mnist_root, capsys, tmp_path) -> None:
    _, code_file, _ = data_run
    code, _, err = run_cli(capsys, "train", "--data", f"{code_file}:Normalised", "--data-kwargs",
                           f"root={mnist_root}", "size=50", "--output-dir", str(tmp_path))  # fmt: skip
    assert code == 2
    line = one_line_error(err)
    assert "look normalised" in line and "floats in [0, 1]" in line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "convnet", "--layers", "16,X,32"], "'X' is neither a conv width"),
        (["--model", "convnet", "--head", "wide"], "hidden layer sizes"),
        (["--model", "lenet", "--dropout", "0.5"], "accepted arguments: none"),
        (["--model-kwargs", "width"], "KEY=VALUE"),
        (["--data", "mnist", "--data-kwargs", "root=x"], "--data-kwargs apply to your own dataset"),
        (["--model", "nowhere.py:Net"], "code file not found: nowhere.py"),
    ],
)
def test_usage_errors_exit_2(args, message, capsys, tmp_path) -> None:
    code, _, err = run_cli(capsys, "train", *args, "--output-dir", str(tmp_path))
    assert code == 2
    assert message in one_line_error(err)

"""Runs that survive faults, each test injecting the fault it guards against: SIGKILL in
the middle of an epoch then ``--resume``, a kill between a checkpoint's temp write and its
rename, a checkpoint that runs code when unpickled, and reruns that must be bit-identical.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import cnnkit
from cli_helpers import one_line_error, run_cli
from cnnkit.checkpoint import read_checkpoint, save_checkpoint
from cnnkit.errors import CnnkitError
from polling import WAIT_S

# The default run (LeNet, embedded MNIST, "digits" augmentation, cosine schedule) cut to
# 2 epochs of 3,000 images: 187 steps an epoch, a mid-epoch checkpoint every 20 steps.
RUN = ["--limit-train", "3000", "--limit-eval", "500", "--epochs", "2", "--batch-size", "16",
       "--checkpoint-every-steps", "20", "--deterministic", "--device", "cpu", "--threads", "1",
       "--no-report", "--no-progress"]  # fmt: skip
TIMING = {"epoch_time_s", "train_time_s", "train_images_per_s"}  # the only metrics.csv columns allowed to differ


def _cnnkit(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnnkit", *argv], capture_output=True, text=True, timeout=WAIT_S,
                          **kwargs)  # fmt: skip


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as handle:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(handle)]


def _same_weights(a: Path, b: Path) -> bool:
    left, right = read_checkpoint(a)["state_dict"], read_checkpoint(b)["state_dict"]
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def _wait_for_mid_epoch_checkpoint(process: subprocess.Popen, last: Path, epoch: int) -> dict:
    """Poll ``last.pt`` until it is a mid-epoch checkpoint of ``epoch`` (1-based)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and process.poll() is None:
        if last.is_file():
            try:
                payload = read_checkpoint(last)
            except CnnkitError:  # cannot happen with atomic writes; keep polling if it does
                payload = None
            if payload and payload["epoch"] == epoch - 1 and payload.get("in_epoch"):
                return payload
        time.sleep(0.01)
    raise AssertionError(f"no mid-epoch checkpoint of epoch {epoch} appeared (exit code {process.poll()})")


def test_sigkill_mid_epoch_then_resume_ends_bit_identical(tmp_path: Path) -> None:
    full = _cnnkit("train", *RUN, "--output-dir", str(tmp_path), "--name", "full")
    assert full.returncode == 0, full.stderr

    run_dir = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "cnnkit", "train", *RUN, "--output-dir", str(tmp_path),
                                "--name", "killed"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        seen = _wait_for_mid_epoch_checkpoint(process, run_dir / "checkpoints" / "last.pt", epoch=2)
        assert process.poll() is None, "the run ended before it could be killed"
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert 0 < seen["in_epoch"]["batches"] < 187
    before = read_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert before["epoch"] == 1 and len(_rows(run_dir)) == 1  # epoch 2 was cut short

    resumed = _cnnkit("train", "--resume", str(run_dir), "--no-progress")

    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {run_dir} after epoch 1 and " in resumed.stdout
    assert _same_weights(tmp_path / "full" / "checkpoints" / "last.pt", run_dir / "checkpoints" / "last.pt")
    assert _same_weights(tmp_path / "full" / "checkpoints" / "best.pt", run_dir / "checkpoints" / "best.pt")
    rows = _rows(run_dir)
    assert [row["epoch"] for row in rows] == ["1", "2"]  # none missing, none twice
    assert rows == _rows(tmp_path / "full")
    env = json.loads((run_dir / "env.json").read_text())
    assert len(env["resumed"]) == 1 and env["data_fingerprint"]


def test_resume_refuses_a_finished_run_and_changed_settings(tmp_path: Path, capsys) -> None:
    run = cnnkit.train(limit_train=500, limit_eval=200, epochs=1, device="cpu", output_dir=str(tmp_path), name="r",
                       report=False, progress=False, log=lambda _: None)  # fmt: skip

    code, _, err = run_cli(capsys, "train", "--resume", str(run.dir), "--no-progress")
    assert code == 2 and "already trained 1 of 1 epochs; pass --epochs N" in one_line_error(err)
    code, _, err = run_cli(capsys, "train", "--resume", str(run.dir), "--lr", "0.1")
    assert code == 2 and "train.lr cannot change" in one_line_error(err)
    code, _, err = run_cli(capsys, "train", "--resume", str(tmp_path / "nope"))
    assert code == 1 and "run folder not found" in one_line_error(err)

    # --epochs extends a finished run: one more row, numbered on
    code, out, err = run_cli(capsys, "train", "--resume", str(run.dir), "--epochs", "2", "--no-progress")
    assert code == 0, err
    assert [row["epoch"] for row in _rows(run.dir)] == ["1", "2"]


def test_kill_between_temp_write_and_rename_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    script = textwrap.dedent(f"""
        import os, signal, torch
        from cnnkit.checkpoint import save_checkpoint
        save_checkpoint({{"model": {{"name": "lenet"}}, "state_dict": {{"w": torch.ones(3)}}, "epoch": 1}},
                        {str(path)!r})
        os.replace = lambda src, dst: os.kill(os.getpid(), signal.SIGKILL)  # die after the temp file is written
        save_checkpoint({{"model": {{"name": "lenet"}}, "state_dict": {{"w": torch.zeros(3)}}, "epoch": 2}},
                        {str(path)!r})
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=WAIT_S)

    assert done.returncode == -signal.SIGKILL, done.stderr
    strays = list(tmp_path.glob(".last.pt.*.tmp"))
    assert len(strays) == 1 and strays[0].stat().st_size > 0  # the new file was written, never renamed
    payload = read_checkpoint(path)
    assert payload["epoch"] == 1 and torch.equal(payload["state_dict"]["w"], torch.ones(3))
    save_checkpoint({"model": {"name": "lenet"}, "state_dict": {"w": torch.zeros(3)}, "epoch": 2}, path)
    assert read_checkpoint(path)["epoch"] == 2 and not list(tmp_path.glob("*.tmp"))


class _RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def malicious_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "model": {"name": "lenet", "kwargs": {}}, "state_dict": {}, "payload": _RunsCode(marker)},
               path)  # fmt: skip
    return path, marker


def test_a_checkpoint_that_would_run_code_is_refused(malicious_checkpoint) -> None:
    path, marker = malicious_checkpoint
    with pytest.raises(CnnkitError, match="refused to load .* would run code"):
        read_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("command", [["eval"], ["export"], ["predict", "IMAGE"], ["summary"]])
def test_every_command_refuses_the_malicious_checkpoint(malicious_checkpoint, command, capsys, tmp_path) -> None:
    path, marker = malicious_checkpoint
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("L", (28, 28)).save(image)
    argv = [command[0], str(path)] + [str(image) if arg == "IMAGE" else arg for arg in command[1:]]

    code, _, err = run_cli(capsys, *argv)

    assert code == 1
    assert "refused to load" in one_line_error(err)
    assert not marker.exists()


def test_same_seed_and_config_give_identical_runs(tmp_path: Path) -> None:
    runs = [cnnkit.train(limit_train=1000, limit_eval=300, epochs=2, device="cpu", deterministic=True, seed=3,
                         output_dir=str(tmp_path), name=name, report=False, progress=False, log=lambda _: None)
            for name in ("a", "b")]  # fmt: skip

    assert _rows(runs[0].dir) == _rows(runs[1].dir)
    assert _same_weights(runs[0].dir / "checkpoints" / "last.pt", runs[1].dir / "checkpoints" / "last.pt")
    env = json.loads((runs[0].dir / "env.json").read_text())
    for key in ("python", "torch", "torchvision", "numpy", "cnnkit", "device", "seed", "deterministic",
                "data_fingerprint"):  # fmt: skip
        assert env[key] is not None, key
    assert env["deterministic"] is True and env["seed"] == 3

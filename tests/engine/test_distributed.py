"""Data-parallel training under torchrun, on the CPU with the gloo backend.

Two processes with the same global batch must train like one (same shards of the same
order, augmentation drawn for the whole epoch, gradients averaged), only rank 0 may write
the run folder, and a run whose rank was killed must resume, on any number of ranks.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.distributed as dist

import cnnkit
from cnnkit.engine import Checkpoint
from cnnkit.errors import CnnkitError
from polling import WAIT_S

pytestmark = [
    pytest.mark.skipif(
        not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo"
    ),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the ranks through /proc"),
]

# Real MNIST digits (the embedded subset), float32 so the comparison is not blurred by bf16.
SMALL_RUN = ["--limit-train", "3000", "--amp", "off", "--threads", "1", "--no-report", "--no-progress",
             "--no-tensorboard"]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def torchrun(args: list[str], procs: int = 2) -> list[str]:
    """The command ``torchrun --standalone --nproc_per_node PROCS -m cnnkit train ARGS``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
            "-m", "cnnkit", "train", *args]  # fmt: skip


def run_ok(command: list[str], timeout: float = WAIT_S) -> str:
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def metrics_epochs(run_dir: Path) -> list[int]:
    with (run_dir / "metrics.csv").open() as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


def test_two_processes_train_like_one_and_only_rank_0_writes(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    stdout = run_ok(torchrun([*SMALL_RUN, "--epochs", "2", "--output-dir", str(out), "--name", "ddp"]))
    single = cnnkit.train(epochs=2, limit_train=3000, amp="off", threads=1, report=False, tensorboard=False,
                          output_dir=str(tmp_path / "single"), progress=False, log=lambda line: None)  # fmt: skip

    assert sorted(p.name for p in out.iterdir()) == ["ddp"]  # rank 1 made no folder of its own
    run_dir = out / "ddp"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert abs(summary["test_acc"] - single.metrics["test_acc"]) <= 0.005
    assert abs(summary["val_acc"] - single.metrics["val_acc"]) <= 0.005
    assert metrics_epochs(run_dir) == [1, 2]
    log = (run_dir / "log.txt").read_text()
    assert log.count("epoch 1/2") == 1 and "distributed: 2 processes" in log and "2 x 32" in log
    assert stdout.count("epoch 2/2") == 1  # rank 1 prints nothing
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    # the reduced metrics cover the whole validation split, not one rank's half
    assert summary["test_acc"] > 0.5


def _rank_pids(launcher: subprocess.Popen) -> dict[int, int]:
    """RANK -> pid of the worker processes torchrun started."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        parent = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
        if parent != launcher.pid:
            continue
        for item in environ:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = int(entry.name)
    return found


def _inside_epoch_2(checkpoint: Path) -> bool:
    """Whether ``checkpoint`` (written atomically by rank 0) was saved inside epoch 2 (not
    inside epoch 1: that one is still there just after epoch 1's metrics row is written)."""
    try:
        training = Checkpoint.load(checkpoint).training
    except CnnkitError:
        return False
    return training is not None and training.in_epoch is not None and training.epoch == 1


def test_kill_one_rank_mid_epoch_then_resume_on_one_then_two_processes(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "killed"
    last = run_dir / "checkpoints" / "last.pt"
    # batch 16: about 560 steps (several seconds) per epoch, so the kill lands well inside epoch 2
    args = [*SMALL_RUN, "--limit-train", "9000", "--batch-size", "16", "--epochs", "3", "--checkpoint-every-steps",
            "20", "--output-dir", str(run_dir.parent), "--name", run_dir.name]  # fmt: skip
    launcher = subprocess.Popen(
        torchrun(args), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline, ranks = time.monotonic() + 240, {}
    while time.monotonic() < deadline and launcher.poll() is None:
        ranks = ranks if 1 in ranks else _rank_pids(launcher)
        # after epoch 1, wait for a mid-epoch checkpoint of epoch 2, then kill rank 1 at once
        if 1 in ranks and _inside_epoch_2(last):
            break
        time.sleep(0.02)
    assert launcher.poll() is None and 1 in ranks, "the run ended before a rank could be killed"
    os.kill(ranks[1], signal.SIGKILL)
    launcher.communicate(timeout=WAIT_S)
    assert launcher.returncode != 0, "torchrun must report the killed rank"
    assert metrics_epochs(run_dir) == [1]
    assert not (run_dir / "summary.json").exists()
    assert Checkpoint.load(last).training.in_epoch is not None  # killed inside epoch 2, after a mid-epoch checkpoint

    # the 2-process run continues mid-epoch in a single process (a step is the same global batch)...
    single = cnnkit.train(resume=run_dir, progress=False, log=lambda line: None)
    assert metrics_epochs(run_dir) == [1, 2, 3]  # each epoch once, none lost or repeated
    assert single.metrics["test_acc"] > 0.9
    # ...and is extended by one more epoch on two processes again
    run_ok(torchrun(["--resume", str(run_dir), "--epochs", "4", "--no-progress"]))
    assert metrics_epochs(run_dir) == [1, 2, 3, 4]
    assert json.loads((run_dir / "summary.json").read_text())["test_acc"] > 0.9
    assert "on 2 processes" in (run_dir / "log.txt").read_text()

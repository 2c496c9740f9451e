"""Run folders are never overwritten or shared (issue 28 item 2), each test on real runs.

A taken ``--name`` gets ``NAME-2``; ``--exist-ok`` reuses a finished folder but never one a
process writes into; two trainings started together with one name get two folders; a lock
left by a dead process is taken over; a full disk ends in one line and a ``failed`` status,
whatever file it struck (a fake full disk everywhere, a real small tmpfs where mounting is
permitted).
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cli_helpers import one_line_error, run_cli
from cnnkit import atomic, runfolder
from cnnkit.errors import CnnkitError
from cnnkit.runfolder import RunFolder

# The default run (LeNet on the embedded digits) cut to seconds.
QUICK = ["--epochs", "1", "--limit-train", "200", "--limit-eval", "100", "--device", "cpu", "--no-progress",
         "--no-report", "--no-tensorboard"]  # fmt: skip
# A process that holds a run folder's lock until it is killed.
HOLD = ("import sys, time\nfrom cnnkit.runfolder import RunFolder\nwith RunFolder(sys.argv[1]).lock():\n"
        "    print('held', flush=True)\n    time.sleep(600)\n")  # fmt: skip


def _train(capsys: pytest.CaptureFixture[str], out: Path, name: str, *extra: str) -> tuple[int, str, str]:
    return run_cli(capsys, "train", *QUICK, "--output-dir", str(out), "--name", name, *extra)


def _files(run: Path) -> dict[str, bytes]:
    """Every file of a run (bytes by relative path), to show that nothing in it changed."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@contextmanager
def _held_by_another_process(folder: Path) -> Iterator[int]:
    """``folder`` locked by a live process (its pid) until the block ends."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# ----------------------------------------------------------------------------- names


def test_a_taken_name_gets_a_new_folder_and_both_runs_are_kept(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    code, _, err = _train(capsys, tmp_path, "scratch", "--lr", "0.002")
    assert code == 0, err
    first = _files(tmp_path / "scratch")
    code, out, err = _train(capsys, tmp_path, "scratch", "--lr", "0.01")
    assert code == 0, err
    assert f"run folder {tmp_path / 'scratch'} exists; writing to {tmp_path / 'scratch-2'}" in out
    assert _files(tmp_path / "scratch") == first  # the first run, byte for byte
    second = _files(tmp_path / "scratch-2")
    assert {"checkpoints/best.pt", "checkpoints/last.pt", "config.yaml", "metrics.csv"} <= set(first) & set(second)
    assert "lr: 0.002" in first["config.yaml"].decode() and "lr: 0.01" in second["config.yaml"].decode()
    assert ".lock" not in first and ".lock" not in second  # released at the end


def _claim(args: tuple[str, object]) -> str:
    output_dir, start = args
    start.wait()  # type: ignore[attr-defined]  (all at once)
    return RunFolder.create(output_dir, "same").name


def test_folders_claimed_at_the_same_moment_are_all_different(tmp_path: Path) -> None:
    with multiprocessing.Manager() as manager:
        start = manager.Barrier(6)
        with multiprocessing.get_context("spawn").Pool(6) as pool:
            names = pool.map(_claim, [(str(tmp_path), start)] * 6)
    assert sorted(names) == ["same", "same-2", "same-3", "same-4", "same-5", "same-6"]


def test_two_trainings_started_together_with_one_name_never_share_a_folder(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "cnnkit", "train", *QUICK, "--output-dir", str(tmp_path), "--name", "same"]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [run.communicate(timeout=600) for run in runs]
    for run, (_, err) in zip(runs, results, strict=True):
        assert run.returncode == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same", "same-2"]
    folders = {re.findall(r"^run folder: (.+)$", out, re.MULTILINE)[-1] for out, _ in results}
    assert folders == {str(tmp_path / "same"), str(tmp_path / "same-2")}
    for name in ("same", "same-2"):
        log = (tmp_path / name / "log.txt").read_text()
        assert log.count("run folder:") == 2 and log.count("epoch 1/1") == 1, log  # one run's lines only
        assert f"run folder: {tmp_path / name}" in log
        assert json.loads((tmp_path / name / "status.json").read_text())["status"] == "completed"
        assert (tmp_path / name / "checkpoints" / "best.pt").is_file()


# ----------------------------------------------------------------------------- --exist-ok and the lock


def test_exist_ok_reuses_a_finished_folder_but_not_one_in_use(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    assert _train(capsys, tmp_path, "again")[0] == 0
    code, out, err = _train(capsys, tmp_path, "again", "--exist-ok", "--lr", "0.01")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"] and "exists; writing to" not in out
    assert "lr: 0.01" in (tmp_path / "again" / "config.yaml").read_text()

    before = _files(tmp_path / "again")
    with _held_by_another_process(tmp_path / "again") as pid:
        code, _, err = _train(capsys, tmp_path, "again", "--exist-ok")
        line = one_line_error(err)
        assert code == 1
        assert line.startswith(f"cnnkit: error: run folder {tmp_path / 'again'} is in use by process {pid} (started ")
        assert line.endswith("; wait for it or choose another --name")
        code, _, err = run_cli(capsys, "train", "--resume", str(tmp_path / "again"), "--epochs", "2", "--no-progress")
        assert code == 1 and f"is in use by process {pid}" in one_line_error(err)
        after = _files(tmp_path / "again")
    after.pop(".lock")
    assert after == before  # nothing written by either


def test_resuming_a_run_still_before_its_first_checkpoint_says_it_is_in_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not "the run stopped before its first checkpoint": it is still running."""
    with _held_by_another_process(tmp_path) as pid:
        code, _, err = run_cli(capsys, "train", "--resume", str(tmp_path))
    line = one_line_error(err)
    assert code == 1 and f"is in use by process {pid} (started " in line
    assert line.endswith("; wait for it to end (or stop it), then resume")


def test_a_second_writer_of_one_folder_is_refused_and_a_dead_ones_lock_taken_over(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    with folder.lock():
        with pytest.raises(CnnkitError, match=f"run folder {tmp_path} is in use by process {os.getpid()}"):
            with folder.lock():
                pass
        assert folder.owner()["pid"] == os.getpid()
    assert not folder.file(".lock").exists() and folder.owner() is None

    with _held_by_another_process(tmp_path) as pid:  # killed while holding it (SIGKILL: no cleanup)
        assert folder.owner()["pid"] == pid
    assert folder.file(".lock").exists()
    with folder.lock():
        assert folder.owner()["pid"] == os.getpid()


def test_a_killed_trainers_lock_is_free_while_its_forked_workers_linger(tmp_path: Path) -> None:
    """DataLoader workers are forked and outlive a trainer killed with -9 by a few seconds.

    The trainer names its worker only once the worker runs: until a forked child is first
    scheduled (seconds on a loaded machine) its after-fork hook has not closed its copy of
    the lock, and the lock is rightly still held.
    """
    script = ("import multiprocessing, sys, time\nfrom cnnkit.runfolder import RunFolder\n"
              "def work(ready):\n    ready.set()\n    time.sleep(600)\n"
              "with RunFolder(sys.argv[1]).lock():\n"
              "    fork = multiprocessing.get_context('fork')\n    ready = fork.Event()\n"
              "    worker = fork.Process(target=work, args=(ready,))\n"
              "    worker.start()\n    ready.wait()\n"
              "    print(worker.pid, flush=True)\n    time.sleep(600)\n")  # fmt: skip
    trainer = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert trainer.stdout is not None
    worker = int(trainer.stdout.readline())
    try:
        trainer.kill()
        trainer.wait()
        with RunFolder(tmp_path).lock():  # the worker still runs
            assert RunFolder(tmp_path).owner()["pid"] == os.getpid()
    finally:
        os.kill(worker, 9)


def test_a_stale_lock_file_is_taken_over_by_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "old").mkdir()
    stale = {"pid": _dead_pid(), "host": runfolder.socket.gethostname(), "started": "2026-01-01 00:00:00"}
    (tmp_path / "old" / ".lock").write_text(json.dumps(stale))
    code, _, err = _train(capsys, tmp_path, "old", "--exist-ok")
    assert code == 0, err
    assert (tmp_path / "old" / "checkpoints" / "best.pt").is_file()
    assert not (tmp_path / "old" / ".lock").exists()


def test_a_lock_of_a_live_process_without_flock_still_counts(tmp_path: Path) -> None:
    """Written by hand, or on a file system without flock: the pid alone keeps it."""
    live = {"pid": os.getppid(), "host": runfolder.socket.gethostname(), "started": "2026-01-01 00:00:00"}
    (tmp_path / ".lock").write_text(json.dumps(live))
    with pytest.raises(CnnkitError, match=f"in use by process {os.getppid()}"):
        with RunFolder(tmp_path).lock():
            pass
    other = {**live, "host": "elsewhere"}
    (tmp_path / ".lock").write_text(json.dumps(other))
    with pytest.raises(CnnkitError, match="on elsewhere .*delete .*lock"):
        with RunFolder(tmp_path).lock():
            pass


# ----------------------------------------------------------------------------- full disk


def _fake_full_disk(monkeypatch: pytest.MonkeyPatch, victim: str, how: str = "oserror") -> None:
    """Every atomic write of a file named ``victim`` fails as a full disk does, after some bytes:
    an ``OSError(ENOSPC)`` from the write, or torch's zip writer hiding it (``how="torch"``)."""
    real_write = atomic._Recording.write

    def write(self, data):
        if self.path.name.startswith(f".{victim}."):
            real_write(self, bytes(data)[:10])
            if how == "torch":
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(atomic._Recording, "write", write)


@pytest.mark.parametrize(("victim", "how", "file"), [
    ("last.pt", "oserror", "checkpoints/last.pt"),
    ("last.pt", "torch", "checkpoints/last.pt"),
    ("metrics.csv", "oserror", "metrics.csv"),
    ("config.yaml", "oserror", "config.yaml"),
    ("report.html", "oserror", "report/report.html"),
])  # fmt: skip
def test_a_full_disk_ends_in_one_line_and_a_failed_status(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch, victim: str, how: str,
                                                          file: str) -> None:  # fmt: skip
    _fake_full_disk(monkeypatch, victim, how)
    flags = [flag for flag in QUICK if flag != "--no-report" or victim != "report.html"]  # the report is written
    code, _, err = run_cli(capsys, "train", *flags, "--output-dir", str(tmp_path), "--name", "full")
    assert code == 1
    run = tmp_path / "full"
    assert one_line_error(err) == (f"cnnkit: error: disk full while writing {file} in {run}: free space or choose "
                                   "another --output-dir")  # fmt: skip
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed" and status["reason"] == f"disk full while writing {file}"
    assert not list(run.rglob("*.tmp")) and not (run / ".lock").exists()


def test_a_full_disk_while_logging_ends_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    class Full:
        def write(self, text: str) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self) -> None:
            pass

    monkeypatch.setattr(runfolder._LogFile, "_open", lambda self: Full())
    code, _, err = _train(capsys, tmp_path, "log")
    assert code == 1
    assert one_line_error(err).startswith(f"cnnkit: error: disk full while writing log.txt in {tmp_path / 'log'}: ")
    assert json.loads((tmp_path / "log" / "status.json").read_text())["reason"] == "disk full while writing log.txt"


@contextmanager
def _small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root (the fake full disk above covers the same paths)")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_real_full_disk_ends_in_one_line_and_a_failed_status(tmp_path: Path) -> None:
    """A 2 MB tmpfs filled but for 300 kB: LeNet's last.pt (about 0.7 MB with Adam's state) does not fit."""
    with _small_tmpfs(tmp_path / "small", "2m") as small:
        free = shutil.disk_usage(small).free
        (small / "filler").write_bytes(bytes(free - 300_000))
        done = subprocess.run([sys.executable, "-m", "cnnkit", "train", *QUICK, "--output-dir", str(small), "--name",
                               "full"], capture_output=True, text=True, timeout=600)  # fmt: skip
        assert done.returncode == 1
        line = one_line_error(done.stderr)
        assert re.fullmatch(rf"cnnkit: error: disk full while writing \S+ in {small / 'full'}: free space or choose "
                            r"another --output-dir", line), line  # fmt: skip
        status = json.loads((small / "full" / "status.json").read_text())
        assert status["status"] == "failed" and status["reason"].startswith("disk full while writing ")
        assert not list((small / "full").rglob("*.tmp")) and not (small / "full" / ".lock").exists()


def test_ctrl_c_and_failures_release_the_lock(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from cnnkit.commands import train as train_command

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_command, "fit_phases", interrupted)
    assert _train(capsys, tmp_path, "stop")[0] == 130
    assert json.loads((tmp_path / "stop" / "status.json").read_text())["status"] == "interrupted"
    assert not (tmp_path / "stop" / ".lock").exists()


def test_a_run_folder_tells_a_training_run_from_a_config_alone(tmp_path: Path) -> None:
    run = RunFolder.create(tmp_path, "r")
    run.write_text(RunFolder.CONFIG, "data: {name: embedded-mnist}\n")
    assert run.is_run() and not run.is_training_run()  # what `cnnkit lr-find` leaves
    assert run.read_text(RunFolder.CONFIG) == "data: {name: embedded-mnist}\n"
    assert run.read_text(RunFolder.STUDIO_COMMAND) is None

    run.write_metrics([{"epoch": 1, "val_acc": 0.5, "note": "hand-edited"}])

    assert run.is_training_run()
    assert run.read_metrics() == [{"epoch": 1, "val_acc": 0.5, "note": "hand-edited"}]
    assert run.report_file() == run.path / "report" / "report.html"
    assert run.report_file("curves.png").parent == run.report_dir

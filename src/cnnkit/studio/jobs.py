"""Training in the background: one job at a time, with a live status and a stop button.

:func:`start_training` runs :func:`cnnkit.train` (the code behind ``cnnkit train``) in a
thread with the overrides of :func:`cnnkit.studio.kinds.train_overrides`, so the run
folder it writes under ``runs/`` is a normal one. :meth:`TrainJob.status` reads that
folder's ``metrics.csv`` as it grows (the live curves) and keeps the last log lines;
:meth:`TrainJob.stop` asks training to end at the next step or epoch, leaving a run that
``cnnkit train --resume`` (or :func:`resume_training`) continues.

One job runs at a time in a process, whatever the project: a second start is refused
with a message naming the running run. (Per project is what the page needs; per process
is what is safe: cnnkit's log lines and ``log.txt`` go through one shared logger, and two
trainings would share the same CPU cores anyway.)
"""

from __future__ import annotations

import collections
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnkit.errors import CnnkitError
from cnnkit.runfolder import RunFolder
from cnnkit.studio.kinds import Settings, train_command, train_overrides
from cnnkit.studio.project import Project

STATES = ("idle", "running", "completed", "failed", "stopped")
LOG_LINES = 200  # last log lines a status carries

_lock = threading.Lock()
_running: TrainJob | None = None  # the job training now, in this process
_latest: dict[Path, TrainJob] = {}  # each project's latest job (running or finished)


@dataclass
class TrainJob:
    """One training run in a background thread (make it with :func:`start_training`).

    Attributes:
        project: the project it trains on.
        kind: the kind of model (``photos``...; ``resume`` for :func:`resume_training`).
        run_name: the run folder's name under ``runs/`` (chosen before training starts).
        epochs: epochs the run will have when it completes.
        state: ``running``, then ``completed``, ``failed`` or ``stopped``.
        error: what went wrong (``failed``), one line.
        run: the :class:`cnnkit.Run` once completed.
    """

    project: Project
    kind: str
    run_name: str
    epochs: int
    overrides: dict[str, Any]
    resume: Path | None = None
    state: str = "running"
    error: str | None = None
    run: Any = None
    started: float = field(default_factory=time.time)
    finished: float | None = None
    _lines: collections.deque = field(default_factory=lambda: collections.deque(maxlen=LOG_LINES))
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def run_dir(self) -> Path:
        return self.folder.path

    @property
    def folder(self) -> RunFolder:
        """The run folder, read-only (the training thread writes it)."""
        return RunFolder(self.project.runs_dir / self.run_name, writer=False)

    @property
    def running(self) -> bool:
        return self.state == "running"

    def status(self) -> dict[str, Any]:
        """Where the job is, for the page (a plain dict, safe to read from any thread).

        Keys: ``state``, ``run`` (name), ``run_dir``, ``kind``, ``epoch`` (epochs done),
        ``epochs`` (planned), ``history`` (one ``metrics.csv`` row per finished epoch, numbers
        as floats: the live curves), ``best_val_acc``, ``log`` (last lines), ``error``,
        ``stopping`` (a stop was asked and the job still runs), ``seconds`` (so far).
        """
        history = self.folder.read_metrics()
        accuracies = [row["val_acc"] for row in history if isinstance(row.get("val_acc"), float)]
        return {
            "state": self.state, "run": self.run_name, "run_dir": str(self.run_dir), "kind": self.kind,
            "epoch": len(history), "epochs": self.epochs, "history": history,
            "best_val_acc": max(accuracies) if accuracies else None, "log": list(self._lines), "error": self.error,
            "stopping": self._stop.is_set() and self.running,
            "seconds": round((self.finished or time.time()) - self.started, 1),
        }  # fmt: skip

    def stop(self) -> None:
        """Ask training to stop at the next optimizer step or epoch boundary (returns at once).

        The run folder stays resumable: ``last.pt`` records where it stopped and
        ``status.json`` says ``interrupted``; the job's state becomes ``stopped``. A job that
        ended already is left as it is.
        """
        self._stop.set()

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Block until the job ends (or ``timeout`` seconds pass); returns :meth:`status`."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.status()

    def _log(self, line: str) -> None:
        self._lines.extend(line.splitlines() or [""])

    def _work(self) -> None:
        """The thread: train, then record how it ended (never raises)."""
        global _running
        from cnnkit.commands.train import train
        from cnnkit.engine.loop import TrainingStopped

        try:
            extra = {"resume": self.resume} if self.resume is not None else {}
            self.run = train(progress=False, log=self._log, should_stop=self._stop.is_set, **extra, **self.overrides)
            self.state = "completed"
        except TrainingStopped as stopped:
            self.state = "stopped"
            self._log(f"stopped in {stopped.where}; the run can be continued")
        except CnnkitError as exc:
            self.state, self.error = "failed", str(exc)
        except Exception as exc:  # noqa: BLE001 (the page shows it; the server keeps running)
            self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"
            import traceback

            self._log(traceback.format_exc())
        finally:
            if self.resume is None:
                _drop_if_unused(self.folder)
            self.finished = time.time()
            with _lock:
                if _running is self:
                    _running = None


def start_training(project: Project, kind: str, settings: Settings | None = None) -> TrainJob:
    """Start training a model of ``kind`` on ``project`` in a background thread.

    The config is checked as ``cnnkit train`` checks it (values, model name, options) and
    the data checked (:meth:`Project.check_report`'s problems) before the thread starts; only
    then is the run folder ``runs/<kind>-<date>-<time>`` made, with ``studio_command.txt``
    (the ``cnnkit train`` command that reproduces the run), and filled by :func:`cnnkit.train`.
    A job that fails before training wrote into its folder (data or model that cannot be
    built) removes it again: no folder without a run is left under ``runs/``.

    Raises:
        CnnkitError: a training job is running already (in this project: "a training job is
            already running in this project (run NAME, epoch 3/20); wait for it or stop it"),
            or the data cannot train (fewer than 2 classes, too few images in a class...).
        UsageError: an unknown kind or a bad setting.
    """
    overrides = train_overrides(project, kind, settings)
    with _lock:  # said at once, before the data check reads every file
        _refuse_second_job(project)
    check_config(overrides)
    problems = project.check_report().problems
    if problems:
        raise CnnkitError("cannot train yet: " + "; ".join(problems))
    with _lock:
        _refuse_second_job(project)
        folder = _new_run_folder(project, kind)
        folder.write_text(RunFolder.STUDIO_COMMAND, train_command(project, kind, settings) + "\n")
        name = folder.name
        # the folder claimed above is the run's: exist_ok writes into it (cnnkit.train locks it while it trains)
        job = TrainJob(project, kind, name, overrides["train.epochs"], {**overrides, "name": name, "exist_ok": True})
        _launch(job)
    return job


def resume_training(project: Project, run_name: str, epochs: int | None = None) -> TrainJob:
    """Continue a stopped (or killed) run of ``project`` from its ``last.pt`` in the background,
    as ``cnnkit train --resume runs/NAME [--epochs N]`` does.

    Raises:
        CnnkitError: a job is running already, or no such run. (A run that cannot resume
            ends the job as ``failed`` with cnnkit's reason.)
    """
    folder = project.run_folder(run_name)
    planned = epochs or _planned_epochs(folder)
    with _lock:
        _refuse_second_job(project)
        job = TrainJob(project, "resume", run_name, planned, {"epochs": epochs} if epochs else {}, resume=folder.path)
        _launch(job)
    return job


def current_job(project: Project) -> TrainJob | None:
    """The project's latest job in this process (running or finished), or None."""
    with _lock:
        return _latest.get(project.root)


def job_status(project: Project) -> dict[str, Any]:
    """:meth:`TrainJob.status` of the project's latest job, or ``{"state": "idle"}`` when none."""
    job = current_job(project)
    return job.status() if job is not None else {"state": "idle", "history": [], "log": []}


def check_config(overrides: dict[str, Any]) -> None:
    """Check the run's config as :func:`cnnkit.train` does before its run folder exists: every
    value (:func:`cnnkit.config.validate`), the model name, the transfer options and memory.

    Raises:
        UsageError: one line, e.g. ``unknown model 'resnt18'; did you mean ...``.
    """
    from cnnkit.commands.train_run import check_run_config, load_run_code
    from cnnkit.config import keyword_overrides, resolve_config

    cfg = resolve_config(overrides=keyword_overrides(overrides))
    load_run_code(cfg)  # a FILE.py:NAME model is importable before its name is checked, as in training
    check_run_config(cfg, tracked=False)


def _planned_epochs(folder: RunFolder) -> int:
    """The epochs a run's ``config.yaml`` plans (the sum of its ``--fine-tune`` stages when it has them)."""
    train = folder.read_config_values().get("train") or {}
    return sum(train["fine_tune"]) if train.get("fine_tune") else int(train.get("epochs") or 0)


def _drop_if_unused(folder: RunFolder) -> None:
    """Remove the folder claimed for a job when training never wrote its run into it (no
    ``config.yaml``: the data or model failed first), so ``runs/`` holds no folder without a run."""
    if folder.path.is_dir() and not folder.is_run():
        shutil.rmtree(folder.path, ignore_errors=True)


def _refuse_second_job(project: Project) -> None:
    """Raise when a job runs in this process (the caller holds ``_lock``)."""
    job = _running
    if job is None:
        return
    done = len(job.folder.read_metrics())
    where = f"run {job.run_name}, epoch {done}/{job.epochs}"
    if job.project.root == project.root:
        raise CnnkitError(f"a training job is already running in this project ({where}); wait for it or stop it")
    raise CnnkitError(f"a training job is already running in another project ({job.project.root}: {where}); "
                      "one job runs at a time: wait for it or stop it")  # fmt: skip


def _new_run_folder(project: Project, kind: str) -> RunFolder:
    """``runs/<kind>-YYYYmmdd-HHMMSS``, with ``-2``, ``-3``... when taken (the caller holds ``_lock``)."""
    # claimed now (mkdir, atomic across processes): a second start in this second gets -2
    return RunFolder.create(project.runs_dir, f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}")


def _launch(job: TrainJob) -> None:
    global _running
    _running = job
    _latest[job.project.root] = job
    job._thread = threading.Thread(target=job._work, name=f"cnnkit-studio-{job.run_name}", daemon=True)
    job._thread.start()

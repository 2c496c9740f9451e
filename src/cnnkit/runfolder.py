"""The run folder contract: one object owns a run's files.

``runs/<name>/`` holds ``config.yaml`` (the resolved config), ``metrics.csv`` (one row per
epoch), ``checkpoints/last.pt`` and ``best.pt``, ``classes.json``, ``split.json``,
``env.json``, ``summary.json``, ``status.json``, ``log.txt`` and ``report/``. Every file is
written atomically (:mod:`cnnkit.atomic`). ``status.json`` says whether the run is
``running``, ``completed``, ``failed`` (with the one-line reason) or ``interrupted``, so
``cnnkit runs`` can tell a crash from a run still going.

A run folder is never shared: :meth:`RunFolder.create` claims a new folder (``NAME-2``,
``-3``... when ``NAME`` is taken, atomically against other processes) unless ``exist_ok``,
and a process writes into a folder only inside :meth:`RunFolder.lock`, which holds
``.lock`` (pid, host, start) and refuses a second writer with one line naming the first.
Readers (eval, report, ``cnnkit runs``) do not lock.

Under torchrun only rank 0 writes: the other ranks get a :class:`RunFolder` with
``writer=False``, whose writes do nothing.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from cnnkit import atomic
from cnnkit.errors import CnnkitError, DiskFullError

try:
    import fcntl
except ImportError:  # Windows: the lock's pid alone says whether its owner runs
    fcntl = None  # type: ignore[assignment]

STATUSES = ("running", "completed", "failed", "interrupted")
LOG_FORMAT = "%(message)s"
LOCK_FILE = ".lock"
NEW_RUN_ADVICE = "wait for it or choose another --name"
_BEING_WRITTEN_S = 10.0  # an empty lock younger than this: its creator is still writing it


class RunFolder:
    """A run's folder and the files in it.

    Attributes:
        path: the folder (absolute).
        writer: False on torchrun ranks other than 0: nothing is written.
    """

    def __init__(self, path: str | Path, *, writer: bool = True) -> None:
        self.path = Path(path).absolute()
        self.writer = writer

    # ------------------------------------------------------------------ locations
    # The only place that spells a run's file names: every other module asks for them here.

    CONFIG = "config.yaml"
    METRICS = "metrics.csv"
    SPLIT = "split.json"
    SUMMARY = "summary.json"
    STATUS = "status.json"
    CLASSES = "classes.json"
    ENV = "env.json"
    LOG = "log.txt"
    DATA_CHECK = "data_check.json"
    REPORT = "report"
    REPORT_HTML = "report.html"  # in report/, beside its figures (``report/curves.png``...)
    LABEL_VERDICT = "label_errors.json"  # in report/: the likely-label-errors verdict
    EXPORT = "export"  # ``cnnkit export``'s default folder (``export/model.onnx``)
    STUDIO_COMMAND = "studio_command.txt"  # the ``cnnkit train`` command of a run the studio started
    TENSORBOARD = "tensorboard"  # TensorBoard's event files
    TRACKING = "tracking.json"  # MLflow / W&B run ids, so a resumed run continues the same one
    SKIPPED = "skipped_files.json"  # every unreadable image of the run, once
    SKIP_LOG = "skipped_files.jsonl"  # raw while training: one line per skip and process, folded into SKIPPED
    LR_FIND = "lr_find.json"  # the learning-rate sweep's numbers (and lr_find.png its plot)
    LR_FIND_PLOT = "lr_find.png"
    # the files a copy of a run carries (the take-away zip), besides checkpoints/ and report/
    RECORD_FILES = (CONFIG, METRICS, CLASSES, SPLIT, SUMMARY, ENV, LOG, STATUS, DATA_CHECK)
    # any one of these beside config.yaml marks a training run (an lr-find folder has none)
    TRAINING_FILES = (METRICS, ENV, SUMMARY)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last(self) -> Path:
        """``checkpoints/last.pt``: weights and training state of the newest epoch (resume)."""
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        """``checkpoints/best.pt``: the validated weights and metadata (what is deployed)."""
        return self.checkpoints / "best.pt"

    def epoch_checkpoint(self, epoch: int) -> Path:
        """``checkpoints/epoch_NNN.pt`` (``--save-every``)."""
        return self.checkpoints / f"epoch_{epoch:03d}.pt"

    @property
    def config_file(self) -> Path:
        return self.path / self.CONFIG

    @property
    def metrics_file(self) -> Path:
        return self.path / self.METRICS

    @property
    def split_file(self) -> Path:
        return self.path / self.SPLIT

    @property
    def report_dir(self) -> Path:
        return self.path / self.REPORT

    def report_file(self, name: str = REPORT_HTML) -> Path:
        """A file of ``report/``: ``report.html`` (default), ``curves.png``, ``label_errors.json``..."""
        return self.report_dir / name

    @property
    def export_dir(self) -> Path:
        return self.path / self.EXPORT

    def file(self, name: str) -> Path:
        """The path of a file in the folder (``report/report.html``...); use the names above."""
        return self.path / name

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> RunFolder | None:
        """The run folder a checkpoint sits in (``RUN/checkpoints/X.pt``), or None when it is no run's."""
        run = cls(Path(checkpoint).absolute().parent.parent, writer=False)
        return run if run.is_run() else None

    def is_run(self) -> bool:
        """Whether the folder holds a run (its ``config.yaml``)."""
        return self.config_file.is_file()

    def is_training_run(self) -> bool:
        """Whether training wrote here: a run with ``metrics.csv``, ``env.json``, ``summary.json``
        or ``checkpoints/`` (an lr-find folder has a config and none of these)."""
        return self.is_run() and (self.checkpoints.exists() or any(self.file(n).exists() for n in self.TRAINING_FILES))

    # ------------------------------------------------------------------ creating and opening

    @classmethod
    def create(cls, output_dir: str | Path, name: str, *, exist_ok: bool = False) -> RunFolder:
        """Claim a new run folder ``output_dir/name``, or ``name-2``, ``name-3``... when taken.

        The claim is ``mkdir`` itself, so two processes started at once with one name never
        get the same folder. ``exist_ok`` (``--exist-ok``): an existing ``name`` is reused
        as it is; :meth:`lock` then refuses it while another process writes there.
        """
        base = Path(output_dir)
        base.mkdir(parents=True, exist_ok=True)
        path, suffix = base / name, 2
        while True:
            try:
                path.mkdir(exist_ok=exist_ok)
                return cls(path)
            except FileExistsError:  # taken (or, with exist_ok, a file of that name)
                path, suffix = base / f"{name}-{suffix}", suffix + 1

    @classmethod
    def open(cls, path: str | Path, *, writer: bool = True) -> RunFolder:
        """An existing run folder (``config.yaml`` in it).

        Raises:
            CnnkitError: no such folder, or not a run folder.
        """
        folder = cls(path, writer=writer)
        if not folder.path.is_dir():
            raise CnnkitError(f"run folder not found: {path}")
        if not folder.is_run():
            raise CnnkitError(f"{path} is not a run folder (no config.yaml)")
        return folder

    # ------------------------------------------------------------------ one writer at a time

    @property
    def shown(self) -> str:
        """The folder as messages name it: relative to the working folder when inside it."""
        return shown(self.path)

    @contextmanager
    def lock(self, *, advice: str = NEW_RUN_ADVICE) -> Iterator[None]:
        """Hold the folder for this process while inside: training, resuming, anything that writes a run.

        ``.lock`` (pid, host, start time, command) is created with ``O_CREAT | O_EXCL`` and
        held with ``flock``; it is removed on leaving, also on failure and Ctrl-C. One left
        by a process that no longer runs on this host is taken over. A full disk inside ends
        in :class:`~cnnkit.errors.DiskFullError` naming the file and the run. Nothing
        happens on a non-writer rank.

        Raises:
            CnnkitError: another process holds the folder, before anything is written:
                ``run folder runs/X is in use by process 1234 (started ...); <advice>``.
        """
        if not self.writer:
            yield
            return
        try:
            held = _acquire(self.file(LOCK_FILE), lambda owner: self._in_use(owner, advice))
            try:
                yield
            finally:
                _release(self.file(LOCK_FILE), held)
        except OSError as exc:
            if atomic.is_disk_full(exc):
                raise self.disk_full(exc) from exc
            raise

    def owner(self) -> dict[str, Any] | None:
        """Who holds :meth:`lock` now (``pid``, ``host``, ``started``, ``command``), or None."""
        path = self.file(LOCK_FILE)
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            return None
        try:
            owner = _read_owner(fd)
            return owner if _held(fd, owner, path) else None
        finally:
            os.close(fd)

    def refuse_if_in_use(self, advice: str = NEW_RUN_ADVICE) -> None:
        """Raise :meth:`lock`'s error now when another process holds the folder (a check, not a claim)."""
        owner = self.owner()
        if owner is not None:
            raise self._in_use(owner, advice)

    def disk_full(self, exc: OSError) -> DiskFullError:
        """The one-line error for ``exc`` (ENOSPC/EDQUOT), naming the file and this run."""
        target = Path(exc.filename).absolute() if isinstance(exc.filename, str) and exc.filename else None
        if target is None:
            return DiskFullError("a file", self.shown)
        if target.is_relative_to(self.path):
            return DiskFullError(str(target.relative_to(self.path)), self.shown)
        return DiskFullError(str(target))

    def _in_use(self, owner: dict[str, Any], advice: str) -> CnnkitError:
        who = f"process {owner['pid']}" if owner.get("pid") else "another process"
        if owner.get("host") and owner["host"] != socket.gethostname():
            who += f" on {owner['host']}"
            advice += f" (if it is gone, delete {shown(self.file(LOCK_FILE))})"
        started = f" (started {owner['started']})" if owner.get("started") else ""
        return CnnkitError(f"run folder {self.shown} is in use by {who}{started}; {advice}")

    # ------------------------------------------------------------------ writing

    def write_text(self, name: str, text: str) -> Path:
        """Write ``name`` atomically (nothing on a non-writer rank)."""
        path = self.file(name)
        if self.writer:
            atomic.write_text(path, text)
        return path

    def write_json(self, name: str, value: Any) -> Path:
        path = self.file(name)
        if self.writer:
            atomic.write_json(path, value)
        return path

    def write_config(self, cfg: Any) -> Path:
        """``config.yaml``: the resolved :class:`~cnnkit.config.RunConfig`."""
        from cnnkit.config import to_yaml

        return self.write_text(self.CONFIG, to_yaml(cfg))

    def read_config_values(self) -> dict[str, Any]:
        """``config.yaml`` as the plain nested dict it holds (unvalidated: old runs may lack keys).

        Raises:
            CnnkitError: no ``config.yaml``, or not readable YAML.
        """
        import yaml

        try:
            values = yaml.safe_load(self.config_file.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise CnnkitError(f"{self.shown} is not a run folder (no {self.CONFIG})") from exc
        except (OSError, yaml.YAMLError) as exc:
            raise CnnkitError(f"{shown(self.config_file)} is not readable: {exc}") from exc
        if not isinstance(values, dict):
            raise CnnkitError(f"{shown(self.config_file)} holds no config")
        return values

    def read_text(self, name: str) -> str | None:
        """The text file ``name`` (``config.yaml``, ``studio_command.txt``...), or None when absent or unreadable."""
        try:
            return self.file(name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None

    def read_json(self, name: str, default: Any = None) -> Any:
        """The JSON file ``name``, or ``default`` when it is absent or unreadable (a run being written)."""
        path = self.file(name)
        try:
            return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else default
        except (OSError, json.JSONDecodeError):
            return default

    def write_split(self, split: dict[str, Any]) -> Path:
        """``split.json``: which images are train/val/test (rebuilds the same split on resume and eval)."""
        return self.write_json(self.SPLIT, split)

    def read_split(self) -> dict[str, Any] | None:
        """``split.json``, or None for a run without one."""
        return self.read_json(self.SPLIT)

    def write_summary(self, summary: dict[str, Any]) -> Path:
        """``summary.json``: the end-of-run figures (test accuracy, best epoch, early stop)."""
        return self.write_json(self.SUMMARY, summary)

    def read_summary(self) -> dict[str, Any] | None:
        """``summary.json``, or None for a run that has not finished."""
        return self.read_json(self.SUMMARY)

    # ------------------------------------------------------------------ metrics.csv

    def write_metrics(self, history: list[dict[str, Any]]) -> Path:
        """Rewrite ``metrics.csv`` whole and atomically: one row per epoch, never a duplicate."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
        return self.write_text(self.METRICS, buffer.getvalue())

    def read_metrics(self) -> list[dict[str, Any]]:
        """The rows of ``metrics.csv`` ([] when absent): numbers as floats, ``epoch`` as int, an
        empty cell (or ``None``) as None, any other text kept as it is.

        The one parser of the file: ``cnnkit runs``, the report and the studio's live curves read
        it here. It is rewritten atomically after every epoch, so a read never sees half a row.
        """
        try:
            with self.metrics_file.open(encoding="utf-8", newline="") as handle:
                rows = [{key: _cell(value) for key, value in row.items()} for row in csv.DictReader(handle)]
        except FileNotFoundError:
            return []
        for row in rows:
            if isinstance(row.get("epoch"), float):
                row["epoch"] = int(row["epoch"])
        return rows

    # ------------------------------------------------------------------ status

    def set_status(self, status: str, reason: str | None = None) -> None:
        """Record the run's state in ``status.json`` (with the time and, if failed, why)."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        self.write_json(self.STATUS, {"status": status, "reason": reason, "pid": os.getpid(),
                                        "updated": time.strftime("%Y-%m-%dT%H:%M:%S")})  # fmt: skip

    def status(self) -> dict[str, Any] | None:
        """What ``status.json`` says (None for runs made before it existed)."""
        return self.read_json(self.STATUS)

    # ------------------------------------------------------------------ log

    @contextmanager
    def logging_to_file(self, logger: logging.Logger) -> Iterator[None]:
        """While inside, every record of ``logger`` is appended to ``log.txt`` too.

        A full disk while logging raises (ENOSPC, naming ``log.txt``) from the logging call,
        as any other write of the run would, instead of logging's printed traceback.
        """
        if not self.writer:
            yield
            return
        handler = _LogFile(self.file(self.LOG))
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logger.addHandler(handler)
        try:
            yield
        finally:
            logger.removeHandler(handler)
            with suppress(OSError):  # what a full disk kept in its buffer is lost
                handler.close()

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"


def _cell(value: str | None) -> Any:
    """A ``metrics.csv`` cell: a float, None for an empty cell, else the text."""
    if value in (None, "", "None"):
        return None
    try:
        return float(value)
    except ValueError:
        return value


def shown(path: Path) -> str:
    """``path`` relative to the working folder when inside it (``runs/X``), else absolute."""
    try:
        return str(Path(path).absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class _LogFile(logging.FileHandler):
    """``log.txt``: a full disk raises from the logging call (logging would print a traceback and go on)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, encoding="utf-8")

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        error = sys.exc_info()[1]
        if isinstance(error, OSError) and atomic.is_disk_full(error):
            error.filename = error.filename or self.baseFilename
            raise error
        super().handleError(record)


# ----------------------------------------------------------------------------- the lock file


def _acquire(path: Path, in_use: Callable[[dict[str, Any]], CnnkitError]) -> int:
    """Create ``path`` (``O_EXCL``) or take over a stale one; returns its descriptor, flock held.

    Whoever holds the ``flock`` on the file at ``path`` holds the folder; the kernel drops
    it when its process dies, so a lock with no ``flock`` is stale, unless its pid still
    runs on this host (a lock written by hand or on a file system without ``flock``) or it
    comes from another host (whose processes cannot be seen from here).
    """
    for _ in range(20):  # a few rounds of released-and-recreated, then give up
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | getattr(os, "O_CLOEXEC", 0), 0o644)
        except FileExistsError:
            fd = _take_over(path, in_use)
            if fd is None:
                continue
        else:
            if not _flock(fd):  # a taker reached the new file first: it is theirs
                os.close(fd)
                raise in_use({})
        try:
            _write_owner(fd)
        except OSError as exc:  # a full disk: not even the lock fits
            _release(path, fd)
            exc.filename = exc.filename or str(path)
            raise
        _keep_from_children(fd)
        return fd
    raise CnnkitError(f"could not lock {shown(path)}: other processes keep taking and releasing it; try again")


def _take_over(path: Path, in_use: Callable[[dict[str, Any]], CnnkitError]) -> int | None:
    """The descriptor of an existing stale ``path`` now held by us; None when it vanished.

    Raises:
        CnnkitError: (``in_use``) its owner is alive.
    """
    try:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:  # released meanwhile: create it again
        return None
    owner = _read_owner(fd)
    if _held(fd, owner, path, keep=True):
        os.close(fd)
        raise in_use(owner)
    if not _same_file(fd, path):  # released and created anew while we looked
        os.close(fd)
        return None
    return fd


def _held(fd: int, owner: dict[str, Any], path: Path, *, keep: bool = False) -> bool:
    """Whether the lock file open as ``fd`` belongs to a live process (``keep``: a
    ``flock`` got here stays held, else it is let go)."""
    if not _flock(fd):
        return True
    try:
        if not owner:  # empty: just created, unless its creator died before writing it
            return time.time() - os.fstat(fd).st_mtime < _BEING_WRITTEN_S
        if owner.get("host") != socket.gethostname():
            return True  # another host's process: it cannot be seen from here
        return owner.get("pid") != os.getpid() and process_alive(owner.get("pid"))
    finally:
        if not keep:
            _unflock(fd)


def _release(path: Path, fd: int) -> None:
    """Remove ``path`` if it is still ours, then let the ``flock`` go (closing the file)."""
    _HELD.discard(fd)
    try:
        if _same_file(fd, path):
            path.unlink(missing_ok=True)
    finally:
        os.close(fd)


_HELD: set[int] = set()  # lock descriptors this process holds
_FORK_HOOK: list[bool] = []  # whether the hook below is registered (once per process)


def _keep_from_children(fd: int) -> None:
    """Close ``fd`` in forked children (DataLoader workers): a ``flock`` lives as long as any
    copy of its descriptor, so workers that outlive a killed trainer by a few seconds would
    otherwise keep its lock. The child's ``close`` leaves the parent's lock held."""
    _HELD.add(fd)
    if not _FORK_HOOK and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_close_inherited)
        _FORK_HOOK.append(True)


def _close_inherited() -> None:
    for fd in _HELD:
        with suppress(OSError):
            os.close(fd)
    _HELD.clear()


def _write_owner(fd: int) -> None:
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
             "command": " ".join(sys.argv)}  # fmt: skip
    data = (json.dumps(owner) + "\n").encode("utf-8")
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, data)


def _read_owner(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        owner = json.loads(os.read(fd, 65536).decode("utf-8") or "{}")
    except (OSError, ValueError):  # half written, or not ours: an owner we cannot name
        return {}
    return owner if isinstance(owner, dict) else {}


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _flock(fd: int) -> bool:
    """Take the exclusive ``flock`` without waiting; False when another open file holds it.

    Where ``flock`` is missing (Windows) or refused (some network file systems) it counts
    as taken, and the owner's pid alone decides.
    """
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # ENOLCK, EOPNOTSUPP: no flock on this file system
        return True
    return True


def _unflock(fd: int) -> None:
    if fcntl is not None:
        with suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)


def process_alive(pid: Any) -> bool:
    """Whether process ``pid`` runs on this host (Windows: assumed, as os.kill would end it); a run
    killed with -9 leaves its pid in ``.lock`` and ``status.json``, and this tells it is gone."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True

"""The skipped-files log: which images a run's loaders failed to load, across processes.

This module owns :class:`SkipLog` (one dataset's list: a JSON-lines file that every process
decoding for that dataset appends to), :func:`skipped_files_log` (a context that hands one
log to a run's loaders and takes it back), :func:`read_skipped_files` and
:func:`report_skip`, what a loader does with a file it cannot decode: record it in its own
log when it has one, else warn.

The log travels *with the dataset* (an attribute that DataLoader workers receive when the
dataset is pickled to them, forked or spawned), never through process-wide state: two
datasets in one process (a studio training job and an upload being checked, two runs in
one Python session) keep separate lists.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SkipLog:
    """One dataset's list of skipped files: a JSON-lines file, appended to by any process.

    Picklable (it is only a path), so it reaches DataLoader workers inside the dataset
    that carries it. Each :meth:`record` appends one line ``{"path", "reason", "kind"}``;
    lines may repeat across processes (:meth:`read` keeps the first of each file).
    """

    path: Path

    def record(self, path: str, reason: str, kind: str) -> None:
        """Append one skipped file; a failure to write is ignored (the list is a convenience,
        training must not stop for it)."""
        line = json.dumps({"path": path, "reason": reason, "kind": kind}) + "\n"
        try:
            # One short write in append mode: lines from several processes do not interleave.
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(line)
        except OSError:
            pass

    def read(self) -> dict[str, dict[str, str]]:
        """``path -> {"reason", "kind"}`` of every file recorded (empty if none)."""
        return read_skipped_files(self.path)


def attach_skip_log(loaders: Iterable[Any], log: SkipLog | None) -> None:
    """Give each loader that decodes files (it has a ``skip_log`` attribute) ``log``; None takes it back."""
    for loader in loaders:
        if loader is not None and hasattr(loader, "skip_log"):
            loader.skip_log = log


@contextmanager
def skipped_files_log(path: str | os.PathLike[str], loaders: Iterable[Any]) -> Iterator[Path]:
    """Record every image that ``loaders`` fail to load while inside, in any of their processes.

    Inside a training run that is exactly the files its loaders skip, whichever decodes
    them (:class:`ImageFileDataset` in worker processes, a decode cache). Other loads of the
    same process (an upload checked by the studio, another run's loaders) are not recorded
    here. The loaders get the log on entry and lose it on exit; yields the log's file.
    """
    log = SkipLog(Path(os.path.abspath(os.fspath(path))))
    loaders = [loader for loader in loaders if loader is not None]
    attach_skip_log(loaders, log)
    try:
        yield log.path
    finally:
        attach_skip_log(loaders, None)


def read_skipped_files(path: str | os.PathLike[str]) -> dict[str, dict[str, str]]:
    """``path -> {"reason", "kind"}`` from a :class:`SkipLog` file (empty if none)."""
    found: dict[str, dict[str, str]] = {}
    if not os.path.isfile(path):
        return found
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                entry = json.loads(line)
            except ValueError:  # a line cut short by a worker killed mid-write
                continue
            found.setdefault(entry["path"], {"reason": entry["reason"], "kind": entry["kind"]})
    return found


def report_skip(log: SkipLog | None, path: str, reason: str, kind: str, stacklevel: int = 2) -> None:
    """A loader skips ``path``: recorded in its ``log`` (a training run, whose summary counts
    and lists the file instead of raw warning lines), else a ``RuntimeWarning`` for library users."""
    if log is not None:
        log.record(path, reason, kind)
        return
    warnings.warn(f"skipping {path}: {reason}", RuntimeWarning, stacklevel=stacklevel + 1)

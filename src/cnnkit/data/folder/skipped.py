"""The skipped-files log: which images failed to load during a run, across processes.

This module owns :func:`skipped_files_log` (a context in which every failure of
:func:`~cnnkit.data.folder.load_image`, in this process or a DataLoader worker, appends a
JSON line to one file, named through :data:`SKIP_LOG_ENV`), :func:`read_skipped_files`,
:func:`warn_skipped` (the loaders' warning, silent inside such a log) and ``_log_failure``,
the append that :func:`~cnnkit.data.folder.load_image` calls.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for the annotation: decode imports this module
    from cnnkit.data.folder.decode import ImageLoadError

SKIP_LOG_ENV = "CNNKIT_SKIP_LOG"
"""Environment variable naming the JSON-lines file :func:`skipped_files_log` appends to."""


@contextmanager
def skipped_files_log(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Record every image that :func:`load_image` fails to load while inside, in any process.

    Inside a training run that is exactly the files the loaders skip, whichever loader
    decodes them (:class:`ImageFileDataset`, a decode cache, statistics). Each failure
    appends one JSON line ``{"path": ..., "reason": ..., "kind": ...}`` to ``path`` (lines
    may repeat; see :func:`read_skipped_files`). DataLoader workers decode in other
    processes, which may be spawned rather than forked, so the file name travels in an
    environment variable they inherit; the caller's value is restored on exit.
    """
    path = Path(os.path.abspath(os.fspath(path)))
    previous = os.environ.get(SKIP_LOG_ENV)
    os.environ[SKIP_LOG_ENV] = str(path)
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop(SKIP_LOG_ENV, None)
        else:
            os.environ[SKIP_LOG_ENV] = previous


def read_skipped_files(path: str | os.PathLike[str]) -> dict[str, dict[str, str]]:
    """``path -> {"reason", "kind"}`` from a :func:`skipped_files_log` file (empty if none)."""
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


def warn_skipped(path: str, reason: str, stacklevel: int = 2) -> None:
    """A loader skips ``path``: a ``RuntimeWarning`` for library users, nothing inside a
    :func:`skipped_files_log` (a training run), whose summary counts and lists the file
    instead of raw warning lines (in any process: the log's name is in the environment)."""
    if os.environ.get(SKIP_LOG_ENV):
        return
    warnings.warn(f"skipping {path}: {reason}", RuntimeWarning, stacklevel=stacklevel + 1)


def _log_failure(error: ImageLoadError) -> None:
    log = os.environ.get(SKIP_LOG_ENV)
    if not log:
        return
    line = json.dumps({"path": error.path, "reason": error.reason, "kind": error.kind}) + "\n"
    try:
        # One short write in append mode: lines from several processes do not interleave.
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(line)
    except OSError:  # the list is a convenience; failing to write it must not stop training
        pass

"""The one way cnnkit writes a file: atomically.

A file is written under a temporary name in its own folder, flushed to disk and renamed
over the target, so a crash (or a full disk) leaves the previous version or nothing, never
half a file. Readers (``cnnkit runs``, a resumed run, a browser showing a report) never
see a partial write.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(handle)`` on a temporary binary file, then rename it to ``path``.

    The temporary file is ``.NAME.*.tmp`` beside ``path`` (the rename must not cross file
    systems); it is removed when ``write`` fails. Parent folders are created. The new file
    gets the usual umask permissions (not mkstemp's private 0600), so a web server or
    another user can read a report as they could before.

    Returns:
        ``path`` as a :class:`Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)  # the rename itself survives a power cut
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported on every platform (Windows)
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda handle: handle.write(data))


def write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, value: Any, indent: int | None = 1) -> Path:
    """Write ``value`` as JSON (UTF-8) to ``path`` atomically."""
    return write_text(path, json.dumps(value, indent=indent) + "\n")


def remove_strays(path: str | Path) -> None:
    """Remove temporary files a killed process left beside ``path`` (``.NAME.*.tmp``)."""
    path = Path(path)
    for stray in path.parent.glob(f".{path.name}.*.tmp"):
        stray.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

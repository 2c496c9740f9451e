"""The one way cnnkit writes a file: atomically.

A file is written under a temporary name in its own folder, flushed to disk and renamed
over the target, so a crash (or a full disk) leaves the previous version or nothing, never
half a file. Readers (``cnnkit runs``, a resumed run, a browser showing a report) never
see a partial write.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(handle)`` on a temporary binary file, then rename it to ``path``.

    The temporary file is ``.NAME.*.tmp`` beside ``path`` (the rename must not cross file
    systems); it is removed whenever the write fails, so a full disk is left no fuller. Parent
    folders are created. The new file gets the usual umask permissions (not mkstemp's private
    0600), so a web server or another user can read a report as they could before.

    Raises:
        OSError: the write failed, with ``filename`` set to ``path``. When ``write`` hid the
            OS error behind its own (``torch.save``'s ``RuntimeError: ... unexpected pos``,
            after a short write on a full disk), the OS error is raised instead, so
            :func:`is_disk_full` can tell a full disk whatever wrote the bytes.

    Returns:
        ``path`` as a :class:`Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    handle = _Recording(os.fdopen(fd, "wb"), Path(tmp))
    try:
        with handle.raw:
            os.chmod(tmp, 0o666 & ~_umask())
            write(handle)  # type: ignore[arg-type]  (a file object to every writer)
            handle.raw.flush()
            os.fsync(handle.raw.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if handle.error is not None and isinstance(exc, Exception) and not isinstance(exc, OSError):
            raise _named(handle.error, path) from exc  # the writer's own error hid the OS's
        if isinstance(exc, OSError):
            _named(exc, path)
        raise
    _fsync_dir(path.parent)  # the rename itself survives a power cut
    return path


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk or the user's quota is full (ENOSPC, EDQUOT)."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


class _Recording:
    """A binary file that remembers the OS error of a failed ``write``: ``torch.save`` and
    others turn it into an error of their own that no longer says the disk is full."""

    def __init__(self, raw: IO[bytes], path: Path) -> None:
        self.raw, self.path = raw, path  # path: the temporary file
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.raw.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name: str) -> Any:  # flush, tell, seek, fileno... of the file
        return getattr(self.raw, name)


def _named(exc: OSError, path: Path) -> OSError:
    """``exc`` naming ``path`` (the file being written, not its temporary name). An error made
    without an errno (``OSError("message")``) keeps its message: a filename would replace it."""
    if exc.errno is not None and (exc.filename is None or str(exc.filename).endswith(".tmp")):
        exc.filename = str(path)
    return exc


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

"""Errors a user can act on.

Every exception raised for bad input derives from :class:`CnnkitError`. The command line
prints its message on one line (no traceback) and exits with its ``exit_code``:
0 ok, 1 failure, 2 usage error (unknown names, invalid option values).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CnnkitError(Exception):
    """A failure the user can fix; the message says what was wrong and what to do."""

    exit_code = 1


class UsageError(CnnkitError):
    """A bad name or option value given by the user (exit code 2)."""

    exit_code = 2


class DataError(CnnkitError):
    """Data missing, empty or unreadable; the message names where it looked."""

    exit_code = 1


class DiskFullError(CnnkitError):
    """A write failed because the disk (or the user's quota) is full.

    Attributes:
        file: what was being written, relative to ``run`` when inside it.
        run: the run folder written into (None: not a run's file).
    """

    exit_code = 1

    def __init__(self, file: str, run: str | None = None) -> None:
        self.file, self.run = file, run
        where = f"{file} in {run}" if run else file
        super().__init__(f"disk full while writing {where}: free space or choose another "
                         + ("--output-dir" if run else "folder"))  # fmt: skip


def nearest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to a mistyped ``name`` (difflib's ratio >= 0.6), or None."""
    matches = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.6)
    return matches[0] if matches else None


def unknown_name(kind: str, name: object, valid: Iterable[object]) -> UsageError:
    """The standard 'unknown X' error: the nearest valid choice, then all of them.

    Example: ``unknown optimizer 'adm'; did you mean 'adam'? valid optimizers: adam, adamw, sgd``.
    """
    choices = sorted(str(v) for v in valid)
    plural = kind[:-1] + "ies" if kind.endswith("y") and kind[-2:-1] not in "aeiou" else kind + "s"
    match = nearest(str(name), choices)
    hint = f"; did you mean {match!r}?" if match else ";"
    return UsageError(f"unknown {kind} {name!r}{hint} valid {plural}: {', '.join(choices)}")

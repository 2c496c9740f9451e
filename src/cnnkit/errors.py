"""Errors a user can act on.

Every exception raised for bad input derives from :class:`CnnkitError`. The command line
prints its message on one line (no traceback) and exits with its ``exit_code``:
0 ok, 1 failure, 2 usage error (unknown names, invalid option values).
"""

from __future__ import annotations


class CnnkitError(Exception):
    """A failure the user can fix; the message says what was wrong and what to do."""

    exit_code = 1


class UsageError(CnnkitError):
    """A bad name or option value given by the user (exit code 2)."""

    exit_code = 2


class DataError(CnnkitError):
    """Data missing, empty or unreadable; the message names where it looked."""

    exit_code = 1


def unknown_name(kind: str, name: str, valid: list[str] | tuple[str, ...]) -> UsageError:
    """Build the standard 'unknown X' error that lists the valid choices."""
    plural = kind[:-1] + "ies" if kind.endswith("y") and kind[-2:-1] not in "aeiou" else kind + "s"
    return UsageError(f"unknown {kind} {name!r}; valid {plural}: {', '.join(sorted(valid))}")


def nearest(name: str, candidates) -> str | None:  # TEMPORARY (lead): the config branch brings the real one
    import difflib

    found = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return found[0] if found else None

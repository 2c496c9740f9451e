"""cnnkit's messages go through :mod:`logging`, logger ``"cnnkit"``.

The command line shows them on stdout as plain lines; a run folder copies them into its
``log.txt`` (:meth:`cnnkit.runfolder.RunFolder.logging_to_file`). From Python, a workflow
shows them on stdout, or hands each line to ``log=`` (a callable; ``lambda line: None``
silences it). Handlers an application adds to the ``cnnkit`` logger receive them too.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

logger = logging.getLogger("cnnkit")
logger.setLevel(logging.INFO)
logger.propagate = False  # the console handler below prints them once; the root logger would repeat them


class _CallbackHandler(logging.Handler):
    """Hands each formatted record to a callable (``print`` by default)."""

    def __init__(self, callback: Callable[[str], None]) -> None:
        super().__init__()
        self.callback = callback

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.callback(self.format(record))
        except Exception:  # a broken callback must not end a run
            self.handleError(record)


@contextmanager
def console(callback: Callable[[str], None] | None = None) -> Iterator[None]:
    """Show cnnkit's messages while inside: each line to ``callback``, else to stdout.

    Nothing is added when ``callback`` is None and an outer ``console`` already shows the
    messages (the command line's, around a command that calls another).
    """
    if callback is None and any(isinstance(h, _CallbackHandler) for h in logger.handlers):
        yield
        return
    handler = _CallbackHandler(callback or _print)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def _print(line: str) -> None:
    print(line, file=sys.stdout, flush=True)


def say(line: str) -> None:
    """Log one informational line (the engine's ``log=`` callable for cnnkit's commands)."""
    logger.info(line)


@contextmanager
def quiet_unless(speaking: bool) -> Iterator[None]:
    """Silence cnnkit's messages while inside unless ``speaking`` (torchrun ranks other than 0)."""
    if speaking:
        yield
        return
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = False

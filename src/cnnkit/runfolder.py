"""The run folder contract: one object owns a run's files.

``runs/<name>/`` holds ``config.yaml`` (the resolved config), ``metrics.csv`` (one row per
epoch), ``checkpoints/last.pt`` and ``best.pt``, ``classes.json``, ``split.json``,
``env.json``, ``summary.json``, ``status.json``, ``log.txt`` and ``report/``. Every file is
written atomically (:mod:`cnnkit.atomic`). ``status.json`` says whether the run is
``running``, ``completed``, ``failed`` (with the one-line reason) or ``interrupted``, so
``cnnkit runs`` can tell a crash from a run still going.

Under torchrun only rank 0 writes: the other ranks get a :class:`RunFolder` with
``writer=False``, whose writes do nothing.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cnnkit import atomic
from cnnkit.errors import CnnkitError

STATUSES = ("running", "completed", "failed", "interrupted")
LOG_FORMAT = "%(message)s"


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

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    def file(self, name: str) -> Path:
        """The path of a file in the folder (``config.yaml``, ``report/report.html``...)."""
        return self.path / name

    # ------------------------------------------------------------------ creating and opening

    @classmethod
    def create(cls, output_dir: str | Path, name: str, *, exact: bool = False) -> RunFolder:
        """Make a new run folder ``output_dir/name`` (``name-2``, ``-3``... if taken, unless ``exact``).

        ``exact`` (a name the user chose): an existing folder of that name is reused, as
        before; its files are overwritten as the new run writes them.
        """
        base = Path(output_dir)
        path, suffix = base / name, 2
        while path.exists() and not exact:
            path, suffix = base / f"{name}-{suffix}", suffix + 1
        path.mkdir(parents=True, exist_ok=exact)
        return cls(path)

    @classmethod
    def open(cls, path: str | Path, *, writer: bool = True) -> RunFolder:
        """An existing run folder (``config.yaml`` in it).

        Raises:
            CnnkitError: no such folder, or not a run folder.
        """
        folder = cls(path, writer=writer)
        if not folder.path.is_dir():
            raise CnnkitError(f"run folder not found: {path}")
        if not folder.file("config.yaml").is_file():
            raise CnnkitError(f"{path} is not a run folder (no config.yaml)")
        return folder

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

        return self.write_text("config.yaml", to_yaml(cfg))

    def read_json(self, name: str, default: Any = None) -> Any:
        path = self.file(name)
        if not path.is_file():
            return default
        return json.loads(path.read_text(encoding="utf-8"))

    # ------------------------------------------------------------------ status

    def set_status(self, status: str, reason: str | None = None) -> None:
        """Record the run's state in ``status.json`` (with the time and, if failed, why)."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        self.write_json("status.json", {"status": status, "reason": reason, "pid": os.getpid(),
                                        "updated": time.strftime("%Y-%m-%dT%H:%M:%S")})  # fmt: skip

    def status(self) -> dict[str, Any] | None:
        """What ``status.json`` says (None for runs made before it existed)."""
        return self.read_json("status.json")

    # ------------------------------------------------------------------ log

    @contextmanager
    def logging_to_file(self, logger: logging.Logger) -> Iterator[None]:
        """While inside, every record of ``logger`` is appended to ``log.txt`` too."""
        if not self.writer:
            yield
            return
        handler = logging.FileHandler(self.file("log.txt"), encoding="utf-8")
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logger.addHandler(handler)
        try:
            yield
        finally:
            logger.removeHandler(handler)
            handler.close()

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

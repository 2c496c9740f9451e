"""Writing predictions as they stream in: CSV, JSON, JSON Lines, or lines on the terminal.

Every writer takes one :class:`~cnnkit.inference.predictor.Prediction` or
:class:`~cnnkit.inference.predictor.Skipped` at a time, so 100,000 results never sit in
memory. Files are written to a temporary name and renamed when complete: an interrupted
run leaves no half-written file under the requested name.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

from cnnkit.errors import UsageError
from cnnkit.inference.predictor import Prediction, Skipped

FORMATS = (".csv", ".json", ".jsonl")


class PredictionWriter:
    """Base: counts what it wrote; subclasses format rows. Use as a context manager."""

    def __init__(self, handle: IO[str], topk: int, known: bool = False) -> None:
        self.handle = handle
        self.topk = topk
        self.known = known  # the model has an open set: each prediction has a known-ness score
        self.predicted = 0
        self.skipped: list[Skipped] = []
        self.unknown = 0
        self.not_known = 0

    def write(self, item: Prediction | Skipped) -> None:
        if isinstance(item, Skipped):
            self.skipped.append(item)
            self.write_skipped(item)
        else:
            self.predicted += 1
            self.unknown += item.label == "unknown"
            self.not_known += item.looks_known is False
            self.write_prediction(item)

    def write_prediction(self, item: Prediction) -> None:
        raise NotImplementedError

    def write_skipped(self, item: Skipped) -> None:
        raise NotImplementedError

    def finish(self, summary: dict[str, Any]) -> None:
        """Called once after the last item, before the file is renamed into place."""

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class ConsoleWriter(PredictionWriter):
    """``file  label  confidence  (runner-up)`` lines; skipped files go to the summary."""

    def write_prediction(self, item: Prediction) -> None:
        if item.label == "unknown":
            aside = f"  (best guess {item.topk[0][0]})"
        else:
            aside = f"  (next: {item.topk[1][0]} {item.topk[1][1]:.1%})" if len(item.topk) > 1 else ""
        if item.looks_known is False:
            aside += f"  not sure: none of these? (known score {item.known_score:.3g})"
        self.handle.write(f"{item.source}\t{item.label}\t{item.confidence:.2%}{aside}\n")

    def write_skipped(self, item: Skipped) -> None:
        pass


class CsvWriter(PredictionWriter):
    """Columns: file, label, confidence, (a model with an open set: known_score, looks_known),
    top1_label, top1_prob ... topK_prob, error."""

    def __init__(self, handle: IO[str], topk: int, known: bool = False) -> None:
        super().__init__(handle, topk, known)
        self.rows = csv.writer(handle)
        ranked = [f"top{i}_{part}" for i in range(1, topk + 1) for part in ("label", "prob")]
        self.rows.writerow(["file", "label", "confidence", *self._known_columns, *ranked, "error"])

    @property
    def _known_columns(self) -> list[str]:
        return ["known_score", "looks_known"] if self.known else []

    def write_prediction(self, item: Prediction) -> None:
        ranked = [value for name, prob in item.topk for value in (name, f"{prob:.6f}")]
        ranked += [""] * (2 * self.topk - len(ranked))
        known = [f"{item.known_score:.6f}", str(item.looks_known).lower()] if self.known else []
        self.rows.writerow([item.source, item.label, f"{item.confidence:.6f}", *known, *ranked, ""])

    def write_skipped(self, item: Skipped) -> None:
        blank = [""] * (2 * self.topk + len(self._known_columns))
        self.rows.writerow([item.source, "", "", *blank, item.reason])


class JsonWriter(PredictionWriter):
    """``{"predictions": [...], "skipped": [...], "summary": {...}}``, streamed."""

    def __init__(self, handle: IO[str], topk: int, known: bool = False) -> None:
        super().__init__(handle, topk, known)
        self.handle.write('{"predictions": [')

    def write_prediction(self, item: Prediction) -> None:
        self.handle.write(("\n  " if self.predicted == 1 else ",\n  ") + json.dumps(item.as_dict()))

    def write_skipped(self, item: Skipped) -> None:
        pass  # listed at the end

    def finish(self, summary: dict[str, Any]) -> None:
        skipped = [{"file": s.source, "reason": s.reason} for s in self.skipped]
        self.handle.write(f"\n],\n\"skipped\": {json.dumps(skipped, indent=1)},\n"
                          f"\"summary\": {json.dumps(summary, indent=1)}\n}}\n")  # fmt: skip


class JsonLinesWriter(PredictionWriter):
    """One JSON object per line; skipped files are lines with an ``error`` key."""

    def write_prediction(self, item: Prediction) -> None:
        self.handle.write(json.dumps(item.as_dict()) + "\n")

    def write_skipped(self, item: Skipped) -> None:
        self.handle.write(json.dumps({"file": item.source, "error": item.reason}) + "\n")


_WRITERS = {".csv": CsvWriter, ".json": JsonWriter, ".jsonl": JsonLinesWriter}


def check_out_path(path: str | Path) -> Path:
    """Validate ``--out`` before any work starts."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise UsageError(f"--out {path}: unknown format {path.suffix!r}; use a .csv, .json or .jsonl file")
    if path.is_dir():
        raise UsageError(f"--out {path} is a folder; give a file name such as preds.csv")
    return path


class AtomicFile:
    """A text file written under a temporary name and renamed into place on success."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        self.handle = os.fdopen(fd, "w", encoding="utf-8", newline="")

    def commit(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.handle.close()
        Path(self.tmp).unlink(missing_ok=True)


def open_writer(out: Path | None, topk: int, known: bool = False) -> tuple[PredictionWriter, AtomicFile | None]:
    """The writer for ``out`` (None: the terminal) and the file to commit at the end;
    ``known``: the model has an open set (the CSV gets its two columns)."""
    if out is None:
        return ConsoleWriter(sys.stdout, topk, known), None
    target = AtomicFile(out)
    return _WRITERS[out.suffix.lower()](target.handle, topk, known), target

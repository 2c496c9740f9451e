"""The label check as text, CSV, HTML and a cleaned copy of the dataset.

This module owns how a :class:`~cnnkit.data.audit.labels.LabelReport` reaches a person:
:func:`format_labels` (the terminal summary, lists cut at
:data:`~cnnkit.data.audit.text.SHOWN` entries), :func:`write_files` (``label_issues.csv``,
the ranked issues; ``label_issues.html``, thumbnails of the top suspects in the run
report's page style; ``label_issues.json``), all written atomically, and
:func:`fix_to` (``--fix-to DIR``: a copy of the dataset with the suspects set aside under
``DIR/_review/<given>__as__<suggested>/``; the originals are never touched).
"""

from __future__ import annotations

import base64
import csv
import functools
import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from cnnkit import atomic
from cnnkit.data.audit.labels import LabelReport
from cnnkit.data.audit.text import SHOWN
from cnnkit.errors import CnnkitError, UsageError

HTML_SUSPECTS = 60  # thumbnails of label issues on the page (the CSV holds all)
THUMB_SIDE = 160  # px, longer side of a thumbnail
REVIEW = "_review"  # cnnkit's folder scan never takes this folder for a class
CSV_COLUMNS = ("rank", "path", "given", "suggested", "score", "suggested_prob")


def format_labels(report: LabelReport) -> str:
    """The label part of ``cnnkit check --labels``'s summary."""
    share = len(report.issues) / max(report.images, 1)
    lines = [
        f"labels: {report.images:,} training images; {report.method}",
        f"out-of-sample agreement with the given labels: {report.agreement:.1%}",
        f"likely label errors (cleanlab, most likely first): {len(report.issues):,} ({share:.1%})",
    ]
    lines += evidence_lines(report.evidence)
    lines += [f"  {i:>3}. {e['score']:.3f}  {e['given']} -> {e['suggested']} ({e['suggested_prob']:.0%})  {e['path']}"
              for i, e in enumerate(report.issues[:SHOWN], 1)]  # fmt: skip
    lines += _more(report.issues, "label_issues.csv")
    lines.append(f"outliers (least like the rest, lowest score first): {len(report.outliers)}")
    lines += [f"  {e['score']:.3f}  {e['given']}  {e['path']}" for e in report.outliers[:SHOWN]]
    lines += _more(report.outliers, "the --json report")
    pairs = report.confused_pairs[:SHOWN]
    lines.append("most confused class pairs (out-of-sample, both directions)" + (":" if pairs else ": none"))
    lines += [f"  {p['a']} <-> {p['b']}: {p['count']} ({p['a']} as {p['b']} {p['a_as_b']}, "
              f"{p['b']} as {p['a']} {p['b_as_a']})" for p in pairs]  # fmt: skip
    lines += [f"note: {note}" for note in report.notes]
    lines.append(f"labels checked in {report.seconds:.1f}s")
    return "\n".join(lines)


def evidence_lines(evidence: Any) -> list[str]:
    """What the suspects rest on (one line), and why fewer or none are listed (one more, when so)."""
    if evidence is None:
        return []
    lines = [f"  evidence: {evidence.images:,} images, cross-validated accuracy {evidence.accuracy:.1%} (suspects are "
             f"listed only from {evidence.min_accuracy:.0%} and {evidence.min_images} images, where the given label's "
             f"probability is under {evidence.max_given_prob:.2f} and another class's over "
             f"{evidence.min_suggested_prob:.2f})"]  # fmt: skip
    return lines + ([f"  {evidence.reason}"] if evidence.reason else [])


def _more(entries: list[Any], where: str) -> list[str]:
    return [f"  ... and {len(entries) - SHOWN:,} more (all are in {where})"] if len(entries) > SHOWN else []


# ----------------------------------------------------------------------------- files


def write_files(report: LabelReport, out_dir: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> dict:
    """Write ``label_issues.csv``, ``label_issues.html`` and ``label_issues.json`` into ``out_dir``.

    Args:
        extra: more JSON to store beside the label report (``cnnkit check`` passes the
            file check's report as ``check``).

    Returns:
        ``{"csv": path, "html": path, "json": path}``.

    Raises:
        CnnkitError: ``out_dir`` cannot be written (a disk or permission problem: exit 1).
    """
    out = Path(out_dir)
    try:
        paths = {"csv": write_csv(report, out / "label_issues.csv"),
                 "html": write_html(report, out / "label_issues.html"),
                 "json": atomic.write_json(out / "label_issues.json", {**(extra or {}), "labels": report.to_dict()})}
    except OSError as error:
        raise CnnkitError(f"cannot write the label check's files to {out}: {error.strerror or error}") from None
    return {kind: str(path) for kind, path in paths.items()}


def write_csv(report: LabelReport, path: Path) -> Path:
    """The ranked issues, one row each: rank, path (relative to the data root), given, suggested, score."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for rank, entry in enumerate(report.issues, 1):
        writer.writerow([rank, entry["path"], entry["given"], entry["suggested"], entry["score"],
                         entry["suggested_prob"]])  # fmt: skip
    return atomic.write_text(path, buffer.getvalue())


def write_html(report: LabelReport, path: Path) -> Path:
    """One self-contained page: the top suspects and outliers as thumbnails, the confused pairs."""
    suspects = [{**e, "thumb": thumbnail(report.absolute(e["path"]))} for e in report.issues[:HTML_SUSPECTS]]
    unusual = [{**e, "thumb": thumbnail(report.absolute(e["path"]))} for e in report.outliers]
    page = _template().render(title=f"label check: {report.source}", report=report, suspects=suspects,
                            outliers=unusual, pct=lambda v: f"{v:.1%}")  # fmt: skip
    return atomic.write_text(path, page)


def thumbnail(path: str, side: int = THUMB_SIDE) -> str:
    """A JPEG data URI of the image at most ``side`` px wide or high ("" when it cannot be read)."""
    from cnnkit.data.folder import ImageLoadError, load_image

    try:
        image = load_image(path, "RGB")
    except ImageLoadError:
        return ""
    image.thumbnail((side, side))
    if max(image.size) < side // 2:  # digits: enlarged (pixelated on purpose) to be visible
        scale = side // max(image.size)
        image = image.resize((image.width * scale, image.height * scale), resample=0)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@functools.cache
def _template() -> jinja2.Template:
    """The page's template, beside the report's (they share ``_style.html.j2``). Read as the
    package's files, not through ``cnnkit.evaluation``: the data layer imports no evaluation code."""
    loader = jinja2.PackageLoader("cnnkit", "evaluation/templates")
    return jinja2.Environment(loader=loader, autoescape=True).get_template("labels.html.j2")


# ----------------------------------------------------------------------------- --fix-to


@dataclass
class FixResult:
    """What :func:`fix_to` wrote: files copied as they were, and suspects set aside."""

    dest: str
    copied: int
    review: int

    def line(self) -> str:
        return (f"cleaned copy: {self.dest} ({self.copied:,} images copied, {self.review:,} suspects in "
                f"{REVIEW}/<given>__as__<suggested>/ for review; the originals are untouched)")  # fmt: skip


def fix_to(report: LabelReport, data: str | os.PathLike[str], dest: str | os.PathLike[str]) -> FixResult:
    """Copy the dataset to ``dest`` with each label issue moved to ``dest/_review/<given>__as__<suggested>/``.

    Every other file keeps its place (splits and class folders included); nothing is
    deleted or changed at the source, and ``dest`` must be new (or an empty folder).

    Raises:
        UsageError: ``dest`` is not empty or lies inside the data (or the data inside it),
            or the data is a CSV file (review ``label_issues.csv`` instead).
    """
    from cnnkit.data.audit.scan import _listing

    source = Path(os.fspath(data)).expanduser().resolve()
    target = Path(os.fspath(dest)).expanduser().resolve()
    _check_destination(source, target)
    listing, layout, _ = _listing(source, strict=False)
    suspects = {report.absolute(e["path"]): e for e in report.issues}
    copied = review = 0
    taken: set[Path] = set()
    for split, files in listing.splits.items():
        for path in files.paths:
            entry = suspects.get(path) if split == "train" else None
            if entry is None:
                _copy(path, target / os.path.relpath(path, listing.root))
                copied += 1
            else:
                folder = target / REVIEW / f"{_safe(entry['given'])}__as__{_safe(entry['suggested'])}"
                _copy(path, _free_name(folder / Path(path).name, taken))
                review += 1
    return FixResult(str(target), copied, review)


def _check_destination(source: Path, target: Path) -> None:
    if source.is_file():
        raise UsageError("--fix-to copies a class-per-folder tree; for a CSV file, review the rows listed in "
                         "label_issues.csv and edit the CSV")  # fmt: skip
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UsageError(f"--fix-to {target} already exists and is not empty; give a new folder (nothing is "
                         "overwritten or deleted)")  # fmt: skip
    if target == source or source in target.parents or target in source.parents:
        raise UsageError(f"--fix-to {target} must lie outside the data folder {source} (and not contain it)")


def _copy(path: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, target)  # follows symlinks: the copy holds the bytes


def _free_name(path: Path, taken: set[Path]) -> Path:
    """``path``, or ``stem_2.ext``, ``stem_3.ext``...: two suspects of one pair may share a file name."""
    candidate, n = path, 1
    while candidate in taken:
        n += 1
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
    taken.add(candidate)
    return candidate


def _safe(name: str) -> str:
    return name.replace(os.sep, "_").replace("/", "_")

"""The check as text: the one-line summary for the training log and the ``cnnkit check`` report.

This module owns how an :class:`~cnnkit.data.audit.report.AuditReport` reads to a person:
:func:`summary_line` and :func:`format_report` (class table, modes, formats, sizes, the
lists of unreadable, ignored, tiny and duplicate files cut at :data:`SHOWN` entries,
problems, warnings and the verdict).
"""

from __future__ import annotations

from typing import Any

from cnnkit.data.audit.report import AuditReport

SHOWN = 10  # entries of each list printed by format_report (the JSON holds all)


def summary_line(report: AuditReport) -> str:
    """One line for the training log: counts, classes, and what needs a look."""
    counts = (
        f"{report.readable:,}/{report.images:,} images readable, {len(report.class_names)} classes"
    )
    balance = f", imbalance {report.imbalance:.2f}" if report.imbalance is not None else ""
    kind = "quick check" if report.quick else "check"
    verdict = "usable" if report.usable else "NOT usable"
    issues = f"{len(report.problems)} problem(s), {len(report.warnings)} warning(s)"
    return f"data {kind}: {counts}{balance}; {verdict}: {issues} ({report.seconds:.1f}s)"


def format_report(report: AuditReport) -> str:
    """The human summary ``cnnkit check`` prints (long lists cut at :data:`SHOWN` entries)."""
    splits = "/".join(report.splits) or "no images"
    layout = {"folder": "one folder per class", "split folders": f"split folders {splits}"}.get(
        report.layout, f"CSV file, splits {splits}"
    )
    lines = [f"dataset: {report.source} ({layout})"]
    other = f"; {len(report.ignored):,} other entries ignored" if report.ignored else ""
    lines.append(
        f"images: {report.images:,} files, {report.readable:,} readable, "
        f"{len(report.unreadable):,} unreadable{other}"
    )
    lines += _class_table(report)
    lines.append("modes: " + _pairs(report.modes))
    lines.append("formats: " + _pairs(report.formats))
    if report.sizes:
        s = report.sizes
        lines.append(
            f"sizes: smallest {s['smallest']}, median {s['median']}, largest {s['largest']}; "
            f"commonest {_pairs(s['common'])}"
        )
        lines.append(f"shorter side (px): {_pairs(s['shorter_side'])}")
    lines += _listed(
        f"unreadable files ({len(report.unreadable)})",
        report.unreadable,
        lambda e: f"{e['path']}: {e['problem']}: {e['reason']}",
    )
    lines += _listed(
        f"ignored ({len(report.ignored)})", report.ignored, lambda e: f"{e['path']}: {e['reason']}"
    )
    lines += _listed(
        f"tiny images, shorter side under {report.tiny_side} px ({len(report.tiny)})",
        report.tiny,
        lambda e: f"{e['path']}: {e['width']}x{e['height']}",
    )
    lines += _listed(f"exact duplicates ({len(report.exact)} groups)", report.exact, _group_line)
    if report.near_distance is None:
        lines.append("near duplicates: not searched (quick check)")
    else:
        lines += _listed(
            f"near duplicates, perceptual hash within {report.near_distance} bits "
            f"({len(report.near)} groups)",
            report.near,
            _group_line,
        )
    lines += [f"problem: {p}" for p in report.problems] + [f"warning: {w}" for w in report.warnings]
    verdict = "usable for training" if report.usable else "NOT usable for training"
    lines.append(
        f"verdict: {verdict} ({len(report.problems)} problems, {len(report.warnings)} warnings); "
        f"checked in {report.seconds:.1f}s, {'; '.join(report.notes)}"
    )
    return "\n".join(lines)


def _class_table(report: AuditReport) -> list[str]:
    balance = "n/a (an empty class)" if report.imbalance is None else f"{report.imbalance:.2f}"
    lines = [
        f"classes: {len(report.class_names)}; imbalance {balance} (largest/smallest training class)"
    ]
    width = max([len(name) for name in report.class_names] + [5])
    splits = list(report.counts)
    lines.append("  " + f"{'class':<{width}}" + "".join(f"  {s:>6}" for s in splits))
    for name in report.class_names:
        flag = "  <- empty" if name in report.empty_classes else ""
        cells = "".join(f"  {report.counts[s][name]:>6,}" for s in splits)
        lines.append(f"  {name:<{width}}{cells}{flag}")
    return lines


def _pairs(counts: dict[str, int]) -> str:
    return ", ".join(f"{key} {n:,}" for key, n in counts.items()) or "none"


def _listed(title: str, entries: list[Any], show: Any) -> list[str]:
    if not entries:
        return [f"{title.rsplit(' (', 1)[0]}: none"]
    lines = [f"{title}:"] + [f"  {show(entry)}" for entry in entries[:SHOWN]]
    if len(entries) > SHOWN:
        lines.append(
            f"  ... and {len(entries) - SHOWN:,} more (all are in the --json / --out report)"
        )
    return lines


def _group_line(group: dict[str, Any]) -> str:
    if len(group["splits"]) > 1:
        tag = "LEAKAGE " + "/".join(group["splits"])
    elif group["conflicting"]:
        tag = "CONFLICTING LABELS"
    else:
        tag = "same class"
    tag += f", distance {group['distance']}" if group["kind"] == "near" else ""
    return f"[{tag}] " + "  ==  ".join(f["path"] for f in group["files"])

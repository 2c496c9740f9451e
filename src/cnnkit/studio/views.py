"""What the studio page shows for an action's result: Markdown, HTML and component updates.

Each function turns one of :class:`~cnnkit.studio.actions.Studio`'s plain dicts into the
values of the page's components, in the order :mod:`cnnkit.studio.app` lists them. API
clients get the dicts themselves; nothing here changes the project.

The page shows the project's files (thumbnails, figures, the report, the zip) as copies in
Gradio's cache (:func:`served`): Gradio serves no folder of the project, and a client never
sees where the project lies.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

from cnnkit.studio.actions import FIGURES, Studio

FIGURE_LABELS = tuple(zip(FIGURES, ("Curves", "Confusion matrix (validation)", "Per-class scores", "Top losses",
                                    "Likely label errors (validation: given vs suggested)"), strict=True))  # fmt: skip
WARNINGS_SHOWN = 12  # data-check lines listed on the page (the API gets them all)
REPORTS = "cnnkit-reports"  # the reports' copies, in Gradio's cache: the one folder served as is (HTML opens)


def served(path: str | os.PathLike[str]) -> str:
    """A copy of a project file in Gradio's cache, the path the page may show or offer.

    Gradio makes this very copy (under the hash of the file's content, once) of every file
    path an event returns; made here, the page needs no ``allowed_paths`` to the project.
    """
    from gradio.processing_utils import save_file_to_cache
    from gradio.utils import get_upload_folder

    return save_file_to_cache(path, cache_dir=get_upload_folder())


def reports_folder() -> Path:
    """Where :func:`report_href` copies reports: the studio's ``allowed_paths``, so that Gradio
    serves a report for the browser to open rather than as a download."""
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder()) / REPORTS


def report_href(path: str | os.PathLike[str]) -> str:
    """The page's link to a copy of ``report.html`` (self-contained: its figures are inline)."""
    from gradio.processing_utils import save_file_to_cache

    return f"gradio_api/file={save_file_to_cache(path, cache_dir=str(reports_folder()))}"


def _esc(text: Any) -> str:
    """Text safe inside Markdown/HTML (class and file names are the user's)."""
    return html.escape(str(text), quote=False).replace("|", "&#124;").replace("*", "&#42;").replace("_", "&#95;")


def percent(value: float | None) -> str:
    """``0.916667`` -> ``91.67 %`` (two decimals, as ``cnnkit eval`` rounds); None -> ``-``."""
    return "-" if value is None else f"{100 * value:.2f} %"


# ---------------------------------------------------------------------------- collect


def collect_view(gr: Any, studio: Studio, result: dict[str, Any], chosen: str | None) -> list[Any]:
    """[last action's message, per-class counts, data check, class dropdown, gallery, picked image]."""
    names = [c["name"] for c in result["classes"]]
    chosen = chosen if chosen in names else (names[0] if names else None)
    gallery = [(served(p), p.name) for p in studio.image_paths(chosen)] if chosen else []
    count = next((c["count"] for c in result["classes"] if c["name"] == chosen), 0)
    label = f"Images of {chosen}: {count}" + (f" (the newest {len(gallery)} shown)" if count > len(gallery) else "")
    return [
        _esc(result.get("message") or ""),
        counts_markdown(result),
        check_markdown(result),
        gr.Dropdown(choices=names, value=chosen),
        gr.Gallery(value=gallery, label=label if chosen else "Images"),
        "",
    ]


def counts_markdown(result: dict[str, Any]) -> str:
    """The per-class table: class, images."""
    classes = result["classes"]
    if not classes:
        return "**No classes yet.** Add one by name, then add its images (upload, webcam, draw), or import a dataset."
    rows = "\n".join(f"| {_esc(c['name'])} | {c['count']} |" for c in classes)
    return f"| class | images |\n|---|---:|\n{rows}\n| **{len(classes)} classes** | **{result['images']}** |"


def check_markdown(result: dict[str, Any]) -> str:
    """The quick data check: what stops training, then the warnings."""
    problems, warnings = result.get("problems") or [], result.get("warnings") or []
    if not problems and not warnings:
        return "Data check: no problems found." if result["classes"] else ""
    lines = [f"- **{_esc(p)}**" for p in problems] + [f"- {_esc(w)}" for w in warnings]
    more = len(lines) - WARNINGS_SHOWN
    listed_all = [f"- ... and {more} more (`cnnkit check data` lists them all)"] if more > 0 else []
    shown = lines[:WARNINGS_SHOWN] + listed_all
    head = "Data check: **not ready to train**" if problems else "Data check: ready to train, with warnings"
    return head + "\n" + "\n".join(shown)


def rejected_text(rejected: list[dict[str, str]]) -> str:
    """``rejected 2: notes.png (not an image); big.jpg (...)`` for the page's warning."""
    shown = "; ".join(f"{r['name']} ({r['reason']})" for r in rejected[:10])
    more = f"; and {len(rejected) - 10} more" if len(rejected) > 10 else ""
    return f"not stored ({len(rejected)}): {shown}{more}"


def picked_name(event: Any) -> str:
    """The file name of a clicked gallery thumbnail (its caption)."""
    value = event.value if isinstance(event.value, dict) else {}
    return str(value.get("caption") or "")


def import_help(studio: Studio) -> tuple[str, str, str]:
    """(the import box's label, its placeholder, a note) for the folders the studio may import."""
    roots = studio.import_roots
    if roots is None:
        return ("Folder, CSV file or dataset name", "/path/to/photos, labels.csv or embedded-mnist", "")
    if not roots:
        return ("Dataset name", "embedded-mnist", "Folders of the server cannot be imported: this studio is open to "
                "the network. Upload the images (a .zip) instead; whoever runs the studio can allow a folder with "
                "`--allow-import DIR`.")  # fmt: skip
    shown = ", ".join(_esc(r) for r in roots)
    return ("Folder or CSV file (under the folders below), or dataset name", f"{roots[0]}/photos or embedded-mnist",
            f"Folders this studio may import from (`--allow-import`): {shown}")  # fmt: skip


# ---------------------------------------------------------------------------- train


def kind_help(listed: dict[str, Any], key: str | None) -> str:
    """One line on the chosen kind of model, and its default epochs."""
    for item in listed["kinds"]:
        if item["key"] == key:
            default = " (the default for this project)" if key == listed["default"] else ""
            return f"{_esc(item['help'])}{default}. Default: {item['epochs']} epochs."
    return ""


def progress_html(status: dict[str, Any]) -> str:
    """A progress bar of the epochs done, with its numbers in words."""
    state, done, planned = status.get("state", "idle"), status.get("epoch", 0), status.get("epochs") or 0
    if state == "idle" or not planned:
        return '<div class="cnnkit-progress">No training job since the studio started.</div>'
    words = f"{state}: epoch {done} of {planned}"
    return (f'<div class="cnnkit-progress"><progress value="{done}" max="{planned}" style="width:100%"></progress>'
            f"<div>{html.escape(words)}</div></div>")  # fmt: skip


def status_markdown(status: dict[str, Any]) -> str:
    """The job's state in a sentence, with its best validation accuracy so far."""
    state, run = status.get("state", "idle"), _esc(status.get("run") or "")
    best = percent(status.get("best_val_acc"))
    if state == "idle":
        return "Choose a kind of model and press **Train**; training runs in the background."
    if state == "running":
        stopping = " Stopping at the next step..." if status.get("stopping") else ""
        return f"Training **{run}**: best validation accuracy so far {best}.{stopping}"
    if state == "completed":
        return f"**{run}** finished: validation accuracy **{best}**. See *Look*, *Try* and *Take away*."
    if state == "stopped":
        return f"**{run}** stopped at epoch {status.get('epoch', 0)} (best {best}); *Continue the run* resumes it."
    return f"**{run}** failed: {_esc(status.get('error') or 'see the log')}"


def train_view(gr: Any, status: dict[str, Any], plotted: Any) -> list[Any]:
    """[progress bar, status, curves, (run, epochs) plotted, log, command, timer]: the timer
    polls while the job runs; the curves are redrawn only after a new epoch."""
    history = status.get("history") or []
    key = [status.get("run"), len(history)]
    if key == plotted or not history:
        curves = gr.skip() if history else None
    else:
        from cnnkit.evaluation.plots import curves_figure

        curves = curves_figure(history)
    return [
        progress_html(status),
        status_markdown(status),
        curves,
        key,
        "\n".join(status.get("log") or []),
        status.get("command") or "",
        gr.Timer(active=status.get("state") == "running"),
    ]


# ---------------------------------------------------------------------------- look, try, take away


def runs_update(gr: Any, studio: Studio, selected: str | None) -> Any:
    """The run dropdown: every run (newest first, with its accuracy), ``selected`` chosen."""
    runs = studio.runs()
    choices = [(f"{r['name']} ({r['status']}, {percent(r['val_acc'])})", r["name"]) for r in runs]
    names = [r["name"] for r in runs]
    return gr.Dropdown(choices=choices, value=selected if selected in names else (names[0] if names else None))


def look_view(gr: Any, studio: Studio, run: str | None) -> list[Any]:
    """[summary, report link, the report's figures, the take-away command] of a run."""
    if not run and not studio.default_run():
        return ["No trained run yet: collect images, then train a model.", "",
                *[None] * len(FIGURES), ""]  # fmt: skip
    found = studio.results(run)
    images = f" of {found['val_images']} validation images" if found["val_images"] else ""
    summary = (f"### {_esc(found['run'])}\nValidation accuracy: **{percent(found['val_acc'])}**{images} "
               f"(best epoch {found['best_epoch'] or '-'} of {found['epochs_run']}) · model `{found['model']}` · "
               f"{_esc(found['status'])}")  # fmt: skip
    summary += label_verdict_line(found.get("label_errors"))
    link, root = "", studio.project.root
    if found["report"]:
        href = html.escape(report_href(root / found["report"]))
        link = f'<a href="{href}" target="_blank" rel="noopener">Open the full report</a> (report.html of the run)'
    figures = [served(root / found["figures"][name]) if name in found["figures"] else None for name in FIGURES]
    return [summary, link, *figures, studio.command(found["run"])]


def label_verdict_line(verdict: dict[str, Any] | None) -> str:
    """One Markdown line on the report's likely label errors: how many it lists, or why none."""
    if not verdict:
        return ""
    if verdict["listed"]:
        split = _esc(verdict["split"])
        line = f"Likely label errors: {verdict['listed']} listed among the {split} images (figure below)"
        return f"\n\n{line}" + (f"; {_esc(verdict['reason'])}" if verdict["reason"] else "")
    return "\n\nLikely label errors: none listed" + (f": {_esc(verdict['reason'])}" if verdict["reason"] else "")

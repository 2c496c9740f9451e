"""The take-away zip of a studio run: what a person needs to use the model elsewhere.

``<run>/takeaway/<run>.zip`` holds, under one top folder named after the run::

    <run>/checkpoints/best.pt     the trained model (cnnkit eval / predict / serve / export read it)
    <run>/model.onnx              the ONNX export, checked against PyTorch (when the export extra is installed)
    <run>/report/...              report.html and its figures
    <run>/config.yaml             the resolved config
    <run>/metrics.csv, classes.json, split.json, summary.json, log.txt   (those the run has)
    <run>/train_command.txt       the `cnnkit train` command that reproduces the run
    <run>/README.txt              what each file is, how to use it, what was left out and why

Inside the top folder the layout is a run folder's, so ``cnnkit eval <run>``, ``cnnkit
predict <run>`` and ``cnnkit serve <run>`` work on the unpacked zip (the data is looked
for where the run was trained). The zip is written atomically: a download never gets
half of one.
"""

from __future__ import annotations

import shlex
import zipfile
from pathlib import Path

from cnnkit import atomic
from cnnkit.errors import CnnkitError
from cnnkit.runfolder import RunFolder
from cnnkit.studio.project import Project

TAKEAWAY = "takeaway"
ONNX_FILE = "model.onnx"


def run_zip(project: Project, run_name: str, *, onnx: bool = True) -> Path:
    """Write the take-away zip of ``run_name`` (see the module docstring) and return its path.

    The report is generated first when the run has none (:func:`cnnkit.report`), and the
    ONNX file exported when missing (:func:`cnnkit.export_checkpoint`, which checks its
    logits against PyTorch on the run's own images). Without the export extra (or with
    ``onnx=False``) the zip has no ONNX file and ``README.txt`` says why and how to make it.

    Raises:
        CnnkitError: no such run, or a run without ``best.pt`` (no epoch finished yet).
    """
    run = project.run_folder(run_name)
    if not run.best.is_file():
        raise CnnkitError(f"run {run_name} has no trained model yet ({_inside(run, run.best)}); "
                          "train at least one epoch")  # fmt: skip
    notes: list[str] = []
    onnx_file = _onnx(run, notes) if onnx else None
    if not onnx:
        notes.append(f"{ONNX_FILE}: left out on request; make it with `cnnkit export RUN`")
    report_dir = _report(run, notes)
    command = train_command_text(project, run)
    target = run.file(TAKEAWAY) / f"{run.name}.zip"

    def write(handle) -> None:
        with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            top = run.name
            archive.write(run.best, f"{top}/{_inside(run, run.best)}")  # the layout of a run folder
            if onnx_file is not None:
                archive.write(onnx_file, f"{top}/{ONNX_FILE}")
            for name in RunFolder.RECORD_FILES:
                if run.file(name).is_file():
                    archive.write(run.file(name), f"{top}/{name}")
            if report_dir is not None:
                for path in sorted(p for p in report_dir.rglob("*") if p.is_file()):
                    archive.write(path, f"{top}/{RunFolder.REPORT}/{path.relative_to(report_dir).as_posix()}")
            archive.writestr(f"{top}/train_command.txt", command)
            archive.writestr(f"{top}/README.txt", _readme(run.name, onnx_file is not None, notes))

    atomic.atomic_write(target, write)
    return target


def train_command_text(project: Project, run: RunFolder) -> str:
    """``train_command.txt``: the command that reproduces ``run`` from the project folder.

    The command the studio stored when it started the run (``studio_command.txt`` in the
    run folder); for a run it did not start, one rebuilt from its ``config.yaml`` (every
    key that differs from cnnkit's defaults, as ``--set``).
    """
    stored = run.read_text(RunFolder.STUDIO_COMMAND)
    command = stored.strip() if stored is not None else _command_from_config(project, run)
    return (f"# Reproduces the run {run.name}: run this in the project folder\n"
            f"#   cd {shlex.quote(project.root.name)}   (the folder's name only: the page never tells where it is)\n"
            f"# (it reads the images in data/ and writes a new run folder under runs/)\n{command}\n")  # fmt: skip


def _inside(run: RunFolder, path: Path) -> str:
    """``path`` as a path inside the run folder (``checkpoints/best.pt``)."""
    return path.relative_to(run.path).as_posix()


def _onnx(run: RunFolder, notes: list[str]) -> Path | None:
    """``RUN/export/model.onnx``, exported (and checked) when missing; None when it cannot be."""
    target = run.export_dir / ONNX_FILE
    if target.is_file():
        return target
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        notes.append(f"{ONNX_FILE}: left out: the export extra is not installed here "
                     "(pip install 'cnnkit[export]', then `cnnkit export RUN`)")  # fmt: skip
        return None
    from cnnkit.commands.export import export_checkpoint

    try:
        result = export_checkpoint(run.path, "onnx", out=target)
    except CnnkitError as exc:
        notes.append(f"{ONNX_FILE}: left out: the export failed ({exc})")
        return None
    return result.path


def _report(run: RunFolder, notes: list[str]) -> Path | None:
    if run.report_file().is_file():
        return run.report_dir
    from cnnkit.commands.report import report

    try:
        return report(run.path).parent
    except CnnkitError as exc:
        notes.append(f"report/: left out: it could not be made ({exc})")
        return None


def _readme(name: str, has_onnx: bool, notes: list[str]) -> str:
    lines = [
        f"cnnkit run {name}, from cnnkit studio",
        "",
        "checkpoints/best.pt  the trained model: weights, classes and preprocessing (PyTorch, cnnkit format)",
        "model.onnx           the same model for ONNX Runtime (logits checked against PyTorch)" if has_onnx else None,
        "report/report.html   accuracy, confusion matrix, curves and examples",
        "config.yaml          the resolved config of the run",
        "train_command.txt    the `cnnkit train` command that reproduces it from the project folder",
        "",
        "Use it (pip install cnnkit), from the folder that holds this one:",
        f"  cnnkit predict {name} photo.jpg       classify images",
        f"  cnnkit serve {name}                   a web page to try it",
        f"  cnnkit eval {name}                    accuracy on the run's own validation images (needs the data)",
    ]
    if notes:
        lines += ["", "Left out:"] + [f"  {note}" for note in notes]
    return "\n".join(line for line in lines if line is not None) + "\n"


def _command_from_config(project: Project, run: RunFolder) -> str:
    """A ``cnnkit train`` command rebuilding ``run``'s config: each key that differs from a
    fresh config's, with the data and output folders relative to the project."""
    from cnnkit.config import RunConfig, flatten
    from cnnkit.studio.kinds import command_args

    saved, default = (_dotted(flatten(values)) for values in (run.read_config_values(), RunConfig().to_dict()))
    changed = {key: value for key, value in saved.items() if value != default.get(key) and key not in ("name",)}
    changed["data.name"] = "data" if Path(str(saved.get("data.name"))) == project.data_dir else saved.get("data.name")
    changed["output_dir"] = "runs"
    ordered = {key: changed.pop(key) for key in ("data.name", "output_dir")} | changed
    return shlex.join(["cnnkit", "train", *command_args(ordered)])


def _dotted(flat: dict) -> dict:
    """``model.kwargs``/``data.kwargs`` dicts spread into one key per entry (``model.kwargs.width``)."""
    out = {}
    for key, value in flat.items():
        if key in ("model.kwargs", "data.kwargs") and isinstance(value, dict):
            out.update({f"{key}.{name}": item for name, item in value.items()})
        else:
            out[key] = value
    return out

"""What the studio page and its API can do: one method per action, plain values in and out.

:class:`Studio` is the one code path behind both: :mod:`cnnkit.studio.app` wires each
method to a button of the page and to a named API endpoint (``api_name``), so a
``gradio_client`` script gets exactly what the page shows. Every method takes plain values
(text, numbers, file paths, images) and returns a JSON-able dict (predictions return the
demo's outputs, as ``cnnkit serve`` does). A user's mistake raises
:class:`~cnnkit.errors.CnnkitError` with a message; the page shows it, never a traceback.

What a method returns names the project's files relative to the project folder
(``data/cat/x.png``, ``runs/NAME/report/report.html``), never by their absolute path: its
answers go to the page's clients (:meth:`Studio.relative` cleans any other text, such as log
lines). Which server folders :meth:`Studio.import_data` may read is the studio's
``import_roots`` (``cnnkit studio --allow-import``).

Nothing here imports gradio; a trained run's model is loaded on the first try of it.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cnnkit.errors import CnnkitError, UsageError
from cnnkit.runfolder import RunFolder
from cnnkit.studio import jobs, kinds
from cnnkit.studio.project import AddResult, Project

GALLERY_IMAGES = 60  # images of one class shown at once (newest first); counts are always complete
# report PNGs the page shows, in order; label_errors: the report's likely label errors on the
# held-out split (made when cleanlab, the labels extra, is installed and finds any)
FIGURES = ("curves", "confusion", "per_class", "top_losses", "label_errors")


class Studio:
    """The studio's actions on one project (see the module docstring).

    Args:
        project: the open project.
        topk: classes a prediction lists.
        gradcam: add a Grad-CAM overlay to predictions.
        import_roots: the server folders :meth:`import_data` may read, under which every
            imported file must lie (symbolic links and ``..`` resolved); None: any folder
            (a studio on the loopback address: its clients are this machine's users); empty:
            none, only registered datasets (``embedded-mnist``...).
    """

    def __init__(self, project: Project, *, topk: int = 5, gradcam: bool = True,
                 import_roots: Sequence[str | os.PathLike[str]] | None = None) -> None:  # fmt: skip
        self.project = project
        self.topk = topk
        self.gradcam = gradcam
        self.import_roots = None if import_roots is None else tuple(Path(os.path.realpath(r)) for r in import_roots)
        self._model: tuple[tuple[str, int], Any] | None = None  # ((run, best.pt mtime), DemoModel)
        self._model_lock = threading.Lock()

    # ------------------------------------------------------------------ collect

    def data(self, message: str = "", result: AddResult | None = None) -> dict[str, Any]:
        """The project's classes and the quick data check, run now.

        Returns:
            ``{"classes": [{"name", "count", "thumbnails": [paths in the project, newest first]}], "images":
            total, "problems": [what stops training], "warnings": [...], "message": what the
            last action did, "added": [class/file], "rejected": [{"name", "reason"}]}``.
        """
        classes = self.project.classes()
        check = self.project.check_report()
        return {
            "classes": [{"name": c.name, "count": c.count, "thumbnails": [self.relative(p) for p in c.thumbnails]}
                        for c in classes],  # fmt: skip
            "images": sum(c.count for c in classes),
            "problems": check.problems,
            "warnings": check.warnings,
            "message": message,
            "added": list(result.added) if result else [],
            "rejected": [{"name": r.name, "reason": r.reason} for r in result.rejected] if result else [],
        }

    def images(self, class_name: str) -> dict[str, Any]:
        """``{"class", "count", "files": [names, newest first]}``: one class's image files."""
        paths = self.image_paths(class_name, limit=None)
        return {"class": class_name, "count": len(paths), "files": [p.name for p in paths]}

    def image_paths(self, class_name: str, limit: int | None = GALLERY_IMAGES) -> list[Path]:
        """The newest ``limit`` image files of a class (None: all), newest first (the gallery's order)."""
        paths = self.project.images(class_name)
        return sorted(paths, key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)[:limit]

    def add_class(self, name: str) -> dict[str, Any]:
        """Add an empty class; :meth:`data` after it (``class``: the name as stored)."""
        added = self.project.add_class(name or "")
        return {**self.data(f"added class {added}"), "class": added}

    def delete_class(self, name: str) -> dict[str, Any]:
        """Delete a class and its images; :meth:`data` after it."""
        self.project.delete_class(_required(name, "choose the class to delete"))
        return self.data(f"deleted class {name}")

    def upload(self, class_name: str, files: Any) -> dict[str, Any]:
        """Store uploaded image files (or the images in uploaded ``.zip`` files) in a class.

        ``files``: file paths, or Gradio file payloads (dicts with ``path`` and ``orig_name``).
        Bad images are rejected with their names and never stored; the others are.
        """
        class_name = _required(class_name, "choose or add a class first")
        items = [f for f in (files if isinstance(files, (list, tuple)) else [files]) if f]
        if not items:
            raise UsageError("choose image files or a .zip to upload first")
        paths = [str(f.get("path") if isinstance(f, dict) else f) for f in items]
        names = [str(f.get("orig_name") or os.path.basename(f.get("path"))) if isinstance(f, dict)
                 else os.path.basename(str(f)) for f in items]  # fmt: skip
        result = self.project.add_files(class_name, paths, names)
        return self.data(f"{class_name}: {result.message}", result)

    def add_snapshot(self, class_name: str, image: Any) -> dict[str, Any]:
        """Store one webcam frame (an image or array) in a class."""
        name = self.project.add_image(_required(class_name, "choose or add a class first"), image, source="webcam")
        return self.data(f"{class_name}: added {name}", AddResult(added=[f"{class_name}/{name}"]))

    def add_drawing(self, class_name: str, sketch: Any) -> dict[str, Any]:
        """Store a sketchpad drawing in a class, as an MNIST-style digit (see ``Project.add_image``).

        ``sketch``: Gradio's image-editor value (``{"background", "layers", "composite"}``) or an image.
        """
        from cnnkit.serve.app import editor_image

        image = editor_image(sketch)
        if image is None:
            raise UsageError("draw something first: the canvas is empty")
        name = self.project.add_image(_required(class_name, "choose or add a class first"), image, source="sketch")
        return self.data(f"{class_name}: added {name}", AddResult(added=[f"{class_name}/{name}"]))

    def delete_image(self, class_name: str, file_name: str) -> dict[str, Any]:
        """Delete one image (its file name, as :meth:`images` lists it) of a class."""
        self.project.delete_image(_required(class_name, "choose the class first"),
                                  _required(file_name, "select the image to delete first"))  # fmt: skip
        return self.data(f"{class_name}: deleted {file_name}")

    def import_data(self, source: str, limit_per_class: int | float | None = None) -> dict[str, Any]:
        """Copy a class-per-folder tree, a ``path,label`` CSV or a registered dataset into the project.

        ``limit_per_class``: at most this many images of each class (None or 0: all). A folder
        or CSV file must lie under :attr:`import_roots` (see the class docstring).
        """
        source = _required(source, "give a folder, a CSV file or a dataset name to import")
        limit = int(limit_per_class) if limit_per_class else None
        result = self.project.import_from(source, limit_per_class=limit, roots=self.import_roots)
        return self.data(f"imported {source}: {result.message}", result)

    # ------------------------------------------------------------------ train

    def kinds(self) -> dict[str, Any]:
        """``{"default": key, "kinds": [{"key", "label", "help", "epochs"}]}``: the kinds of model."""
        return {
            "default": kinds.default_kind(self.project),
            "kinds": [{"key": k.key, "label": k.label, "help": k.help, "epochs": k.epochs}
                      for k in kinds.KINDS.values()],  # fmt: skip
        }

    def train(self, kind: str, epochs: int | float | None = None, image_size: int | float | None = None,
              model: str = "") -> dict[str, Any]:  # fmt: skip
        """Start training in the background; :meth:`train_status` at once (``state``: running).

        ``kind``: ``photos``, ``small``, ``digits`` or ``advanced`` (empty: the project's
        default); ``epochs`` and ``image_size``: None or 0 keep the kind's defaults;
        ``model``: the model name, for ``advanced`` only.

        Raises:
            CnnkitError: a job is running already, or the data cannot train yet.
        """
        key = (kind or "").strip() or kinds.default_kind(self.project)
        settings = kinds.Settings(epochs=int(epochs) if epochs else None,
                                  image_size=int(image_size) if image_size else None,
                                  model=(model or "").strip() or None)  # fmt: skip
        jobs.start_training(self.project, key, settings)
        return self.train_status()

    def train_status(self) -> dict[str, Any]:
        """The latest job's status (:meth:`cnnkit.studio.jobs.TrainJob.status`; ``state``
        ``idle`` when none ran since the server started) and its ``command``; its log lines
        and error name the project's files relative to the project (:meth:`relative`)."""
        status = jobs.job_status(self.project)
        run = status.get("run")
        status["command"] = _stored_command(RunFolder(self.project.runs_dir / run, writer=False)) if run else ""
        status["log"] = [self.relative(line) for line in status.get("log") or []]
        if status.get("error"):
            status["error"] = self.relative(status["error"])
        return status

    def stop(self) -> dict[str, Any]:
        """Ask the running job to stop at its next step (the run stays resumable); its status."""
        job = jobs.current_job(self.project)
        if job is None or not job.running:
            return {**self.train_status(), "message": "no training job is running"}
        job.stop()
        return {**self.train_status(), "message": f"stopping {job.run_name}"}

    def resume(self, run: str, epochs: int | float | None = None) -> dict[str, Any]:
        """Continue a stopped run from its ``last.pt`` (``epochs``: its new total; None: as planned)."""
        jobs.resume_training(self.project, self._run_name(run), int(epochs) if epochs else None)
        return self.train_status()

    # ------------------------------------------------------------------ look

    def runs(self) -> list[dict[str, Any]]:
        """The project's runs, newest first: ``name``, ``status``, ``model``, ``val_acc``
        (best epoch), ``best_epoch``, ``epochs_run``, ``epochs_planned``, ``started``."""
        return [{"name": r.name, "status": r.status, "model": r.model, "val_acc": r.best, "best_epoch": r.best_epoch,
                 "epochs_run": r.epochs_run, "epochs_planned": r.epochs_planned, "started": r.started}
                for r in self.project.runs()]  # fmt: skip

    def default_run(self) -> str | None:
        """The newest run with a trained model (``best.pt``), else None."""
        for row in self.runs():
            if self.project.run_folder(row["name"]).best.is_file():
                return row["name"]
        return None

    def results(self, run: str | None = None) -> dict[str, Any]:
        """What a run reached: ``run``, ``status``, ``model``, ``val_acc`` (best epoch),
        ``val_images``, ``best_epoch``, ``epochs_run``, ``figures`` (name -> PNG of its report,
        where made), ``report`` (report.html or None), ``command``, ``label_errors`` (the report's
        verdict on likely label errors: ``{"split", "listed", "reason"}`` or None); files as paths
        in the project."""
        name = self._run_name(run)
        row = next((r for r in self.runs() if r["name"] == name), None)
        if row is None:
            raise UsageError(f"no run {name!r} in this project")
        folder = self.project.run_folder(name)
        figures = {f: folder.report_file(f"{f}.png") for f in FIGURES}
        return {
            "run": name, **{k: row[k] for k in ("status", "model", "val_acc", "best_epoch", "epochs_run")},
            "val_images": _split_size(folder, "val"),
            "figures": {f: self.relative(path) for f, path in figures.items() if path.is_file()},
            "report": self.relative(folder.report_file()) if folder.report_file().is_file() else None,
            "command": _stored_command(folder),
            "label_errors": _label_verdict(folder),
        }  # fmt: skip

    # ------------------------------------------------------------------ try

    def predict(self, image: Any, run: str | None = None) -> tuple[dict[str, float], Any, Any, str]:
        """(top classes -> probability, the image the model saw, the Grad-CAM overlay or None,
        the verdict: "" or "not sure: none of these?" in Markdown) for an uploaded file payload,
        a file path or an image, as ``cnnkit serve`` does."""
        return self._demo_model(run).upload(image)

    def predict_drawing(self, sketch: Any, run: str | None = None) -> tuple[dict[str, float], Any, Any, str]:
        """As :meth:`predict` for a sketchpad drawing, prepared as the studio stores drawings
        (an MNIST-style digit: ``Project.add_image``), whatever the model."""
        return self._demo_model(run).drawing(sketch)

    def _demo_model(self, run: str | None) -> Any:
        """The run's :class:`cnnkit.serve.app.DemoModel`, loaded once (one run kept at a time)."""
        from cnnkit.inference.runtime import load_predictor
        from cnnkit.serve.app import DemoModel

        name = self._run_name(run)
        best = self.project.run_folder(name).best
        if not best.is_file():
            raise CnnkitError(f"run {name} has no trained model yet; wait for its first epoch")
        key = (name, best.stat().st_mtime_ns)
        with self._model_lock:
            if self._model is None or self._model[0] != key:
                # PyTorch: Grad-CAM needs the module anyway, and an ONNX build (checked on the
                # run's images) would delay the first try of every new run by seconds
                predictor = load_predictor(best, backend="torch", device="cpu")
                self._model = (key, DemoModel(predictor, topk=self.topk, gradcam=self.gradcam))
            return self._model[1]

    # ------------------------------------------------------------------ take away

    def download(self, run: str | None = None) -> str:
        """The path of the run's take-away zip (checkpoint, ONNX, report, config, command), made now."""
        from cnnkit.studio.takeaway import run_zip

        return str(run_zip(self.project, self._run_name(run)))

    def command(self, run: str | None = None) -> str:
        """The ``cnnkit train`` command that reproduces a run (``train_command.txt`` of its zip)."""
        from cnnkit.studio.takeaway import train_command_text

        return train_command_text(self.project, self.project.run_folder(self._run_name(run)))

    def relative(self, text: str | os.PathLike[str]) -> str:
        """``text`` (a path or a line) with the server's folders taken out: a file in the project
        as its path in the project (``runs/NAME/log.txt``; the folder itself as ``.``), cnnkit's
        cache as ``<cnnkit cache>`` (training logs name it), the home folder as ``~``."""
        text = os.fspath(text)
        for folder, name in self._folders:
            # the folder followed by a separator or by no more of a name (not /tmp/x in /tmp/xy, /tmp/x.png)
            pattern = re.escape(folder) + r"(?:/|\\|(?![\w-]|\.\w))"
            text = re.sub(pattern, lambda m, f=folder, n=name: n if m.group(0) == f else (n + "/" if n != "." else ""),
                          text)  # fmt: skip
        return text

    @functools.cached_property
    def _folders(self) -> list[tuple[str, str]]:
        """(absolute folder, what :meth:`relative` writes for it), the most specific first."""
        from cnnkit.data.datasets import cache_dir

        named = [(self.project.root, "."), (cache_dir(), "<cnnkit cache>"), (Path.home(), "~")]
        pairs = {(variant, name) for folder, name in named for variant in (str(folder), os.path.realpath(folder))
                 if len(variant) > 1}  # fmt: skip
        return sorted(pairs, key=lambda pair: len(pair[0]), reverse=True)

    def _run_name(self, run: str | None) -> str:
        name = (run or "").strip() or self.default_run()
        if not name:
            raise UsageError("no trained run yet: train a model first (Train)")
        return self.project.run_folder(name).name


def _required(value: Any, what: str) -> str:
    text = str(value).strip() if value is not None else ""
    if not text:
        raise UsageError(what)
    return text


def _stored_command(folder: RunFolder) -> str:
    return (folder.read_text(RunFolder.STUDIO_COMMAND) or "").strip()


def _label_verdict(folder: RunFolder) -> dict[str, Any] | None:
    """The report's likely-label-errors verdict (``{"split", "listed", "reason"}``), None if it made none."""
    verdict = folder.read_json(f"{RunFolder.REPORT}/{RunFolder.LABEL_VERDICT}")
    return verdict if isinstance(verdict, dict) else None


def _split_size(folder: RunFolder, split: str) -> int | None:
    try:
        return int(folder.read_split()["sizes"][split])
    except (ValueError, KeyError, TypeError):
        return None

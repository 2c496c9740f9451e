"""A studio project: one folder holding a class-per-folder dataset and the runs trained on it.

Layout::

    root/studio.json              {"format": 1, "cnnkit": "<version that wrote it>"}
    root/data/<class>/<images>    what `cnnkit train --data data` reads
    root/runs/<run>/              normal cnnkit run folders (`cnnkit train --output-dir runs`)

Everything lives on disk, so closing the browser or restarting the server loses nothing:
:meth:`Project.open` on the same folder finds the same classes, images and runs. Every
file is written atomically (:mod:`cnnkit.atomic`) under a safe, unique name; an image is
stored only after cnnkit's own loader (:func:`cnnkit.data.folder.load_image`) decoded it,
so a bad upload is rejected with its name and never reaches ``data/``.

Nothing here imports gradio; torch comes in with cnnkit's data layer (its loader).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnkit import atomic
from cnnkit._version import __version__
from cnnkit.data.folder import SPLIT_ALIASES, to_mode
from cnnkit.errors import CnnkitError, UsageError
from cnnkit.runfolder import RunFolder
from cnnkit.studio import files
from cnnkit.studio.files import AddResult, Rejected

__all__ = ["AddResult", "ClassInfo", "DataCheck", "Project", "Rejected", "safe_class_name", "validate_class_name"]

STUDIO_FORMAT = 1  # bump when the layout changes; a newer one is refused, never guessed at
MANIFEST = "studio.json"
DATA, RUNS = "data", "runs"

# The limits of one file and one zip are cnnkit.studio.files' (MAX_FILE_BYTES, MAX_ZIP_BYTES, MAX_PIXELS).
MAX_FILES_PER_REQUEST = 1000  # images in one upload (a zip's members count one by one)
MAX_IMAGES = 20_000  # images in one project
MIN_IMAGES_PER_CLASS = 5  # to train: at least one validation image per class and a few to learn from
MAX_CLASS_NAME = 64
THUMBNAILS = 6  # per class in :meth:`Project.classes`, newest first

_RESERVED = {"_review", "__macosx"} | set(SPLIT_ALIASES)  # split names would turn data/ into a split layout
_locks: dict[Path, threading.RLock] = {}
_locks_guard = threading.Lock()


@dataclass
class ClassInfo:
    """One class of a project.

    Attributes:
        name: the class (its folder under ``data/``).
        count: image files in it.
        thumbnails: up to :data:`THUMBNAILS` of its images, newest first.
    """

    name: str
    count: int
    thumbnails: list[Path] = field(default_factory=list)


@dataclass
class DataCheck:
    """The quick data check of ``data/``: ``problems`` stop training, ``warnings`` do not."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def lines(self) -> list[str]:
        return self.problems + self.warnings


class Project:
    """A studio project folder (see the module docstring); make one with :meth:`open`.

    Attributes:
        root: the project folder (absolute).
    """

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = root
        self.manifest = manifest

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, root: str | os.PathLike[str], create: bool = True) -> Project:
        """Open the project in ``root``, creating it (``studio.json``, ``data/``, ``runs/``) if asked.

        A new project is made only in a missing or empty folder, or one holding nothing but
        ``data/`` and ``runs/``; reopening finds the classes, images and runs left there.

        Raises:
            CnnkitError: ``studio.json`` was written by a newer cnnkit (the message names its
                version: upgrade), is unreadable, or ``root`` is not a project and ``create``
                is False or it holds other files.
        """
        path = Path(root).expanduser().absolute()
        manifest_file = path / MANIFEST
        if manifest_file.is_file():
            manifest = _read_manifest(manifest_file)
        elif not create:
            raise CnnkitError(f"{path} is not a cnnkit studio project (no {MANIFEST}); open a project folder "
                              "or create a new one")  # fmt: skip
        else:
            _check_new_root(path)
            manifest = {"format": STUDIO_FORMAT, "cnnkit": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
            path.mkdir(parents=True, exist_ok=True)
            atomic.write_json(manifest_file, manifest)
        (path / DATA).mkdir(exist_ok=True)
        (path / RUNS).mkdir(exist_ok=True)
        return cls(path, manifest)

    @property
    def data_dir(self) -> Path:
        """``root/data``: one folder of images per class."""
        return self.root / DATA

    @property
    def runs_dir(self) -> Path:
        """``root/runs``: the run folders trained on this project."""
        return self.root / RUNS

    def run_folder(self, name: str) -> RunFolder:
        """The run ``name`` of this project (a plain name: no path reaches outside ``runs/``), read-only.

        Raises:
            UsageError: no such run (a run folder holds ``config.yaml``).
        """
        folder = RunFolder(self.runs_dir / name, writer=False)
        if not name or Path(name).name != name or name.startswith(".") or not folder.is_run():
            raise UsageError(f"no run {name!r} in this project")
        return folder

    def _lock(self) -> threading.RLock:
        """One lock per project folder in this process: writes that pick names are serialised."""
        with _locks_guard:
            return _locks.setdefault(self.root, threading.RLock())

    # ------------------------------------------------------------------ classes

    def classes(self) -> list[ClassInfo]:
        """The classes (sorted by name, as training numbers them), their image counts and thumbnails."""
        out = []
        for folder in self._class_folders():
            images = self._image_files(folder)
            newest = sorted(images, key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)
            out.append(ClassInfo(folder.name, len(images), newest[:THUMBNAILS]))
        return out

    def class_names(self) -> list[str]:
        return [folder.name for folder in self._class_folders()]

    def images(self, class_name: str) -> list[Path]:
        """Every image file of ``class_name``, sorted by name.

        Raises:
            UsageError: no such class.
        """
        return sorted(self._image_files(self._class_folder(class_name)), key=lambda p: p.name)

    def image_count(self) -> int:
        """Images in the whole project."""
        return sum(len(self._image_files(folder)) for folder in self._class_folders())

    def add_class(self, name: str) -> str:
        """Add an empty class; returns its name (surrounding spaces removed).

        Raises:
            UsageError: an empty or too long name, one with a path separator or control
                character, a hidden one (``.x``), a reserved one (``_review``, ``train``,
                ``val``, ``test``...: training would read those folders as splits) or one
                that exists already (compared case-insensitively).
        """
        name = validate_class_name(name)
        with self._lock():
            existing = {n.lower(): n for n in self.class_names()}
            if name.lower() in existing:
                raise UsageError(f"class {existing[name.lower()]!r} exists already; choose another name")
            (self.data_dir / name).mkdir()
        return name

    def delete_class(self, name: str) -> None:
        """Delete a class and all its images (the folder is renamed away first, so no half-deleted
        class is ever listed).

        Raises:
            UsageError: no such class.
        """
        with self._lock():
            folder = self._class_folder(name)
            trash = self.data_dir / f".deleted-{uuid.uuid4().hex[:12]}"
            folder.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)

    # ------------------------------------------------------------------ images

    def add_files(self, class_name: str, paths: Sequence[str | os.PathLike[str]],
                  names: Sequence[str] | None = None) -> AddResult:  # fmt: skip
        """Store uploaded image files and the images inside uploaded ``.zip`` files in a class.

        Each image is decoded by cnnkit's loader before it is stored (its bytes unchanged,
        under a safe unique name); one that is too large, not an image, truncated or corrupt
        is rejected with its name and reason, and the others are still stored. A zip is
        unpacked in memory: directories, hidden entries and ``__MACOSX/`` are skipped; a zip
        with an absolute or ``..`` path, or bigger than :data:`~cnnkit.studio.files.MAX_ZIP_BYTES` unpacked, is
        rejected whole. An image whose bytes are already in the class is rejected as a copy.
        Once the project holds :data:`MAX_IMAGES` images the rest are rejected.

        Args:
            class_name: an existing class.
            paths: the uploaded files (images or ``.zip``).
            names: the names the user knows them by (default: each path's base name).

        Raises:
            UsageError: no such class, ``names`` not matching ``paths``, or more than
                :data:`MAX_FILES_PER_REQUEST` images in one request (nothing is stored).
        """
        folder = self._class_folder(class_name)
        names = [os.path.basename(os.fspath(p)) for p in paths] if names is None else list(names)
        if len(names) != len(paths):
            raise UsageError(f"got {len(paths)} files but {len(names)} names")
        result = AddResult()
        candidates: list[files.Candidate] = []
        for path, name in zip(paths, names, strict=True):
            if name.lower().endswith(".zip") or (not files.looks_like_image(name) and zipfile.is_zipfile(path)):
                candidates += files.zip_members(Path(path), name, result)
            else:
                found = files.read_upload(Path(path), name, result)
                candidates += [found] if found is not None else []
        if len(candidates) > MAX_FILES_PER_REQUEST:
            raise UsageError(f"{len(candidates):,} images in one upload; at most {MAX_FILES_PER_REQUEST:,} at a time: "
                             "upload them in several parts")  # fmt: skip
        self._store(folder, candidates, result)
        return result

    def add_image(self, class_name: str, image: Any, source: str = "webcam") -> str:
        """Store one image from the webcam or the sketchpad as a PNG; returns its file name.

        ``source="webcam"``: the frame is stored as is (RGB; transparency over white).
        ``source="sketch"``: dark strokes on a light or transparent canvas are stored as an
        MNIST-style digit (28x28, white on black, centred by mass: :func:`cnnkit.serve.drawing.mnist_style`),
        what the digit models and ``cnnkit serve``'s sketchpad expect.

        Args:
            image: a PIL image or a uint8 array ``[H, W]``, ``[H, W, 3]`` or ``[H, W, 4]``.

        Raises:
            UsageError: no such class, an unknown ``source``, an empty sketch, no image, an
                image over :data:`~cnnkit.studio.files.MAX_PIXELS`, or a full project.
        """
        folder = self._class_folder(class_name)
        picture = files.as_pil(image)
        if picture.width * picture.height > files.MAX_PIXELS:
            raise UsageError(f"the {source} image is {picture.width}x{picture.height}; at most "
                             f"{files.MAX_PIXELS / 1e6:.0f} MP")  # fmt: skip
        if source == "sketch":
            from cnnkit.serve.drawing import mnist_style

            picture = mnist_style(picture)
        elif source == "webcam":
            picture = to_mode(picture, "RGB")
        else:
            raise UsageError(f"unknown image source {source!r}; valid: webcam, sketch")
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        with self._lock():
            self._check_room(1)
            target = files.unique_path(folder, f"{source}-{time.strftime('%Y%m%d-%H%M%S')}.png")
            atomic.write_bytes(target, buffer.getvalue())
        return target.name

    def delete_image(self, class_name: str, file_name: str) -> None:
        """Delete one image of a class.

        Raises:
            UsageError: no such class, a name with a path in it, or no such image.
        """
        folder = self._class_folder(class_name)
        if Path(file_name).name != file_name or file_name.startswith("."):
            raise UsageError(f"{file_name!r} is not an image file name (give the name only, no folder)")
        path = folder / file_name
        if not path.is_file():
            raise UsageError(f"class {folder.name!r} has no image {file_name!r}")
        with self._lock():
            path.unlink()

    def import_from(self, source: str | os.PathLike[str], limit_per_class: int | None = None,
                    data_dir: str | os.PathLike[str] | None = None,
                    roots: Sequence[str | os.PathLike[str]] | None = None) -> AddResult:  # fmt: skip
        """Copy a dataset into ``data/``: a class-per-folder tree (with or without
        train/val/test folders: every split's images are taken), a ``path,label`` CSV as
        ``cnnkit train`` reads it, or a registered dataset name (``embedded-mnist``, ``mnist``...;
        its training images, written as PNGs, found under ``data_dir`` and never downloaded).

        Classes are matched to existing ones case-insensitively, else created (a name that
        is not a valid class name is made safe: ``T-shirt/top`` -> ``T-shirt_top``). Each
        image is checked as an upload is; bad ones are rejected by name.

        Args:
            limit_per_class: take at most this many images of each class (the first ones).
            data_dir: where registered datasets are (default: cnnkit's data folder).
            roots: the folders a folder or CSV source, and every file it lists, must lie
                under (symbolic links and ``..`` resolved; a file elsewhere is rejected); None:
                anywhere; empty: registered datasets only (the studio's ``--allow-import``).

        Raises:
            UsageError: a source that is neither a folder, a CSV nor a registered name, one
                outside ``roots`` (one message, whether it exists or not), or a
                ``limit_per_class`` under 1. DataError: a folder or CSV cnnkit cannot list.
        """
        if limit_per_class is not None and limit_per_class < 1:
            raise UsageError(f"limit per class must be at least 1, got {limit_per_class}")
        resolved = None if roots is None else tuple(Path(os.path.realpath(r)) for r in roots)
        result = AddResult()
        by_class = files.source_images(source, limit_per_class, data_dir, roots=resolved, result=result)
        for raw_name, items in by_class.items():
            folder = self._import_class(raw_name)
            candidates = []
            for name, data_or_path in items:
                if isinstance(data_or_path, bytes):
                    candidates.append(files.Candidate(name, data=data_or_path))
                else:
                    found = files.read_upload(Path(data_or_path), name, result)
                    candidates += [found] if found is not None else []
            self._store(folder, candidates, result)
        return result

    # ------------------------------------------------------------------ checking and runs

    def check_report(self) -> DataCheck:
        """The quick data check of ``data/`` (:func:`cnnkit.data.audit.audit`, in this process),
        plus a problem per class with fewer than :data:`MIN_IMAGES_PER_CLASS` images."""
        check = DataCheck()
        classes = self.classes()
        if len(classes) < 2:
            check.problems.append(f"add at least 2 classes to train a classifier (the project has {len(classes)})")
        for info in classes:
            if info.count < MIN_IMAGES_PER_CLASS:
                check.problems.append(f"class {info.name} has only {info.count} image{'' if info.count == 1 else 's'} "
                                      f"(need at least {MIN_IMAGES_PER_CLASS} to train)")  # fmt: skip
        if len(classes) < 2 or not any(info.count for info in classes):
            return check
        from cnnkit.data.audit import audit

        report = audit(self.data_dir, quick=True, workers=0, strict=False)
        check.problems += [p for p in report.problems if not p.startswith("no readable training image in class")]
        check.warnings += report.warnings
        check.warnings += [f"unreadable: {e['path']} ({e['reason']})" for e in report.unreadable[:20]]
        check.warnings += [_duplicate_line(group) for group in report.exact[:20]]
        return check

    def check(self) -> list[str]:
        """:meth:`check_report` as lines: what stops training first, then the warnings."""
        return self.check_report().lines

    def runs(self) -> list[Any]:
        """The project's runs, newest first, as :class:`cnnkit.runs.RunRow` (``status``:
        done, running, interrupted, failed...; ``best``: the best epoch's ``val_acc``;
        ``epochs_run``/``epochs_planned``; ``path``)."""
        from cnnkit.runs import read_run

        rows = []
        for path in sorted(p for p in self.runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            row, _ = read_run(path, metric="val_acc")
            if row is not None:
                rows.append(row)
        return sorted(rows, key=lambda r: (r.started, r.name), reverse=True)

    # ------------------------------------------------------------------ internals

    def _class_folders(self) -> list[Path]:
        if not self.data_dir.is_dir():
            return []
        found = (p for p in self.data_dir.iterdir() if p.is_dir() and not files.hidden(p.name))
        return sorted(found, key=lambda p: p.name)

    def _class_folder(self, name: str) -> Path:
        for folder in self._class_folders():
            if folder.name == name:
                return folder
        known = ", ".join(self.class_names()) or "none yet"
        raise UsageError(f"no class {name!r} in this project (classes: {known}); add it first")

    def _import_class(self, raw_name: str) -> Path:
        name = safe_class_name(raw_name)
        existing = {n.lower(): n for n in self.class_names()}
        if name.lower() in existing:
            return self.data_dir / existing[name.lower()]
        return self.data_dir / self.add_class(name)

    @staticmethod
    def _image_files(folder: Path) -> list[Path]:
        return [p for p in folder.iterdir() if p.is_file() and not files.hidden(p.name)
                and files.looks_like_image(p.name)]  # fmt: skip

    def _check_room(self, count: int) -> None:
        have = self.image_count()
        if have + count > MAX_IMAGES:
            raise UsageError(f"the project holds {have:,} images; at most {MAX_IMAGES:,}: delete some first")

    def _store(self, folder: Path, candidates: list[files.Candidate], result: AddResult) -> None:
        """Decode each candidate (in a temporary file) and store the good ones in ``folder``."""
        with self._lock(), tempfile.TemporaryDirectory(prefix="cnnkit-studio-") as scratch:
            have = self.image_count()
            digests = {files.digest(p.read_bytes()): p.name for p in self._image_files(folder)}
            for item in candidates:
                if have >= MAX_IMAGES:
                    result.rejected.append(Rejected(item.name, f"the project is full ({MAX_IMAGES:,} images)"))
                    continue
                try:
                    data = item.read()
                except OSError as exc:
                    result.rejected.append(Rejected(item.name, f"cannot read the file: {exc.strerror or exc}"))
                    continue
                digest = files.digest(data)
                if digest in digests:
                    result.rejected.append(Rejected(item.name, f"a copy of {digests[digest]}, already in "
                                                               f"{folder.name}"))  # fmt: skip
                    continue
                image_format = files.verify(item.name, data, Path(scratch), result)
                if image_format is None:
                    continue
                target = files.unique_path(folder, files.safe_file_name(item.name, image_format))
                atomic.write_bytes(target, data)
                digests[digest] = target.name
                result.added.append(f"{folder.name}/{target.name}")
                have += 1


# ---------------------------------------------------------------------------- names


def validate_class_name(name: str) -> str:
    """``name`` without surrounding spaces, if it can be a class folder; see :meth:`Project.add_class`.

    Raises:
        UsageError: what is wrong with it and what to do.
    """
    if not isinstance(name, str):
        raise UsageError(f"a class name must be text, got {type(name).__name__}")
    name = name.strip()
    if not name:
        raise UsageError("a class needs a name")
    if len(name) > MAX_CLASS_NAME:
        raise UsageError(f"class name {name[:20]!r}... is {len(name)} characters; at most {MAX_CLASS_NAME}")
    if "/" in name or "\\" in name or any(ord(c) < 32 for c in name) or name in (".", ".."):
        raise UsageError(f"class name {name!r} cannot contain / or \\ or control characters; use letters, digits, "
                         "spaces, - or _")  # fmt: skip
    if name.startswith("."):
        raise UsageError(f"class name {name!r} cannot start with a dot (hidden folders are not read)")
    if name.lower() in _RESERVED:
        raise UsageError(f"{name!r} is reserved (train, val, valid, validation and test name split folders; _review "
                         "is cnnkit's); choose another class name")  # fmt: skip
    return name


def safe_class_name(raw: str) -> str:
    """A valid class name made from a dataset's label (separators and control characters
    replaced by ``_``, leading dots dropped, reserved names prefixed with ``class_``)."""
    name = re.sub(r"[/\\\x00-\x1f]+", "_", str(raw)).strip().lstrip(".")[:MAX_CLASS_NAME] or "class"
    if name.lower() in _RESERVED:
        name = f"class_{name}"
    return validate_class_name(name)


def _duplicate_line(group: dict[str, Any]) -> str:
    files = group.get("files") or group.get("paths") or []
    shown = [f.get("path") if isinstance(f, dict) else str(f) for f in files]
    return "identical images: " + " = ".join(shown[:4]) + (f" (+{len(shown) - 4})" if len(shown) > 4 else "")


# ---------------------------------------------------------------------------- the manifest and imports


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        version = int(manifest["format"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CnnkitError(f"{path} is not a readable studio project file ({type(exc).__name__}); restore it or open "
                          "another folder") from None  # fmt: skip
    if version > STUDIO_FORMAT:
        raise CnnkitError(f"{path.parent} was written by cnnkit {manifest.get('cnnkit', '(unknown version)')} "
                          f"(studio project format {version}); this cnnkit {__version__} reads format {STUDIO_FORMAT} "
                          "and older: upgrade cnnkit (pip install -U cnnkit) to open it")  # fmt: skip
    return manifest


def _check_new_root(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise CnnkitError(f"{path} is a file, not a folder; choose a folder for the project")
    if path.is_dir():
        others = sorted(p.name for p in path.iterdir() if p.name not in (DATA, RUNS))
        if others:
            raise CnnkitError(f"{path} is not empty ({', '.join(others[:5])}) and not a studio project; choose a new "
                              "or empty folder (import existing images with Import)")  # fmt: skip

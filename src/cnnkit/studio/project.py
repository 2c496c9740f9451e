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

import hashlib
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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from cnnkit import atomic
from cnnkit._version import __version__
from cnnkit.data.folder import SPLIT_ALIASES, ImageLoadError, load_image, to_mode
from cnnkit.errors import CnnkitError, DataError, UsageError

STUDIO_FORMAT = 1  # bump when the layout changes; a newer one is refused, never guessed at
MANIFEST = "studio.json"
DATA, RUNS = "data", "runs"

MAX_FILE_BYTES = 20 * 2**20  # one image file (or one image inside a zip)
MAX_ZIP_BYTES = 512 * 2**20  # one uploaded zip, and the sum of its members once unpacked
MAX_FILES_PER_REQUEST = 1000  # images in one upload (a zip's members count one by one)
MAX_IMAGES = 20_000  # images in one project
MAX_PIXELS = 40_000_000  # as `cnnkit serve`: a 12 MP photo is 12,000,000
MIN_IMAGES_PER_CLASS = 5  # to train: at least one validation image per class and a few to learn from
MAX_CLASS_NAME = 64
THUMBNAILS = 6  # per class in :meth:`Project.classes`, newest first

_RESERVED = {"_review", "__macosx"} | set(SPLIT_ALIASES)  # split names would turn data/ into a split layout
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_FORMAT_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "BMP": ".bmp", "WEBP": ".webp", "TIFF": ".tif",
                  "PPM": ".ppm"}  # fmt: skip
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
class Rejected:
    """A file that was not stored, and why (``name`` as the user knows it)."""

    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name}: {self.reason}"


@dataclass
class AddResult:
    """What an add or import stored and what it refused.

    Attributes:
        added: stored images as paths relative to ``data/`` (``cat/photo.jpg``).
        rejected: files not stored, each with its reason; none of their bytes reached ``data/``.
    """

    added: list[str] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)

    @property
    def message(self) -> str:
        """One line for the page: ``added 3 images; rejected 1: bad.jpg (truncated ...)``."""
        text = f"added {len(self.added)} image{'' if len(self.added) == 1 else 's'}"
        if self.rejected:
            shown = "; ".join(str(r) for r in self.rejected[:10])
            more = f"; and {len(self.rejected) - 10} more" if len(self.rejected) > 10 else ""
            text += f"; rejected {len(self.rejected)}: {shown}{more}"
        return text


@dataclass
class DataCheck:
    """The quick data check of ``data/``: ``problems`` stop training, ``warnings`` do not."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def lines(self) -> list[str]:
        return self.problems + self.warnings


@dataclass
class _Candidate:
    """An image to store: the name the user knows it by, and its bytes or the file holding
    them (read only when it is stored: an import of thousands of files never holds them all)."""

    name: str
    data: bytes | None = None
    path: Path | None = None

    def read(self) -> bytes:
        return self.data if self.data is not None else self.path.read_bytes()


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
        with an absolute or ``..`` path, or bigger than :data:`MAX_ZIP_BYTES` unpacked, is
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
        candidates: list[_Candidate] = []
        for path, name in zip(paths, names, strict=True):
            if name.lower().endswith(".zip") or (not _looks_like_image_name(name) and zipfile.is_zipfile(path)):
                candidates += _zip_members(Path(path), name, result)
            else:
                found = _read_upload(Path(path), name, result)
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
                image over :data:`MAX_PIXELS`, or a full project.
        """
        folder = self._class_folder(class_name)
        picture = _as_pil(image)
        if picture.width * picture.height > MAX_PIXELS:
            raise UsageError(f"the {source} image is {picture.width}x{picture.height}; at most "
                             f"{MAX_PIXELS / 1e6:.0f} MP")  # fmt: skip
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
            target = _unique_path(folder, f"{source}-{time.strftime('%Y%m%d-%H%M%S')}.png")
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
                    data_dir: str | os.PathLike[str] | None = None) -> AddResult:  # fmt: skip
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

        Raises:
            UsageError: a source that is neither a folder, a CSV nor a registered name, or a
                ``limit_per_class`` under 1. DataError: a folder or CSV cnnkit cannot list.
        """
        if limit_per_class is not None and limit_per_class < 1:
            raise UsageError(f"limit per class must be at least 1, got {limit_per_class}")
        by_class = _source_images(source, limit_per_class, data_dir)
        result = AddResult()
        for raw_name, items in by_class.items():
            folder = self._import_class(raw_name)
            candidates = []
            for name, data_or_path in items:
                if isinstance(data_or_path, bytes):
                    candidates.append(_Candidate(name, data=data_or_path))
                else:
                    found = _read_upload(Path(data_or_path), name, result)
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
        return sorted((p for p in self.data_dir.iterdir() if p.is_dir() and not _hidden(p.name)), key=lambda p: p.name)

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
        from cnnkit.data.folder import IMAGE_EXTENSIONS

        return [p for p in folder.iterdir() if p.is_file() and not _hidden(p.name)
                and p.suffix.lower() in IMAGE_EXTENSIONS]  # fmt: skip

    def _check_room(self, count: int) -> None:
        have = self.image_count()
        if have + count > MAX_IMAGES:
            raise UsageError(f"the project holds {have:,} images; at most {MAX_IMAGES:,}: delete some first")

    def _store(self, folder: Path, candidates: list[_Candidate], result: AddResult) -> None:
        """Decode each candidate (in a temporary file) and store the good ones in ``folder``."""
        with self._lock(), tempfile.TemporaryDirectory(prefix="cnnkit-studio-") as scratch:
            have = self.image_count()
            digests = {_digest(p.read_bytes()): p.name for p in self._image_files(folder)}
            for item in candidates:
                if have >= MAX_IMAGES:
                    result.rejected.append(Rejected(item.name, f"the project is full ({MAX_IMAGES:,} images)"))
                    continue
                try:
                    data = item.read()
                except OSError as exc:
                    result.rejected.append(Rejected(item.name, f"cannot read the file: {exc.strerror or exc}"))
                    continue
                digest = _digest(data)
                if digest in digests:
                    result.rejected.append(Rejected(item.name, f"a copy of {digests[digest]}, already in "
                                                               f"{folder.name}"))  # fmt: skip
                    continue
                image_format = _verify(item.name, data, Path(scratch), result)
                if image_format is None:
                    continue
                target = _unique_path(folder, _safe_file_name(item.name, image_format))
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


def _safe_file_name(name: str, image_format: str) -> str:
    """A file name of letters, digits, ``.``, ``-`` and ``_`` whose suffix says its real format."""
    stem = _UNSAFE_CHARS.sub("_", PurePosixPath(name.replace("\\", "/")).stem).strip("._-")[:80] or "image"
    suffix = Path(name).suffix.lower()
    real = _FORMAT_SUFFIX.get(image_format, ".img")
    if real == ".jpg" and suffix in (".jpg", ".jpeg") or real == ".tif" and suffix in (".tif", ".tiff"):
        real = suffix
    return f"{stem}{real}"


def _unique_path(folder: Path, name: str) -> Path:
    """``folder/name``, or ``stem-2.ext``, ``stem-3.ext``... when taken (compared case-insensitively)."""
    taken = {p.name.lower() for p in folder.iterdir()}
    stem, suffix = os.path.splitext(name)
    candidate, number = name, 2
    while candidate.lower() in taken:
        candidate, number = f"{stem}-{number}{suffix}", number + 1
    return folder / candidate


def _hidden(name: str) -> bool:
    return name.startswith(".") or name.lower() == "__macosx"


def _looks_like_image_name(name: str) -> bool:
    from cnnkit.data.folder import IMAGE_EXTENSIONS

    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


# ---------------------------------------------------------------------------- reading and checking files


def _read_upload(path: Path, name: str, result: AddResult) -> _Candidate | None:
    """The bytes of one uploaded file, or None (rejected: missing, empty or too large)."""
    try:
        size = path.stat().st_size
    except OSError:
        result.rejected.append(Rejected(name, "file not found"))
        return None
    if size > MAX_FILE_BYTES:
        result.rejected.append(Rejected(name, f"{size / 2**20:.1f} MB; at most {MAX_FILE_BYTES / 2**20:.0f} MB per "
                                              "image"))  # fmt: skip
        return None
    return _Candidate(name, path=path)


def _zip_members(path: Path, name: str, result: AddResult) -> list[_Candidate]:
    """The files inside an uploaded zip (directories, hidden entries, ``__MACOSX/`` skipped).

    A zip that is unreadable, too large, or names a path outside itself (absolute or ``..``)
    is rejected whole: none of its members is returned.
    """
    try:
        if path.stat().st_size > MAX_ZIP_BYTES:
            result.rejected.append(Rejected(name, f"zip larger than {MAX_ZIP_BYTES / 2**20:.0f} MB"))
            return []
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        result.rejected.append(Rejected(name, f"not a readable zip file ({exc})"))
        return []
    with archive:
        infos = archive.infolist()
        unsafe = next((i.filename for i in infos if _unsafe_member(i.filename)), None)
        if unsafe is not None:
            result.rejected.append(Rejected(name, f"refused: it holds {unsafe!r}, a path outside the zip; nothing "
                                                  "from it was stored"))  # fmt: skip
            return []
        members = [i for i in infos if not i.is_dir() and not any(_hidden(part) for part in PurePosixPath(
            i.filename.replace("\\", "/")).parts)]  # fmt: skip
        if sum(i.file_size for i in members) > MAX_ZIP_BYTES:
            result.rejected.append(Rejected(name, f"unpacks to more than {MAX_ZIP_BYTES / 2**20:.0f} MB; nothing from "
                                                  "it was stored"))  # fmt: skip
            return []
        return [c for c in (_zip_member(archive, info, name, result) for info in members) if c is not None]


def _zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, zip_name: str,
                result: AddResult) -> _Candidate | None:  # fmt: skip
    shown = f"{zip_name}/{info.filename}"
    if info.file_size > MAX_FILE_BYTES:
        result.rejected.append(Rejected(shown, f"{info.file_size / 2**20:.1f} MB; at most "
                                               f"{MAX_FILE_BYTES / 2**20:.0f} MB per image"))  # fmt: skip
        return None
    try:
        with archive.open(info) as handle:
            data = handle.read(MAX_FILE_BYTES + 1)  # a member lying about its size cannot fill memory
    except (OSError, zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:  # CRC, encrypted, method
        result.rejected.append(Rejected(shown, f"cannot unpack it ({exc})"))
        return None
    if len(data) > MAX_FILE_BYTES:
        result.rejected.append(Rejected(shown, f"more than {MAX_FILE_BYTES / 2**20:.0f} MB"))
        return None
    return _Candidate(shown, data=data)


def _unsafe_member(filename: str) -> bool:
    """An absolute path, a drive letter or a ``..`` part: a zip entry pointing outside the zip."""
    normal = filename.replace("\\", "/")
    return normal.startswith("/") or re.match(r"^[A-Za-z]:", normal) is not None or ".." in normal.split("/")


def _verify(name: str, data: bytes, scratch: Path, result: AddResult) -> str | None:
    """Decode ``data`` as training will (:func:`load_image`); its PIL format, or None when it
    was rejected (empty, not an image, truncated, corrupt, too many pixels) under ``name``."""
    temp = scratch / f"{uuid.uuid4().hex}{Path(name).suffix.lower()[:8]}"
    temp.write_bytes(data)
    try:
        try:
            with Image.open(temp) as header:  # the header only: a huge image costs no memory
                size, image_format = header.size, header.format
        except Exception:  # empty, not an image: load_image says which
            size, image_format = None, None
        if size is not None and size[0] * size[1] > MAX_PIXELS:
            result.rejected.append(Rejected(name, f"{size[0]}x{size[1]} pixels; at most {MAX_PIXELS / 1e6:.0f} MP: "
                                                  "scale it down first"))  # fmt: skip
            return None
        load_image(temp, "RGB")
    except ImageLoadError as exc:
        result.rejected.append(Rejected(name, exc.reason.rstrip(".")))
        return None
    finally:
        temp.unlink(missing_ok=True)
    return image_format or "PNG"


def _digest(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def _as_pil(image: Any) -> Image.Image:
    if image is None:
        raise UsageError("no image: take a snapshot or draw first")
    if isinstance(image, Image.Image):
        return image
    import numpy as np

    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = (np.clip(array.astype(np.float32), 0, 1) * 255).round().astype(np.uint8) if array.dtype.kind == "f" \
            else np.clip(array, 0, 255).astype(np.uint8)  # fmt: skip
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)) or 0 in array.shape[:2]:
        raise UsageError(f"not an image: an array of shape {tuple(array.shape)} (need [H, W], [H, W, 3] or [H, W, 4])")
    return Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array)


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


def _source_images(source: str | os.PathLike[str], limit: int | None,
                   data_dir: str | os.PathLike[str] | None) -> dict[str, list[tuple[str, bytes | str]]]:  # fmt: skip
    """class name -> [(shown name, PNG bytes or a file path)] of a folder, CSV or registered dataset."""
    from cnnkit.data.datasets import list_datasets

    text = os.fspath(source)
    path = Path(text).expanduser()
    if text in list_datasets() and not path.exists():
        return _registered_images(text, limit, data_dir)
    if path.is_dir():
        from cnnkit.data.folder import scan_folder

        listing = scan_folder(path, val_fraction=0, test_fraction=0, seed=0, strict=False)
    elif path.is_file() and path.suffix.lower() == ".csv":
        from cnnkit.data.folder import read_csv

        listing = read_csv(path, val_fraction=0, test_fraction=0, seed=0)
    else:
        raise UsageError(f"cannot import {text!r}: give a folder with one sub-folder of images per class, a CSV file "
                         f"(path,label) or a registered dataset ({', '.join(list_datasets())})")  # fmt: skip
    out: dict[str, list[tuple[str, bytes | str]]] = {}
    for files in listing.splits.values():
        for file_path, label in zip(files.paths, files.labels, strict=True):
            items = out.setdefault(listing.class_names[label], [])
            if limit is None or len(items) < limit:
                items.append((os.path.relpath(file_path, listing.root), file_path))
    if not out:
        raise DataError(f"no images found in {path}")
    return out


def _registered_images(name: str, limit: int | None, data_dir: str | os.PathLike[str] | None,
                       ) -> dict[str, list[tuple[str, bytes | str]]]:  # fmt: skip
    """A registered dataset's training images: files as they are, in-memory images as PNG bytes."""
    from cnnkit.data.datasets import TensorSource, load_source

    source = load_source(name, data_dir, download=False)
    if not isinstance(source, TensorSource):  # a file dataset: its image files
        out: dict[str, list[tuple[str, bytes | str]]] = {}
        train = source.splits["train"]
        for file_path, label in zip(train.paths, train.labels, strict=True):
            items = out.setdefault(source.class_names[label], [])
            if limit is None or len(items) < limit:
                items.append((os.path.basename(file_path), file_path))
        return out
    images, labels = source.train
    return {source.class_names[label]: list(_png_items(name, images, labels, label, limit))
            for label in sorted(set(labels.tolist()))}  # fmt: skip


def _png_items(name: str, images: Any, labels: Any, label: int, limit: int | None) -> Iterator[tuple[str, bytes]]:
    indices: Iterable[int] = (labels == label).nonzero().flatten().tolist()
    for count, index in enumerate(indices):
        if limit is not None and count >= limit:
            return
        array = images[index].permute(1, 2, 0).numpy()  # [H, W, C] uint8
        picture = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        yield f"{name}-{index:05d}.png", buffer.getvalue()

"""The files a user hands the studio: reading, checking and naming them before they are stored.

This module owns what happens to an upload before it reaches ``data/``: the size limits
(:data:`MAX_FILE_BYTES`, :data:`MAX_ZIP_BYTES`, :data:`MAX_PIXELS`), unpacking a zip in
memory (directories, hidden entries and ``__MACOSX/`` skipped; a path outside the zip refuses
it whole), decoding each image with cnnkit's own loader (:func:`cnnkit.data.folder.load_image`,
as training will), the safe unique file names, and the images of an import source (a
folder, a CSV or a registered dataset). Storing them is :class:`cnnkit.studio.project.Project`'s job.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import uuid
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from cnnkit.data.folder import IMAGE_EXTENSIONS, ImageLoadError, load_image
from cnnkit.errors import DataError, UsageError

MAX_FILE_BYTES = 20 * 2**20  # one image file (or one image inside a zip)
MAX_ZIP_BYTES = 512 * 2**20  # one uploaded zip, and the sum of its members once unpacked
MAX_PIXELS = 40_000_000  # as `cnnkit serve`: a 12 MP photo is 12,000,000

_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_FORMAT_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "BMP": ".bmp", "WEBP": ".webp", "TIFF": ".tif",
                  "PPM": ".ppm"}  # fmt: skip


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
class Candidate:
    """An image to store: the name the user knows it by, and its bytes or the file holding
    them (read only when it is stored: an import of thousands of files never holds them all)."""

    name: str
    data: bytes | None = None
    path: Path | None = None

    def read(self) -> bytes:
        return self.data if self.data is not None else self.path.read_bytes()


# ---------------------------------------------------------------------------- names


def safe_file_name(name: str, image_format: str) -> str:
    """A file name of letters, digits, ``.``, ``-`` and ``_`` whose suffix says its real format."""
    stem = _UNSAFE_CHARS.sub("_", PurePosixPath(name.replace("\\", "/")).stem).strip("._-")[:80] or "image"
    suffix = Path(name).suffix.lower()
    real = _FORMAT_SUFFIX.get(image_format, ".img")
    if real == ".jpg" and suffix in (".jpg", ".jpeg") or real == ".tif" and suffix in (".tif", ".tiff"):
        real = suffix
    return f"{stem}{real}"


def unique_path(folder: Path, name: str) -> Path:
    """``folder/name``, or ``stem-2.ext``, ``stem-3.ext``... when taken (compared case-insensitively)."""
    taken = {p.name.lower() for p in folder.iterdir()}
    stem, suffix = os.path.splitext(name)
    candidate, number = name, 2
    while candidate.lower() in taken:
        candidate, number = f"{stem}-{number}{suffix}", number + 1
    return folder / candidate


def hidden(name: str) -> bool:
    """A name training never reads: a dot file or folder, or macOS's ``__MACOSX``."""
    return name.startswith(".") or name.lower() == "__macosx"


def looks_like_image(name: str) -> bool:
    """A name with an image suffix (``.jpg``, ``.png``...)."""
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


# ---------------------------------------------------------------------------- reading and checking files


def read_upload(path: Path, name: str, result: AddResult) -> Candidate | None:
    """One uploaded file as a :class:`Candidate` (its bytes read when it is stored), or None:
    rejected in ``result`` because it is missing or larger than :data:`MAX_FILE_BYTES`."""
    try:
        size = path.stat().st_size
    except OSError:
        result.rejected.append(Rejected(name, "file not found"))
        return None
    if size > MAX_FILE_BYTES:
        result.rejected.append(Rejected(name, f"{size / 2**20:.1f} MB; at most {MAX_FILE_BYTES / 2**20:.0f} MB per "
                                              "image"))  # fmt: skip
        return None
    return Candidate(name, path=path)


def zip_members(path: Path, name: str, result: AddResult) -> list[Candidate]:
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
        members = [i for i in infos if not i.is_dir() and not any(hidden(part) for part in PurePosixPath(
            i.filename.replace("\\", "/")).parts)]  # fmt: skip
        if sum(i.file_size for i in members) > MAX_ZIP_BYTES:
            result.rejected.append(Rejected(name, f"unpacks to more than {MAX_ZIP_BYTES / 2**20:.0f} MB; nothing from "
                                                  "it was stored"))  # fmt: skip
            return []
        return [c for c in (_zip_member(archive, info, name, result) for info in members) if c is not None]


def _zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, zip_name: str,
                result: AddResult) -> Candidate | None:  # fmt: skip
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
    return Candidate(shown, data=data)


def _unsafe_member(filename: str) -> bool:
    """An absolute path, a drive letter or a ``..`` part: a zip entry pointing outside the zip."""
    normal = filename.replace("\\", "/")
    return normal.startswith("/") or re.match(r"^[A-Za-z]:", normal) is not None or ".." in normal.split("/")


def verify(name: str, data: bytes, scratch: Path, result: AddResult) -> str | None:
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


def digest(data: bytes) -> str:
    """The SHA-1 of ``data``: identical files, whatever their names."""
    return hashlib.sha1(data).hexdigest()


def as_pil(image: Any) -> Image.Image:
    """A PIL image, or a uint8 (or [0, 1] float) array ``[H, W]``, ``[H, W, 1|3|4]``, as a PIL image.

    Raises:
        UsageError: None (nothing taken or drawn) or an array of another shape.
    """
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


# ---------------------------------------------------------------------------- import sources


def inside(path: str | os.PathLike[str], roots: Iterable[Path]) -> bool:
    """``path``, its symbolic links and ``..`` resolved, is one of ``roots`` (resolved
    folders) or lies under one. Whether the file exists makes no difference."""
    resolved = Path(os.path.realpath(path))
    return any(resolved.is_relative_to(root) for root in roots)


def import_refused(text: str, roots: tuple[Path, ...], registered: list[str]) -> str:
    """The one message for an import source outside ``roots`` (the same whether it exists or not)."""
    names = ", ".join(registered)
    if not roots:
        return (f"cannot import {text!r}: this studio is open to the network, so it imports no folder of the server; "
                f"give a registered dataset ({names}) or upload the images (a .zip); whoever runs the studio can allow "
                "a folder with --allow-import DIR")  # fmt: skip
    return (f"cannot import {text!r}: this studio imports folders and CSV files only under "
            f"{', '.join(str(r) for r in roots)} (--allow-import), or a registered dataset ({names})")  # fmt: skip


def source_images(source: str | os.PathLike[str], limit: int | None, data_dir: str | os.PathLike[str] | None,
                  roots: tuple[Path, ...] | None = None,
                  result: AddResult | None = None) -> dict[str, list[tuple[str, bytes | str]]]:  # fmt: skip
    """class name -> [(shown name, PNG bytes or a file path)] of a folder, CSV or registered dataset.

    ``roots`` (resolved folders; None: anywhere): a folder or CSV must lie under one of them,
    else :class:`UsageError` before anything is read, and each file it lists too, else that
    file is left out, rejected in ``result``. A registered dataset's name is always taken.
    """
    from cnnkit.data.datasets import list_datasets

    text = os.fspath(source)
    path = Path(text).expanduser()
    registered = list_datasets()
    if text in registered and (roots is not None or not path.exists()):
        return _registered_images(text, limit, data_dir)
    if roots is not None and not inside(path, roots):
        raise UsageError(import_refused(text, roots, registered))
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
            shown = os.path.relpath(file_path, listing.root)
            if roots is not None and not inside(file_path, roots):  # a CSV row or a link pointing elsewhere
                if result is not None:
                    result.rejected.append(Rejected(shown, "outside the folders this studio may import"))
                continue
            items = out.setdefault(listing.class_names[label], [])
            if limit is None or len(items) < limit:
                items.append((shown, file_path))
    if not out and not (result is not None and result.rejected):  # all rejected: the result says why
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

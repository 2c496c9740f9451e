"""Examining image files one at a time: what :func:`examine_file` finds, and a pool for many.

This module owns :class:`FileFacts` (a worker's plain, picklable result: size, problem and
reason, PIL format and mode, size in pixels, byte digest, perceptual hash),
:func:`examine_file` (which never raises for a bad file), :func:`examine_files` (the same
for many paths, in worker processes, with a progress bar) and ``_Row``, one listed file
with its split, class and facts, which the analysis modules work on.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import partial
from typing import Any

from PIL import Image

from cnnkit.data.folder import (
    ImageLoadError,
    _strict_truncation,
    decode_error,
    refuse_bomb,
    to_mode,
)
from cnnkit.errors import DataError

_HASH_SIDE = 32  # imagehash.phash looks at a 32x32 greyscale image; decode at least 2x that


@dataclass
class FileFacts:
    """What examining one file found (a worker's result; plain values, cheap to pickle).

    Attributes:
        path: the file.
        size: bytes on disk.
        problem: None when readable, else a :data:`~cnnkit.data.folder.LOAD_ERROR_KINDS`.
        reason: why it is unreadable (None when readable).
        format: PIL format name, e.g. ``JPEG``.
        mode: PIL mode as stored, e.g. ``RGB``, ``L``, ``P``, ``I;16``, ``CMYK``.
        width: pixels.
        height: pixels.
        digest: blake2b of the bytes, for exact duplicates.
        phash: 16 hex digits of ``imagehash.phash`` (full checks only).
    """

    path: str
    size: int = 0
    problem: str | None = None
    reason: str | None = None
    format: str | None = None
    mode: str | None = None
    width: int = 0
    height: int = 0
    digest: str | None = None
    phash: str | None = None


def examine_file(path: str, decode: bool = True) -> FileFacts:
    """Examine one image file; never raises for a bad file (the facts say what is wrong).

    Args:
        path: the file.
        decode: True decodes the pixels and computes the perceptual hash; False stops
            after the header, PIL's ``verify()`` and the byte hash.
    """
    facts = FileFacts(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
        facts.size = len(data)
        if not data:
            raise ImageLoadError(path, "zero bytes", "zero-bytes")
        facts.digest = hashlib.blake2b(data, digest_size=16).hexdigest()
        with _strict_truncation(), Image.open(io.BytesIO(data)) as image:
            facts.format, facts.mode = image.format, image.mode
            facts.width, facts.height = image.size
            refuse_bomb(path, image)
            if decode:
                facts.phash = _look_hash(image)
            else:
                image.verify()
    except ImageLoadError as error:
        facts.problem, facts.reason = error.kind, error.reason
    except Exception as error:  # every decoder failure is a fact about the file, not a crash
        bad = decode_error(path, error)
        facts.problem, facts.reason = bad.kind, bad.reason
    return facts


def _look_hash(image: Image.Image) -> str:
    """Decode ``image`` (JPEG at a reduced scale) and return its perceptual hash in hex.

    The decode goes through :func:`~cnnkit.data.folder.to_mode`, the conversion training
    uses, so a mode that breaks it is found here too.
    """
    import imagehash

    image.draft("RGB", (2 * _HASH_SIDE, 2 * _HASH_SIDE))  # JPEG only: DCT scaling, all data read
    image.load()
    return str(imagehash.phash(to_mode(image, "L")))


def examine_files(
    paths: Sequence[str], *, decode: bool, workers: int | None = None, progress: bool = False
) -> list[FileFacts]:
    """:func:`examine_file` for each path, in order, in a pool of processes.

    Raises:
        DataError: a worker process died (out of memory, or a crash inside a decoder).
    """
    from tqdm.auto import tqdm

    job = partial(examine_file, decode=decode)
    count = _worker_count(workers, len(paths))
    bar = tqdm(
        total=len(paths),
        desc="checking",
        unit="img",
        leave=False,
        dynamic_ncols=True,
        file=sys.stderr,
        disable=None if progress else True,
    )
    try:
        if count == 0:
            return [_tick(bar, job(path)) for path in paths]
        chunk = max(1, min(64, len(paths) // (count * 8)))
        try:
            with ProcessPoolExecutor(count) as pool:
                return [_tick(bar, facts) for facts in pool.map(job, paths, chunksize=chunk)]
        except BrokenProcessPool:
            raise DataError(
                "a checking process died (out of memory, or a crash inside an image decoder); "
                "run again with --workers 0 to see which file stops it"
            ) from None
    finally:
        bar.close()


def _tick(bar: Any, facts: FileFacts) -> FileFacts:
    bar.update()
    return facts


def _worker_count(workers: int | None, files: int) -> int:
    """Processes to use: starting a pool costs more than examining a few hundred files."""
    if workers is not None:
        return workers
    if files < 500:
        return 0
    return min(os.cpu_count() or 1, 8)


@dataclass
class _Row:
    """One listed file: where it sits and what examining it found."""

    path: str  # relative to the report's root
    split: str
    label: str
    facts: FileFacts

    @property
    def ok(self) -> bool:
        return self.facts.problem is None

    def where(self) -> dict[str, str]:
        return {"path": self.path, "split": self.split, "class": self.label}

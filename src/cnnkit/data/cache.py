"""Decode-once cache for folder datasets: decoded, resized uint8 images in a memory-mapped file.

Decoding a JPEG costs far more than everything else a small model does with it, and the
per-sample path decodes every image again every epoch. :class:`CachedFileLoader` decodes
each image once, during the first pass over the data (in worker processes, in the order
that epoch uses, while training goes on), at the evaluation preprocessing (resize of the
short side, centre crop, ``Preprocess.input_size``) and stores it as uint8 in one file::

    cache_dir()/decoded-files/<key>/images.u8    uint8 [N, C, H, W], memory-mapped
    cache_dir()/decoded-files/<key>/meta.json    shape, files that could not be decoded

``key`` hashes the file list (path, size, modification time of each file), the labels and
the preprocessing, so a changed dataset or size is decoded again. Later epochs, and later
runs, read the memory-mapped file: the page cache keeps it in RAM when it fits. Random
augmentation then runs a batch at a time on the cached uint8 images, exactly as for
in-memory datasets (:class:`~cnnkit.data.tensor_data.TensorLoader`); geometric
augmentation therefore acts on the resized crop, not on the full decoded photo.

Writing is crash-safe: the file is filled in a temporary folder and renamed into place
only once every image is in it (after an fsync); a run killed halfway leaves a temporary
folder that is never read (and is removed by the next run), never a half-written cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cnnkit.config import SWITCH_MODES as CACHE_MODES
from cnnkit.data.datasets import cache_dir
from cnnkit.data.folder import ImageLoadError, load_image
from cnnkit.data.folder.skipped import SkipLog, report_skip
from cnnkit.data.spec import Batch, Preprocess
from cnnkit.data.tensor_data import Batching, TensorLoader
from cnnkit.data.transforms import Augment, flip_base, resize_crop_transform
from cnnkit.errors import unknown_name

FORMAT_VERSION = 1
# ``auto`` caches a split when its decoded images take at most this much disk...
AUTO_MAX_BYTES = 8 * 2**30
# ...and at most this fraction of the free space of the cache's disk.
AUTO_MAX_DISK_FRACTION = 0.5


def check_mode(mode: str) -> str:
    """``mode`` itself, or a UsageError listing the valid modes."""
    if mode not in CACHE_MODES:
        raise unknown_name("--decode-cache mode", mode, CACHE_MODES)
    return mode


def cache_bytes(count: int, pre: Preprocess) -> int:
    """Bytes of ``count`` decoded images at ``pre``'s input size."""
    return count * pre.channels * pre.input_size[0] * pre.input_size[1]


def use_cache(mode: str, count: int, pre: Preprocess, augment: Augment | None) -> tuple[bool, str]:
    """Whether to cache a split of ``count`` images, and why not (a note for the log).

    ``auto`` caches when the images fit (:data:`AUTO_MAX_BYTES`, half the free disk) and
    the augmentation has no rotation/zoom/fractional shift: those act on the full decoded
    photo in the per-sample path (as the seed tutorials do), on the crop with the cache.
    """
    check_mode(mode)
    if mode != "auto":
        return mode == "on", ""
    if augment is not None and augment.has_affine:
        return False, ("decode cache off: rotation/zoom augment the full photo per sample; "
                       "--decode-cache on caches the resized crops and augments those")  # fmt: skip
    size = cache_bytes(count, pre)
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if size > min(AUTO_MAX_BYTES, AUTO_MAX_DISK_FRACTION * free):
        return False, (f"decode cache off: {size / 2**30:.1f} GiB of decoded images would not fit "
                       f"({free / 2**30:.1f} GiB free); --decode-cache on forces it")  # fmt: skip
    return True, ""


def cache_key(paths: Sequence[str], labels: Sequence[int], pre: Preprocess, mode: str) -> str:
    """16 hex characters naming the decoded images of these files at this preprocessing."""
    digest = hashlib.sha1()
    digest.update(json.dumps([FORMAT_VERSION, mode, list(pre.input_size), pre.resize, pre.interpolation]).encode())
    for path, label in zip(paths, labels, strict=True):
        digest.update(f"\n{path}\t{file_stamp(path)}\t{label}".encode())
    return digest.hexdigest()[:16]


def file_stamp(path: str | os.PathLike[str]) -> str:
    """``size:mtime_ns`` of a file (``missing`` if it cannot be read): what a cache key holds
    of each file, so an edited or replaced image is decoded again."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


@dataclass
class DecodedImages:
    """A finished cache: the images (memory-mapped) and the rows that could not be decoded."""

    images: torch.Tensor  # uint8 [N, C, H, W]; rows of bad files are zero
    bad: dict[int, str]  # row -> reason


def open_cache(folder: Path, count: int, pre: Preprocess) -> DecodedImages | None:
    """The cache in ``folder`` if it is complete and has the expected size, else None."""
    meta_path, data_path = folder / "meta.json", folder / "images.u8"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None
    shape = (count, pre.channels, *pre.input_size)
    if meta.get("version") != FORMAT_VERSION or tuple(meta.get("shape", ())) != shape:
        return None
    if not data_path.is_file() or data_path.stat().st_size != int(np.prod(shape)):
        return None
    # Copy-on-write mapping: torch wants a writable array; nothing is ever written back.
    array = np.memmap(data_path, dtype=np.uint8, mode="c", shape=shape)
    return DecodedImages(torch.from_numpy(array), {int(k): v for k, v in meta.get("bad", {}).items()})


class _Decode(Dataset):
    """``dataset[i]`` -> ``(i, uint8 [C, H, W] or None, reason, kind)``: decoded, resized, centre-cropped."""

    def __init__(self, paths: Sequence[str], pre: Preprocess, mode: str) -> None:
        self.paths, self.mode = list(paths), mode
        self.resize_crop = resize_crop_transform(pre)
        self.shape = (pre.input_size[0], pre.input_size[1], pre.channels)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str, str]:
        try:
            image = load_image(self.paths[index], self.mode)
        except ImageLoadError as error:
            return index, None, error.reason, error.kind
        array = np.array(self.resize_crop(image), dtype=np.uint8).reshape(self.shape)  # [H, W, C], a writable copy
        return index, torch.from_numpy(array).permute(2, 0, 1).contiguous(), "", ""  # [C, H, W]


def _as_list(batch: list) -> list:
    return batch


def decode_image(path: str, pre: Preprocess, mode: str) -> torch.Tensor:
    """One file decoded as the cache stores it: uint8 ``[C, H, W]`` at ``pre.input_size``.

    Raises:
        ImageLoadError: the file cannot be decoded.
    """
    _, image, reason, kind = _Decode([path], pre, mode)[0]
    if image is None:
        raise ImageLoadError(path, reason, kind)
    return image


class CachedFileLoader(TensorLoader):
    """Batches from image files, decoded once into a memory-mapped uint8 cache.

    The first pass (whichever epoch it is) decodes in ``workers`` processes, in that
    epoch's order, writes each image into the cache and trains on it at once; the cache is
    committed when the pass ends. Every later pass is a :class:`TensorLoader` over the
    memory-mapped images (batched augmentation, fused normalisation). Files that cannot
    be decoded are skipped (and left out of later epochs): recorded in ``skip_log`` when it
    is set (a training run's, see :func:`~cnnkit.data.folder.skipped.skipped_files_log`),
    else with a warning.

    Args:
        paths: image files.
        labels: class index of each file.
        preprocess: size, resize, interpolation and normalisation.
        mode: ``"L"`` or ``"RGB"``.
        batching: batch size, shuffling, dropping the last batch, seed (order and augmentation).
        augment: batched augmentation (None: none).
        workers: decoding processes for the first pass.
    """

    def __init__(
        self,
        paths: Sequence[str],
        labels: Sequence[int],
        preprocess: Preprocess,
        mode: str,
        batching: Batching,
        *,
        augment: Augment | None = None,
        workers: int = 0,
    ) -> None:
        self.paths, self.mode, self.workers = list(paths), mode, workers
        self.folder = cache_dir() / "decoded-files" / cache_key(self.paths, labels, preprocess, mode)
        self.bad_files: dict[str, str] = {}
        self.skip_log: SkipLog | None = None  # the main process records: workers only decode
        self._all_labels = torch.as_tensor(list(labels), dtype=torch.long)
        placeholder = torch.zeros(0, preprocess.channels, *preprocess.input_size, dtype=torch.uint8)
        super().__init__(placeholder, self._all_labels, preprocess, batching, augment=augment)
        self.cached: DecodedImages | None = None
        self._adopt(open_cache(self.folder, len(self.paths), preprocess))

    @property
    def from_cache(self) -> bool:
        """Whether batches come from the finished cache (no decoding)."""
        return self.cached is not None

    def _adopt(self, cached: DecodedImages | None) -> None:
        """Serve later epochs from a finished cache, leaving out the rows that failed."""
        if cached is None:
            self.images = None  # type: ignore[assignment]  (nothing to sample before the first pass)
            return
        self.cached = cached
        self.bad_files = {self.paths[row]: reason for row, reason in cached.bad.items()}
        good = torch.ones(len(self.paths), dtype=torch.bool)
        good[list(cached.bad)] = False
        self._rows = good.nonzero().squeeze(1)  # cache row of each usable image
        self.images = cached.images if not cached.bad else _RowView(cached.images, self._rows)  # type: ignore[assignment]
        self.labels = self._all_labels[self._rows]
        self.drop_last = self.drop_last and len(self.labels) > self.batch_size
        if self.sample_weights is not None:  # balanced sampling over the usable images
            self.balance_classes()
        if self.augment is not None and self.augment.flip == "alternate":
            self._flip_base = flip_base(len(self.labels), self.seed, self.augment.flip_p)

    def __iter__(self) -> Iterator[Batch]:
        if self.cached is not None:
            yield from super().__iter__()
        else:
            yield from self._decoding_pass()

    def _decoding_pass(self) -> Iterator[Batch]:
        """Decode every file (in this epoch's order), train on the batches, commit the cache."""
        epoch, order = self._next_order()
        count, pre = len(self.paths), self.preprocess
        self._remove_stale_temporaries()
        tmp = self.folder.with_name(f"{self.folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        tmp.mkdir(parents=True)
        committed = False
        try:
            shape = (count, pre.channels, *pre.input_size)
            array = np.memmap(tmp / "images.u8", dtype=np.uint8, mode="w+", shape=shape)
            images = torch.from_numpy(array)  # uint8 [N, C, H, W], written row by row
            done = torch.zeros(count, dtype=torch.bool)
            bad: dict[int, str] = {}
            augmenter = self._augmenter(epoch, len(self.labels))
            trained = len(self) * self.batch_size  # positions after this are decoded, not trained on
            for start, rows in self._decode(order.tolist(), images, done, bad):
                if rows and start < trained:
                    index = torch.as_tensor(rows)
                    yield self._batch(images[index], index, start, augmenter)
            # Rows the order never reached (balanced sampling draws with replacement).
            for _ in self._decode((~done).nonzero().squeeze(1).tolist(), images, done, bad):
                pass
            array.flush()
            committed = self._commit(tmp, shape, bad)
        finally:
            if not committed:
                shutil.rmtree(tmp, ignore_errors=True)
        self._adopt(open_cache(self.folder, count, pre))

    def _decode(self, rows: list[int], images: torch.Tensor, done: torch.Tensor,
                bad: dict[int, str]) -> Iterator[tuple[int, list[int]]]:  # fmt: skip
        """Decode ``rows`` in batches (in worker processes) into ``images``; yields each
        batch's first position in ``rows`` and the rows that decoded."""
        if not rows:
            return
        loader = DataLoader(_Decode(self.paths, self.preprocess, self.mode), batch_size=self.batch_size,
                            sampler=rows, num_workers=self.workers, collate_fn=_as_list)  # fmt: skip
        position = 0
        for samples in loader:
            good = []
            for row, image, reason, kind in samples:
                done[row] = True
                if image is None:
                    bad[row] = reason
                    self._skip(self.paths[row], reason, kind)
                else:
                    images[row] = image
                    good.append(row)
            yield position, good
            position += len(samples)

    def _commit(self, tmp: Path, shape: tuple[int, ...], bad: dict[int, str]) -> bool:
        """Move the filled cache into place: fsync the data, write and fsync the meta, rename."""
        fd = os.open(tmp / "images.u8", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        meta = {"version": FORMAT_VERSION, "shape": list(shape), "bad": {str(k): v for k, v in bad.items()},
                "files": len(self.paths)}  # fmt: skip
        with open(tmp / "meta.json", "w", encoding="utf-8") as handle:
            json.dump(meta, handle)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.replace(tmp, self.folder)
        except OSError:  # another run finished the same cache first; its copy is as good
            return False
        return True

    def _remove_stale_temporaries(self) -> None:
        """Delete temporary folders of this cache left by processes that no longer run."""
        for tmp in self.folder.parent.glob(f"{self.folder.name}.tmp-*"):
            try:
                pid = int(tmp.name.split(".tmp-")[1].split("-")[0])
                os.kill(pid, 0)  # raises if no such process
            except (ValueError, IndexError, ProcessLookupError):
                shutil.rmtree(tmp, ignore_errors=True)
            except PermissionError:  # a live process of another user
                continue

    def _skip(self, path: str, reason: str, kind: str) -> None:
        if path not in self.bad_files:
            self.bad_files[path] = reason
            report_skip(self.skip_log, path, reason, kind, stacklevel=3)


class _RowView:
    """``images[index]`` through a row map: the usable rows of a cache with bad files, without copying it."""

    def __init__(self, images: torch.Tensor, rows: torch.Tensor) -> None:
        self.images, self.rows = images, rows
        self.shape, self.dtype, self.device = (len(rows), *images.shape[1:]), images.dtype, images.device

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        return self.images[self.rows[index]]

    def __len__(self) -> int:
        return len(self.rows)

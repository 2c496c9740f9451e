"""Prediction from a checkpoint or an exported ONNX file, with the preprocessing it carries.

:class:`Predictor` turns images of any common kind (file paths, PIL images, NumPy arrays,
tensors) into ranked class names. The network runs in one of the backends of
:mod:`cnnkit.inference.backends`: PyTorch (from a cnnkit checkpoint), ONNX Runtime or
OpenVINO (from a file written by ``cnnkit export``, which carries the class names and
preprocessing as metadata; a checkpoint runs through such a file when that is faster,
see :mod:`cnnkit.inference.runtime`). Files are decoded in parallel threads
and streamed through in batches by :meth:`Predictor.predict_files`, so memory
stays flat however many files there are.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from cnnkit.checkpoint import Checkpoint
from cnnkit.confidence import OpenSet, calibrated, deployed
from cnnkit.data.folder import ImageLoadError, load_image, to_mode, walk_files
from cnnkit.data.spec import Preprocess
from cnnkit.data.transforms import eval_pixels, normalize_batch
from cnnkit.errors import CnnkitError, UsageError
from cnnkit.inference.backends import OnnxBackend, OpenVinoBackend, TorchBackend, onnx_session, openvino_model
from cnnkit.inference.metadata import Metadata, checkpoint_metadata
from cnnkit.models import create_model, require_model_code
from cnnkit.scoring import ScoringSettings, score
from cnnkit.tta import check_tta, suggested_tta, tta_views

UNKNOWN = "unknown"
MAX_PIXELS = 64_000_000  # arrays and tensors bigger than this are refused (like PIL's bomb check)

ImageLike = Any  # str | os.PathLike | PIL.Image.Image | np.ndarray | torch.Tensor


@dataclass
class Prediction:
    """One image's result.

    Attributes:
        source: the file path, or ``image[i]`` for in-memory images.
        label: top-1 class name, or ``"unknown"`` when its probability is under the threshold
            or (asked with ``reject``) it does not look like any known class.
        confidence: top-1 probability (calibrated: see :meth:`Predictor.rank`).
        topk: ``(class name, probability)`` pairs, most probable first.
        index: top-1 class index.
        known_score: how much the image looks like the training data (higher: more), for a
            model with an open set (:mod:`cnnkit.confidence`); None without one.
        looks_known: the score reaches the model's threshold; None without an open set.
    """

    source: str
    label: str
    confidence: float
    topk: list[tuple[str, float]]
    index: int
    known_score: float | None = None
    looks_known: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {
            "file": self.source,
            "label": self.label,
            "confidence": round(self.confidence, 6),
            "topk": [{"label": name, "prob": round(prob, 6)} for name, prob in self.topk],
        }
        if self.known_score is not None:
            out.update(known_score=round(self.known_score, 6), looks_known=self.looks_known)
        return out


@dataclass
class Skipped:
    """A file that could not be used, and why."""

    source: str
    reason: str


def model_from_checkpoint(ckpt: Checkpoint, trust_code: Any = None) -> nn.Module:
    """The model a checkpoint describes, with its weights, in eval mode on the CPU.

    A model from your own code (``FILE.py:NAME``, ``module:NAME``, or registered by your
    module) is built only if that code is already imported in this process or trusted:
    ``trust_code`` (files/modules, or ``True``), ``cnnkit.trust_code(...)`` blocks or
    ``$CNNKIT_TRUST_CODE``. Nothing named inside the checkpoint is imported otherwise.

    Raises:
        UsageError: untrusted user code (the message says what to pass).
        CnnkitError: a checkpoint without a model description.
    """
    desc = ckpt.model
    if desc is None:
        raise CnnkitError(f"{ckpt.path or 'the checkpoint'} holds weights only, no model description to rebuild "
                          "the network from (cnnkit.fit records one only for a cnnkit.create_model model with default "
                          "options on images of known preprocessing); build your model and load "
                          "Checkpoint.load(path).state_dict into it")  # fmt: skip
    require_model_code(desc.to_dict(), trust_code)
    model = create_model(desc.name, num_classes=desc.num_classes, in_chans=desc.in_chans,
                         input_size=tuple(desc.input_size) if desc.input_size else None, **desc.kwargs)  # fmt: skip
    model.load_state_dict(ckpt.state_dict)
    return model.eval()


# ----------------------------------------------------------------------------- images


def to_pil(image: ImageLike, mode: str) -> Image.Image:
    """Any supported image kind as an 8-bit PIL image of ``mode`` (``L`` or ``RGB``).

    Paths are decoded with :func:`cnnkit.data.folder.load_image` (EXIF orientation,
    transparency over white, 16-bit scaling). Arrays and tensors are ``[H, W]``,
    ``[H, W, C]`` (NumPy) or ``[C, H, W]`` (torch) with 1, 3 or 4 channels, either uint8
    or floats in [0, 1] (rounded to 8 bits, as an image file would be).

    Raises:
        ImageLoadError: an unreadable file.
        UsageError: an unsupported type, shape or value range.
    """
    if isinstance(image, (str, os.PathLike)):
        return load_image(image, mode)
    if isinstance(image, Image.Image):
        try:
            image.load()
            return to_mode(image, mode)
        except Exception as exc:  # a lazily opened, broken image
            raise UsageError(f"cannot use this PIL image: {exc}") from None
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu()
        if array.dim() == 3:
            array = array.permute(1, 2, 0)  # [C, H, W] -> [H, W, C]
        if array.is_floating_point() and array.dtype not in (torch.float16, torch.float32, torch.float64):
            array = array.float()  # bfloat16 and float8 have no NumPy twin
        try:
            values = array.numpy()
        except TypeError:  # complex32 and other dtypes NumPy cannot hold
            raise UsageError(f"image tensors must be uint8 or floats in [0, 1]; got {image.dtype}") from None
        return _array_to_pil(values, mode)
    if isinstance(image, np.ndarray):
        return _array_to_pil(image, mode)
    raise UsageError(
        f"cannot predict on a {type(image).__name__}; give file paths, PIL images, "
        "NumPy arrays or torch tensors"
    )


def _array_to_pil(array: np.ndarray, mode: str) -> Image.Image:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise UsageError(
            f"an image array must be [H, W], [H, W, C] (NumPy) or [C, H, W] (torch) with C in 1, 3, 4; "
            f"got shape {tuple(array.shape)}"
        )
    if array.size == 0 or array.shape[0] * array.shape[1] > MAX_PIXELS:
        raise UsageError(f"an image of shape {tuple(array.shape)} is empty or too large")
    if array.dtype != np.uint8:
        if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.bool_)):
            raise UsageError(f"image arrays must be uint8 or floats in [0, 1]; got {array.dtype}")
        # checked before the cast: float64 values beyond float32's range would overflow (and warn)
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise UsageError("float image arrays must hold finite values in [0, 1]")
        array = np.rint(array.astype(np.float32) * 255).astype(np.uint8)
    return to_mode(Image.fromarray(np.ascontiguousarray(array)), mode)


class ImageFiles(torch.utils.data.Dataset):
    """File ``i`` -> ``(i, uint8 tensor [C, H, W] or None, reason)``; never raises on a bad file.

    ``transform`` gives the resized, cropped pixels (:func:`~cnnkit.data.transforms.eval_pixels`):
    the batch is normalised in one step after collating (:func:`normalize_batch`).
    """

    def __init__(self, paths: Sequence[str], transform: Callable[[Image.Image], torch.Tensor], mode: str) -> None:
        self.paths = paths
        self.transform = transform
        self.mode = mode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            return index, self.transform(load_image(self.paths[index], self.mode)), ""
        except ImageLoadError as exc:
            return index, None, exc.reason
        except Exception as exc:  # a decoder bug in one file must not end a 100,000-file run
            return index, None, f"cannot decode: {exc.__class__.__name__}: {exc}"


Sample = tuple[int, torch.Tensor | None, str]  # (index, uint8 pixels or None when unreadable, reason)
Batch = tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]  # (indices of good files, their pixels, bad ones)


def _collate(samples: list[Sample]) -> Batch:
    good = [(index, tensor) for index, tensor, _ in samples if tensor is not None]
    bad = [(index, reason) for index, tensor, reason in samples if tensor is None]
    images = torch.stack([tensor for _, tensor in good]) if good else None
    return [index for index, _ in good], images, bad


def decoded_batches(dataset: torch.utils.data.Dataset, batch_size: int, workers: int) -> Iterator[Batch]:
    """The samples of an :class:`ImageFiles`, in order, ``batch_size`` at a time through :func:`_collate`.

    Each batch is decoded by ``workers`` threads at once (0: in this thread) and handed out
    whole before the next one starts, so decoding never runs beside the caller's model: a
    runtime that splits each op over all cores (ONNX Runtime, PyTorch) waits at every op
    for its slowest thread, and a decoding thread on one of the cores made the network take
    1.3-1.5x as long, more than the decoding it hid (``bench/predict_throughput.py``).
    """
    count = len(dataset)  # type: ignore[arg-type]
    starts = range(0, count, batch_size)
    if workers == 0:
        for start in starts:
            yield _collate([dataset[index] for index in range(start, min(start + batch_size, count))])
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="cnnkit-decode") as pool:
        for start in starts:
            yield _collate(list(pool.map(dataset.__getitem__, range(start, min(start + batch_size, count)))))


# ----------------------------------------------------------------------------- predictor


class Predictor:
    """Class names from images, with the preprocessing the model was trained with.

    Build one with :meth:`from_checkpoint` (PyTorch) or :meth:`from_onnx` (ONNX Runtime).

    Args:
        backend: callable, normalised float ``[B, C, H, W]`` -> logits ``[B, K]`` (one of
            :mod:`cnnkit.inference.backends`).
        metadata: class names, preprocessing and training augmentation.
        model: the PyTorch module, when there is one (Grad-CAM needs it).
        settings: how :meth:`logits` scores (None: the backend's ``settings``, else float32
            on the CPU); the test-time views are chosen per call (:meth:`resolve_tta`).

    A model with an open set (``metadata.open_set``) runs as one graph that also gives each
    image's known-ness score (:class:`~cnnkit.confidence.OpenSetModel`; an exported file's
    second output ``known``); the score is taken on the image itself, without test-time views.
    """

    def __init__(self, backend: Callable[[torch.Tensor], torch.Tensor], metadata: Metadata,
                 model: nn.Module | None = None, settings: ScoringSettings | None = None) -> None:  # fmt: skip
        self.backend = backend
        self.metadata = metadata
        self.model = model
        self.settings = settings or getattr(backend, "settings", None) or ScoringSettings()
        self.note = ""  # how the backend was chosen (set by :meth:`load`)
        self.pixels = eval_pixels(metadata.preprocess)  # PIL -> uint8 [C, H, W]; normalised per batch

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", amp: str = "off",
                        trust_code: Any = None) -> Predictor:  # fmt: skip
        """Load a cnnkit checkpoint (``.pt``) or run folder (its ``best.pt``) safely.

        ``amp``: ``off`` (float32, the default: the same logits as ``cnnkit eval`` on the
        CPU), ``bf16``/``fp16`` (autocast), or ``auto`` (bf16 on CUDA, float32 elsewhere).
        ``trust_code``: your own model code that may be imported (see :func:`model_from_checkpoint`).
        """
        ckpt = Checkpoint.load(path)
        model = model_from_checkpoint(ckpt, trust_code=trust_code)
        return cls.from_model(model, checkpoint_metadata(ckpt), device, amp, open_set=ckpt.open_set)

    @classmethod
    def from_model(cls, model: nn.Module, metadata: Metadata, device: str | torch.device = "cpu",
                   amp: str = "off", open_set: OpenSet | None = None) -> Predictor:  # fmt: skip
        """A PyTorch model with its metadata (see :meth:`from_checkpoint` for ``device`` and
        ``amp``); ``open_set``: the checkpoint's (with its feature bank), run with the model."""
        from cnnkit.device import amp_dtype, resolve_device

        device = device if isinstance(device, torch.device) else resolve_device(device)
        graph = deployed(model, open_set, metadata.temperature)
        return cls(TorchBackend(graph, device, amp_dtype(amp, device)), metadata, model)

    @property
    def graph(self) -> nn.Module | None:
        """The PyTorch module the backend runs (the model, or the model and its open set as
        one :class:`~cnnkit.confidence.OpenSetModel`): what an ONNX copy is built from."""
        return getattr(self.backend, "model", None) if self.model is not None else None

    @property
    def open_set(self) -> OpenSet | None:
        """The open set's parameters (no feature bank: the model computes the score), or None."""
        return OpenSet.from_dict(self.metadata.open_set) if self.metadata.open_set is not None else None

    @classmethod
    def from_onnx(cls, path: str | Path) -> Predictor:
        """Load a file written by ``cnnkit export --format onnx`` into ONNX Runtime; needs nothing else."""
        session, metadata = onnx_session(path)
        return cls(OnnxBackend(session), metadata)

    @classmethod
    def from_openvino(cls, path: str | Path) -> Predictor:
        """Run a file written by ``cnnkit export --format onnx`` in OpenVINO (``cnnkit[openvino]``)."""
        compiled, metadata = openvino_model(path)
        return cls(OpenVinoBackend(compiled), metadata)

    @classmethod
    def load(cls, path: str | Path, backend: str = "auto", device: str = "cpu", amp: str = "off",
             trust_code: Any = None) -> Predictor:  # fmt: skip
        """A checkpoint, run folder or exported ``.onnx`` file, on the fastest runtime available.

        ``backend``: ``auto``, ``torch``, ``onnxruntime`` or ``openvino``. ``auto`` runs an
        ONNX file in ONNX Runtime, and a checkpoint on the CPU in ONNX Runtime too when the
        export extra is installed (through an ONNX file built once and checked against
        PyTorch, see :func:`cnnkit.inference.runtime.load_predictor`), else in PyTorch.
        ``amp`` applies to the torch backend (see :meth:`from_checkpoint`); ``note`` on the
        result says what was chosen and why.
        """
        from cnnkit.inference.runtime import load_predictor

        return load_predictor(path, backend=backend, device=device, amp=amp, trust_code=trust_code)

    @property
    def class_names(self) -> list[str]:
        return self.metadata.class_names

    @property
    def preprocess(self) -> Preprocess:
        return self.metadata.preprocess

    @property
    def mode(self) -> str:
        return "L" if self.preprocess.channels == 1 else "RGB"

    def prepare(self, image: ImageLike) -> torch.Tensor:
        """One image -> the normalised tensor ``[C, H, W]`` the model sees."""
        return normalize_batch(self.pixels(to_pil(image, self.mode)).unsqueeze(0), self.preprocess)[0]

    def resolve_tta(self, tta: bool | str | None = None) -> str:
        """The test-time augmentation a ``tta`` argument means.

        ``None`` (the default everywhere): the run's own ``train.tta``, as ``cnnkit eval``
        scores it. ``False``: none. ``True``: the run's own, or for a run trained without
        TTA the views that suit its augmentation (the mirror when it trained with flips,
        else four one-pixel shifts: a mirror changes a digit). A mode name (``none``,
        ``flip``, ``shift``, ``flip-shift``): that one.

        Raises:
            UsageError: an unknown mode name.
        """
        if tta is None:
            return self.metadata.tta
        if tta is False:
            return "none"
        if tta is True:
            return self.metadata.tta if self.metadata.tta != "none" else suggested_tta(self.metadata.augment)
        return check_tta(str(tta))

    def logits(self, images: torch.Tensor, tta: bool | str | None = None) -> torch.Tensor:
        """Normalised ``[B, C, H, W]`` -> float32 logits ``[B, K]`` on the CPU, scored by the one
        scoring path (:func:`cnnkit.scoring.score` with :attr:`settings`), the views
        of :meth:`resolve_tta` combined by the rule of ``cnnkit eval``
        (:func:`cnnkit.tta.combine_views`)."""
        settings = self.settings.with_tta(self.resolve_tta(tta))
        unlabelled = torch.zeros(len(images), dtype=torch.long)  # score takes (inputs, labels) batches
        return score(self.backend, [(images, unlabelled)], settings).logits

    def scores(self, images: torch.Tensor, tta: bool | str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`logits` and, with an open set, the known-ness scores ``[B]`` of the images
        themselves (one pass when there are no test-time views); None without an open set."""
        if self.metadata.open_set is None:
            return self.logits(images, tta), None
        with torch.inference_mode():
            logits, known = self.backend.outputs(images)  # type: ignore[attr-defined]
        if self.resolve_tta(tta) != "none":
            logits = self.logits(images, tta)
        return logits, known

    def tta_views(self, images: torch.Tensor, tta: bool | str | None = None) -> list[torch.Tensor]:
        """The test-time views of a normalised batch (see :meth:`resolve_tta`), the image first."""
        return tta_views(images, self.resolve_tta(tta))

    def predict(self, images: ImageLike | Sequence[ImageLike], *, topk: int = 5, batch_size: int = 64,
                tta: bool | str | None = None, threshold: float | None = None, reject: bool = False,
                ) -> Prediction | list[Prediction]:  # fmt: skip
        """Predict one image (returns a :class:`Prediction`) or a list of them (a list).

        ``tta``: see :meth:`resolve_tta` (default: the run's own, as ``cnnkit eval``).
        ``reject``: label an image that does not look like any known class ``unknown``
        (a model with an open set; see :meth:`rank`).

        A 4-D array/tensor ``[N, ...]`` counts as N images. Bad inputs raise
        :class:`~cnnkit.errors.CnnkitError` subclasses with a message (use
        :meth:`predict_files` to skip bad files instead).
        """
        single = not isinstance(images, (list, tuple)) and not _is_batch(images)
        items = [images] if single else list(images)
        results: list[Prediction] = []
        tta = self.resolve_tta(tta)  # a bad mode fails before any image is decoded
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            pixels = torch.stack([self.pixels(to_pil(item, self.mode)) for item in chunk])
            batch = normalize_batch(pixels, self.preprocess)
            sources = [_source_name(item, start + i) for i, item in enumerate(chunk)]
            logits, known = self.scores(batch, tta)
            results += self.rank(logits, sources, topk, threshold, known=known, reject=reject)
        return results[0] if single else results

    def predict_files(self, paths: Sequence[str], *, topk: int = 5, batch_size: int = 64, workers: int | None = None,
                      tta: bool | str | None = None, threshold: float | None = None, reject: bool = False,
                      ) -> Iterator[Prediction | Skipped]:  # fmt: skip
        """Stream results for many files, in the given order; bad files come as :class:`Skipped`.

        ``tta``: see :meth:`resolve_tta` (default: the run's own, as ``cnnkit eval``);
        ``reject``: see :meth:`predict`.

        Each batch is decoded by ``workers`` threads (default: one per CPU core, at most 8;
        0: in this thread), then the model runs on it with the cores to itself
        (:func:`decoded_batches`): PIL's decoders and resampling and torch's ops release the
        GIL, so threads decode in parallel without the start-up of worker processes and the
        hand-over of every tensor between them (``bench/lean_runs.py``). One batch is in
        memory at a time: memory stays flat however many files there are.
        """
        workers = min(os.cpu_count() or 1, 8) if workers is None else workers
        tta = self.resolve_tta(tta)
        files = ImageFiles(paths, self.pixels, self.mode)
        for indices, images, bad in decoded_batches(files, batch_size, workers):
            sources = [paths[i] for i in indices]
            if images is None:
                ranked = []
            else:
                logits, known = self.scores(normalize_batch(images, self.preprocess), tta)
                ranked = self.rank(logits, sources, topk, threshold, known=known, reject=reject)
            by_index: dict[int, Prediction | Skipped] = dict(zip(indices, ranked, strict=True))
            by_index.update({index: Skipped(paths[index], reason) for index, reason in bad})
            yield from (by_index[index] for index in sorted(by_index))

    def rank(self, logits: torch.Tensor, sources: Sequence[str], topk: int = 5, threshold: float | None = None,
             *, known: torch.Tensor | None = None, reject: bool = False) -> list[Prediction]:  # fmt: skip
        """Logits ``[B, K]`` -> one :class:`Prediction` per row, its probabilities calibrated by
        the model's temperature (:func:`cnnkit.confidence.calibrated`).

        ``known``: the rows' known-ness scores (:meth:`scores`), judged against the open set's
        threshold; with ``reject`` a row below it is labelled ``unknown``. ``threshold``: a
        top-1 probability under it is labelled ``unknown`` too.
        """
        probs = calibrated(logits, self.metadata.temperature)
        k = max(1, min(topk, probs.shape[-1]))
        values, indices = probs.topk(k, dim=-1)
        open_set = self.open_set if known is not None else None
        scores = known.tolist() if open_set is not None else [None] * len(sources)
        results = []
        for source, row_values, row_indices, score_ in zip(sources, values.tolist(), indices.tolist(), scores,
                                                          strict=True):  # fmt: skip
            top = [(self.class_names[i], p) for i, p in zip(row_indices, row_values, strict=True)]
            looks_known = None if score_ is None else bool(score_ >= open_set.threshold)
            sure = threshold is None or row_values[0] >= threshold
            label = top[0][0] if sure and not (reject and looks_known is False) else UNKNOWN
            results.append(Prediction(source, label, row_values[0], top, row_indices[0], score_, looks_known))
        return results


def _is_batch(images: Any) -> bool:
    return isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4


def _source_name(item: Any, position: int) -> str:
    return os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"image[{position}]"


def expand_inputs(inputs: Iterable[str]) -> tuple[list[str], list[Skipped]]:
    """Files, folders and glob patterns -> file list.

    A folder is listed as training lists it (:func:`cnnkit.data.folder.walk_files`:
    recursive, sorted, hidden entries skipped, symbolic links followed, loops cut).

    Returns:
        The files in a stable order (folders sorted), and the inputs that matched nothing
        with the entries a folder listing skipped (broken links, link loops).
    """
    import glob

    files: list[str] = []
    missing: list[Skipped] = []
    for item in inputs:
        if os.path.isdir(item):
            files += _walk(item, missing)
        elif os.path.isfile(item):
            files.append(item)
        elif glob.has_magic(item):
            matched = sorted(glob.glob(item, recursive=True))
            found = [f for path in matched for f in (_walk(path, missing) if os.path.isdir(path) else [path])]
            if found:
                files += found
            else:
                missing.append(Skipped(item, "the pattern matches no file"))
        else:
            missing.append(Skipped(item, "no such file or folder"))
    return files, missing


def _walk(folder: str, missing: list[Skipped]) -> list[str]:
    ignored: list[tuple[str, str]] = []
    found = list(walk_files(folder, ignored))
    missing += [Skipped(path, reason) for path, reason in ignored]
    return found

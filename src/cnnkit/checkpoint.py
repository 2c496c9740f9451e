"""The checkpoint contract: one type, one writer, one reader, a format version.

A :class:`Checkpoint` is a model description, the weights of the unwrapped module, what
makes them usable on their own (class names, preprocessing, the resolved config,
metrics, data fingerprint, where user code came from) and, for ``last.pt`` only, the
:class:`TrainingState` that resuming needs. :meth:`Checkpoint.save` is the one writer
(atomic: temp file, fsync, rename, so a crash mid-save leaves the previous file) and
:meth:`Checkpoint.load` the one reader: ``torch.load(weights_only=True)`` on the CPU, so
no pickled code ever runs, with every unusable file reported in one line.

Payload layout, format 2 (``to_payload``)::

    {"format": 2, "model": {"name", "kwargs", "num_classes", "in_chans", "input_size",
     "source", "code"}, "state_dict": {...}, "class_names": [...],
     "preprocess": Preprocess.to_dict() | {}, "config": RunConfig.to_dict(),
     "metrics": {...} | None, "data_fingerprint": str | None,
     "data_code": {...} | None, "cnnkit_version": str | None,
     "training": {"epoch", "step", "optimizer", "scheduler", "scaler", "raw_state_dict",
                  "ema_updates", "rng", "history", "best_metric", "best_epoch", "stale",
                  "in_epoch": EpochProgress.to_dict() | None, "in_epoch_lr"} | None}

In memory the parts are typed: the preprocessing a :class:`~cnnkit.preprocess.Preprocess`,
the config a :class:`~cnnkit.config.RunConfig`, the mid-epoch progress an
:class:`EpochProgress`; the file holds their plain dicts (``weights_only`` loading allows
nothing else). Format 1 (cnnkit before the type) kept the training keys at the top level
and wrote them into every file; :meth:`Checkpoint.from_payload` reads both and converts
everything to the types, so no reader sees a dict of either format.
"""

from __future__ import annotations

import dataclasses
import errno
import math
import pickle
import random
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnkit.atomic import atomic_write, remove_strays
from cnnkit.confidence import OpenSet
from cnnkit.config import RunConfig, config_from_dict, upgrade_legacy
from cnnkit.errors import CnnkitError
from cnnkit.preprocess import Preprocess

FORMAT_VERSION = 2
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")
# Keys of a format-1 payload that belonged to the training state (top level then).
_TRAINING_KEYS = ("epoch", "step", "optimizer", "scheduler", "scaler", "raw_state_dict", "ema_updates", "rng",
                  "history", "best_metric", "best_epoch", "stale", "in_epoch", "in_epoch_lr")  # fmt: skip
# What torch's zip writer says when a write came up short (a full disk): it hides the OS error.
_SHORT_WRITE = ("unexpected pos", "file write failed")
# File signatures of what people mistake for a checkpoint.
_SIGNATURES = ((b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"GIF8", "a GIF image"),
               (b"BM", "a BMP image"), (b"%PDF", "a PDF document"), (b"\x1f\x8b", "a gzip archive"),
               (b"\x08", "an ONNX or protobuf file"))  # fmt: skip
_ZIP_MAGIC = b"PK\x03\x04"


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside ``torch.compile`` / DDP / DataParallel wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes so weights load into a plain module."""
    cleaned = {}
    for key, value in state.items():
        for prefix in _WRAPPER_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix) :]
        cleaned[key] = value
    return cleaned


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as checkpoint-safe values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": _to_safe(random.getstate()),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(_from_safe(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_safe(value: Any) -> Any:
    return [_to_safe(v) for v in value] if isinstance(value, tuple) else value


def _from_safe(value: Any) -> Any:
    return tuple(_from_safe(v) for v in value) if isinstance(value, list) else value


# ----------------------------------------------------------------------------- the type


@dataclass
class ModelDesc:
    """How to rebuild the network: ``create_model(name, num_classes=..., in_chans=...,
    input_size=..., **kwargs)``.

    Attributes:
        name: registry name (``"lenet"``, ``"timm:resnet18"``, ``"nets.py:Tiny"``).
        kwargs: the model's own keyword arguments (``--model-kwargs``).
        num_classes: logits the head produces.
        in_chans: image channels.
        input_size: (height, width) it was trained at.
        source: where the starting weights came from (None: random init).
        code: where a user model's code came from (:mod:`cnnkit.usercode` record), None for cnnkit's own.
    """

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None
    in_chans: int | None = None
    input_size: list[int] | None = None
    source: str | None = None
    code: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelDesc:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in values.items() if k in known}
        values["kwargs"] = dict(values.get("kwargs") or {})
        if values.get("input_size") is not None:
            values["input_size"] = [int(v) for v in values["input_size"]]
        return cls(**values)


@dataclass
class EpochProgress:
    """How far one training epoch has got: what a mid-epoch checkpoint records.

    Attributes:
        batches: optimizer steps done in this epoch (the loader's first ``batches``
            batches are consumed).
        loss_sum: sum over those steps of batch loss x batch size.
        correct: training images classified correctly so far.
        seen: training images seen so far.
        seconds: training time spent so far in this epoch.
        rng: the RNG states right after step ``batches`` (None: not recorded).
    """

    batches: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0
    rng: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EpochProgress:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class TrainingState:
    """What resuming needs besides the weights; only ``last.pt`` (and ``epoch_NNN.pt``) carry it.

    Attributes:
        epoch: epochs completed.
        step: optimizer steps done in the whole run (mid-epoch ones included).
        optimizer, scheduler, scaler: their ``state_dict()`` (None: not used).
        raw_state_dict: with an EMA, the trained weights (the checkpoint's ``state_dict`` is then
            the average); None without one.
        ema_updates: how many updates the EMA has had (its warm-up depends on it).
        rng: :func:`rng_state` at the moment of saving.
        history: one metrics row per epoch completed.
        best_metric, best_epoch: the selection metric's best value so far and its epoch.
        stale: epochs since it last improved (early stopping).
        in_epoch: for a mid-epoch checkpoint, how far the next epoch got; None at an epoch's end.
        in_epoch_lr: the learning rate that interrupted epoch started with.
    """

    epoch: int = 0
    step: int = 0
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    raw_state_dict: dict[str, torch.Tensor] | None = None
    ema_updates: int | None = None
    rng: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    best_metric: float | None = None
    best_epoch: int | None = None
    stale: int = 0
    in_epoch: EpochProgress | None = None
    in_epoch_lr: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain types and tensors (the payload's ``training``)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["in_epoch"] = self.in_epoch.to_dict() if self.in_epoch is not None else None
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingState:
        """Read what :meth:`to_dict` wrote (or format 1's top-level keys)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in values.items() if k in known and v is not None}
        if values.get("in_epoch"):  # format 1 and 2 files hold it as a dict
            values["in_epoch"] = EpochProgress.from_dict(values["in_epoch"])
        else:
            values.pop("in_epoch", None)
        return cls(**values)

    @property
    def resumable(self) -> bool:
        """It holds the optimizer and RNG states an exact resume restores."""
        return self.optimizer is not None and self.rng is not None


@dataclass
class Checkpoint:
    """One self-describing checkpoint: weights, metadata and, optionally, the training state.

    Attributes:
        model: how to rebuild the network (None: written by ``engine.fit`` without ``meta``).
        state_dict: weights of the unwrapped module, no ``_orig_mod.``/``module.`` prefixes; with
            an EMA, the average (what is evaluated and deployed).
        class_names: one name per logit.
        preprocess: how an image becomes the model's input (None: written by ``engine.fit``
            without ``meta``).
        config: the resolved run config (the defaults when none was recorded).
        metrics: the metrics row of the epoch these weights are from.
        data_fingerprint: the training data's fingerprint (resume refuses changed data).
        data_code: where a user dataset's code came from, or None.
        cnnkit_version: the cnnkit that wrote it.
        training: what resuming needs (``last.pt``), None in ``best.pt``.
        temperature: divides the logits before every probability shown (temperature scaling,
            :mod:`cnnkit.confidence`), fitted on the validation split when training ends;
            1.0 (raw softmax) before that and in files written before it was recorded.
        open_set: how the model says "none of these" (known-ness score, threshold, training
            feature bank), fitted when training ends; None before that and in older files.
        path: the file it was read from (not saved).
    """

    model: ModelDesc | None
    state_dict: dict[str, torch.Tensor]
    class_names: list[str] = field(default_factory=list)
    preprocess: Preprocess | None = None
    config: RunConfig = field(default_factory=RunConfig)
    metrics: dict[str, Any] | None = None
    data_fingerprint: str | None = None
    data_code: dict[str, Any] | None = None
    cnnkit_version: str | None = None
    training: TrainingState | None = None
    temperature: float = 1.0
    open_set: OpenSet | None = None
    path: Path | None = field(default=None, compare=False, repr=False)

    @property
    def resumable(self) -> bool:
        """``fit(resume=...)`` can continue from it exactly."""
        return self.training is not None and self.training.resumable

    def weights_only(self) -> Checkpoint:
        """A copy without the training state (what ``best.pt`` holds); tensors are shared."""
        return dataclasses.replace(self, training=None)

    def to_payload(self) -> dict[str, Any]:
        """The format-2 dict of plain types and tensors that :meth:`save` writes."""
        return {
            "format": FORMAT_VERSION,
            "model": self.model.to_dict() if self.model is not None else None,
            "state_dict": self.state_dict,
            "class_names": list(self.class_names),
            "preprocess": self.preprocess.to_dict() if self.preprocess is not None else {},
            "config": self.config.to_dict(),
            "metrics": self.metrics,
            "data_fingerprint": self.data_fingerprint,
            "data_code": self.data_code,
            "cnnkit_version": self.cnnkit_version,
            "training": self.training.to_dict() if self.training is not None else None,
            "temperature": float(self.temperature),
            "open_set": self.open_set.to_dict() if self.open_set is not None else None,
        }

    def to_flat_dict(self) -> dict[str, Any]:
        """The format-1 layout (training keys at the top level, None when absent; ``format`` 1),
        for code that still reads ``payload["epoch"]``; new code reads the attributes."""
        payload = self.to_payload()
        training = payload.pop("training") or {}
        payload["model"] = payload["model"] or {}
        # "format" 1 says which layout this is, so from_payload reads the dict back as it is
        # "flat_of" marks a dict made here from a newer file: its config needs no upgrade_legacy
        return {**payload, "format": 1, "flat_of": FORMAT_VERSION, **{key: training.get(key) for key in _TRAINING_KEYS}}

    @classmethod
    def from_payload(cls, payload: Any, where: str | Path = "checkpoint") -> Checkpoint:
        """Read a format-1 or format-2 payload (what ``torch.load`` returned).

        The preprocessing becomes a :class:`Preprocess`, the config a :class:`RunConfig` (a
        format-1 config upgraded first) and the mid-epoch progress an :class:`EpochProgress`.

        Raises:
            CnnkitError: not a cnnkit checkpoint, written by a newer cnnkit, or parts that
                cannot be read (preprocessing or config).
        """
        if not isinstance(payload, dict):
            kind = type(payload).__name__
            raise CnnkitError(f"{where} is a PyTorch file but not a cnnkit checkpoint (it holds a {kind}); "
                              "give a run folder or a .pt file written by cnnkit")  # fmt: skip
        if not isinstance(payload.get("state_dict"), dict) or ("model" not in payload and "format" not in payload):
            what = "a plain state dict" if payload and all(isinstance(v, torch.Tensor) for v in payload.values()) \
                else "a dict without a model description and state_dict"  # fmt: skip
            raise CnnkitError(f"{where} is not a cnnkit checkpoint (it holds {what}); give a run folder or a .pt "
                              "file written by cnnkit (train from a plain state dict with --weights)")  # fmt: skip
        version = payload.get("format", 1)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CnnkitError(f"{where} was written by a newer cnnkit (checkpoint format {version}; this cnnkit "
                              f"reads formats 1 to {FORMAT_VERSION}); upgrade cnnkit")  # fmt: skip
        state = payload["state_dict"]
        if not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CnnkitError(f"{where} is not a usable checkpoint: its state_dict holds values other than tensors")
        if version >= 2:
            training = TrainingState.from_dict(payload["training"]) if payload.get("training") else None
        else:  # format 1: the training keys sat at the top level of every file
            present = {k: payload[k] for k in _TRAINING_KEYS if payload.get(k) is not None}
            training = TrainingState.from_dict(present) if present else None
        model = payload.get("model")
        config = dict(payload.get("config") or {})
        if version < 2 and "flat_of" not in payload:  # a file written before the config schema
            config = upgrade_legacy(config)
        return cls(
            model=ModelDesc.from_dict(model) if isinstance(model, dict) and "name" in model else None,
            state_dict=clean_state_dict(state),
            class_names=list(payload.get("class_names") or []),
            preprocess=_preprocess(payload.get("preprocess"), where),
            config=_run_config(config, where),
            metrics=payload.get("metrics"),
            data_fingerprint=payload.get("data_fingerprint"),
            data_code=payload.get("data_code"),
            cnnkit_version=payload.get("cnnkit_version"),
            training=training,
            temperature=_temperature(payload.get("temperature"), where),
            open_set=_open_set(payload.get("open_set"), where),
            path=Path(where) if isinstance(where, Path) else None,
        )

    def save(self, path: str | Path) -> Path:
        """Write it atomically to ``path`` (temp file in the same folder, fsync, rename).

        A process killed mid-save leaves the previous ``path`` intact and at worst a stray
        ``.NAME.*.tmp`` beside it, which the next successful save of ``path`` removes.
        """
        return _write_atomic(self.to_payload(), Path(path))

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        """Read a checkpoint file, or a run folder's ``best.pt`` (else ``last.pt``), onto the CPU.

        Raises:
            CnnkitError: one line saying what the file is instead (missing, empty, text,
                an image, truncated, another kind of PyTorch file, a pickle that would
                run code, a newer format).
        """
        path = checkpoint_file(path)
        return cls.from_payload(load_tensor_file(path), path)


def _preprocess(values: Any, where: str | Path) -> Preprocess | None:
    """A payload's ``preprocess`` dict as a :class:`Preprocess` (None: the file has none)."""
    if not values:
        return None
    try:
        return Preprocess.from_dict(values)
    except (KeyError, TypeError, ValueError) as exc:
        raise CnnkitError(f"{where} is not a usable checkpoint: its preprocessing is unreadable ({exc!r})") from None


def _temperature(value: Any, where: str | Path) -> float:
    """A stored temperature (absent: 1.0, files written before it was recorded)."""
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise CnnkitError(f"{where}: its temperature {value!r} is not a positive number; the file is damaged")
    return float(value)


def _open_set(values: Any, where: str | Path) -> OpenSet | None:
    """A stored open-set part (absent: None, files written before it was recorded)."""
    if values is None:
        return None
    try:
        return OpenSet.from_dict(values)
    except (ValueError, KeyError, TypeError) as exc:
        raise CnnkitError(f"{where}: its open-set part is unreadable ({exc}); the file is damaged") from None


def _run_config(values: dict[str, Any], where: str | Path) -> RunConfig:
    """A payload's ``config`` dict as a :class:`RunConfig` (the defaults for an empty one)."""
    try:
        return config_from_dict(values)
    except CnnkitError as exc:  # a key or value this cnnkit does not know
        raise CnnkitError(f"{where} holds a run config this cnnkit cannot read ({exc}); "
                          "upgrade cnnkit") from None  # fmt: skip


# ----------------------------------------------------------------------------- files


def checkpoint_file(path: str | Path) -> Path:
    """``path`` itself, or for a run folder its ``checkpoints/best.pt`` (else ``last.pt``).

    Raises:
        CnnkitError: a folder without checkpoints, or nothing at ``path``.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
        raise CnnkitError(f"{path} holds no checkpoints/best.pt or last.pt; give a run folder or a .pt file")
    if not path.is_file():
        raise CnnkitError(f"checkpoint not found: {path}; give a run folder or a .pt file")
    return path


def load_tensor_file(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with one clear line for every file it cannot use.

    Only tensors and plain containers come back: a pickle that needs any other object is
    refused before anything in it runs.

    Raises:
        CnnkitError: missing, empty, text, an image or other known non-PyTorch file,
            truncated or corrupt, or a pickle of arbitrary objects.
    """
    path = Path(path)
    if not path.is_file():
        raise CnnkitError(f"{what} not found: {path}")
    with path.open("rb") as handle:
        head = handle.read(512)
    kind = _not_torch(head)
    if kind is not None:
        raise CnnkitError(f"{path} is {kind}, not a PyTorch {what}; give a .pt file written by cnnkit or torch.save")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of files it then refuses
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found is None:
            raise CnnkitError(f"{path} is not a PyTorch {what} (its pickle data is unreadable)") from None
        raise CnnkitError(f"refused to load {path}: it contains a pickled Python object ({found.group(1)}) and "
                          f"loading it would run code; cnnkit only loads plain-tensor checkpoints, never pickled "
                          "code") from None  # fmt: skip
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as exc:
        raise CnnkitError(f"{path} {_damage(head, path, exc)}; copy it again or use another {what}") from None


def save_tensor_file(value: dict[str, Any], path: str | Path) -> Path:
    """Write tensors and plain containers (a feature cache, a label-check cache) to ``path``
    atomically: a reader sees the old file or the new one, never half of it.

    The one writer of tensor files besides :meth:`Checkpoint.save`; read them back with
    :func:`load_tensor_file` (or :func:`read_tensor_cache` for a cache).
    """
    return _write_atomic(value, Path(path))


def read_tensor_cache(path: str | Path) -> Any:
    """A cache file written by :func:`save_tensor_file`, or None when it is missing or unusable
    (torn, foreign, a pickle of objects): a cache is recomputed, never trusted or fatal."""
    try:
        return load_tensor_file(path, "cache")
    except CnnkitError:
        return None


def _not_torch(head: bytes) -> str | None:
    """What the first bytes say a file is, when they say it is no PyTorch file (None: it may be one)."""
    if not head:
        return "empty (0 bytes)"
    if head.startswith(_ZIP_MAGIC) or head.startswith(b"\x80"):  # torch.save: a zip; legacy: a pickle
        return None
    for magic, kind in _SIGNATURES:
        if head.startswith(magic):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    if _is_text(head):
        return "a text file"
    return "not a PyTorch file (unrecognised content)"


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just the 512-byte read ending inside a character
            return False
        text = head[: exc.start].decode("utf-8")
    return all(c.isprintable() or c in "\t\r\n" for c in text)


def _damage(head: bytes, path: Path, exc: Exception) -> str:
    """Why torch could not read a file that starts like a PyTorch file."""
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            return "is truncated or corrupt (its zip archive is incomplete)"
        return "is a zip archive but not a PyTorch file (or a damaged one)"
    if isinstance(exc, EOFError):
        return "is truncated (it ends in the middle of its data)"
    return f"is a damaged PyTorch file ({type(exc).__name__})"


def _write_atomic(payload: dict[str, Any], path: Path) -> Path:
    """``torch.save`` into ``path`` atomically.

    Raises:
        OSError: the write failed; ENOSPC when the disk is full, also when torch's zip
            writer reported the short write only as ``RuntimeError: ... unexpected pos``
            or ``file write failed`` (:func:`cnnkit.atomic.atomic_write` usually finds the
            OS error itself).
    """
    try:
        atomic_write(path, lambda handle: torch.save(payload, handle))
    except RuntimeError as exc:
        if any(text in str(exc) for text in _SHORT_WRITE):
            raise OSError(errno.ENOSPC, f"No space left on device ({exc})", str(path)) from exc
        raise
    remove_strays(path)  # left by a process killed mid-save
    return path


# ----------------------------------------------------------------------------- compatibility


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Compatibility writer of a payload dict in either layout: ``Checkpoint.from_payload(payload).save(path)``
    (a :class:`Checkpoint` is written with its own :meth:`Checkpoint.save`)."""
    return Checkpoint.from_payload(payload, Path(path)).save(path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Compatibility reader: ``Checkpoint.load(path).to_flat_dict()`` (the format-1 key layout).

    Raises:
        CnnkitError: as :meth:`Checkpoint.load`.
    """
    return Checkpoint.load(path).to_flat_dict()

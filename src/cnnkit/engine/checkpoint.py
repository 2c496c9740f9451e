"""The checkpoint contract: one self-describing ``.pt`` file, safe to load.

A checkpoint is a dict of plain types and tensors only, so it loads with
``torch.load(weights_only=True)`` (no pickled code ever runs). Keys:

* ``format``: :data:`FORMAT_VERSION`.
* ``model``: ``{"name", "kwargs", "num_classes", "in_chans", "input_size"}``.
* ``state_dict``: weights of the unwrapped module (no ``_orig_mod.``/``module.`` prefixes).
* ``class_names``, ``preprocess`` (a :class:`~cnnkit.data.spec.Preprocess` dict), ``config``
  (the resolved run config), ``metrics`` (last epoch's row), ``best_metric``.
* for resuming: ``optimizer``, ``scheduler``, ``scaler``, ``epoch``, ``step``, ``rng``.

Writes are atomic: temp file, fsync, rename, so a crash mid-save leaves the previous file.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnkit.errors import CnnkitError

FORMAT_VERSION = 1
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")


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


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Write ``payload`` atomically to ``path`` (temp file in the same folder, fsync, rename).

    A process killed mid-save leaves the previous ``path`` intact and at worst a stray
    ``.NAME.*.tmp`` beside it, which the next successful save of ``path`` removes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT_VERSION, **payload}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    for stray in path.parent.glob(f".{path.name}.*.tmp"):  # left by a process killed mid-save
        stray.unlink(missing_ok=True)
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported on every platform (Windows)
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a cnnkit checkpoint safely (``weights_only=True``) onto the CPU.

    Raises:
        CnnkitError: missing file, not a checkpoint, or a file that needs arbitrary
            unpickling (refused: it could run code).
    """
    path = Path(path)
    if not path.is_file():
        raise CnnkitError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CnnkitError(
            f"refused to load {path}: it is not a plain-weights checkpoint and loading it would "
            f"require unpickling arbitrary objects, which can run code ({str(exc).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CnnkitError(f"{path} is not a readable checkpoint ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(payload, dict) or "state_dict" not in payload or "model" not in payload:
        raise CnnkitError(f"{path} is not a cnnkit checkpoint (no model description or state_dict)")
    if payload.get("format", 0) > FORMAT_VERSION:
        raise CnnkitError(f"{path} was written by a newer cnnkit (format {payload['format']}); upgrade cnnkit")
    return payload

"""What a model file carries besides its weights: class names, preprocessing, the model's
description, the run's augmentation and TTA, and for exported files their precision and the
checkpoint they came from. Stored as JSON (ONNX ``metadata_props`` key ``cnnkit``,
TorchScript extra file ``cnnkit.json``); imports no model code.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnkit.checkpoint import Checkpoint
from cnnkit.confidence import OpenSet
from cnnkit.data.spec import Preprocess
from cnnkit.errors import CnnkitError
from cnnkit.tta import check_tta

METADATA_KEY = "cnnkit"  # ONNX metadata_props key / TorchScript extra file holding the JSON below
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class Metadata:
    """What an exported model carries besides its weights (JSON in the exported file).

    Attributes:
        augment: the run's training augmentation preset.
        tta: the run's test-time augmentation (``train.tta``): what eval scored with, and
            what :class:`~cnnkit.inference.Predictor` uses unless told otherwise. ``none`` for
            files exported before it was recorded.
        precision: the exported file's numbers: ``fp32``, ``fp16`` or ``int8`` (``fp32``
            for checkpoints and for files exported before it was recorded).
        source_sha256: SHA-256 of the checkpoint file the export came from (``""`` if unknown).
        temperature: the logits are divided by it before every probability shown
            (:func:`cnnkit.confidence.calibrated`); 1.0 for files written before it was recorded.
        open_set: the parameters of the model's "none of these" decision
            (:meth:`cnnkit.confidence.OpenSet.params`: score, threshold, known rate, k); the
            score itself is the model file's second output ``known``. None: no open set.
    """

    class_names: list[str]
    preprocess: Preprocess
    model: dict[str, Any] = field(default_factory=dict)
    augment: str = "none"
    tta: str = "none"
    precision: str = "fp32"
    source_sha256: str = ""
    temperature: float = 1.0
    open_set: dict[str, Any] | None = None

    def to_json(self) -> str:
        return json.dumps({"class_names": self.class_names, "preprocess": self.preprocess.to_dict(),
                           "model": self.model, "augment": self.augment, "tta": self.tta,
                           "precision": self.precision, "source_sha256": self.source_sha256,
                           "temperature": self.temperature, "open_set": self.open_set})  # fmt: skip

    @classmethod
    def from_json(cls, text: str, where: str) -> Metadata:
        try:
            values = json.loads(text)
            return cls(list(values["class_names"]), Preprocess.from_dict(values["preprocess"]),
                       dict(values.get("model", {})), str(values.get("augment", "none")),
                       check_tta(str(values.get("tta") or "none")), str(values.get("precision") or "fp32"),
                       str(values.get("source_sha256") or ""),
                       _temperature(values.get("temperature", 1.0)), _open_set(values.get("open_set")))  # fmt: skip
        except (ValueError, KeyError, TypeError) as exc:
            raise CnnkitError(f"{where}: its cnnkit metadata is unreadable ({exc}); re-export it") from None


def _temperature(value: object) -> float:
    temperature = float(value)  # type: ignore[arg-type]  (a TypeError or ValueError says unreadable)
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature {value!r} is not a positive number")
    return temperature


def _open_set(values: Any) -> dict[str, Any] | None:
    return None if values is None else OpenSet.from_dict(values).params()  # a ValueError says unreadable


def checkpoint_metadata(ckpt: Checkpoint) -> Metadata:
    """Class names, preprocessing, model description, training augmentation and test-time
    augmentation of a checkpoint (its ``source_sha256`` when it was read from a file).

    Raises:
        CnnkitError: a checkpoint without preprocessing (written by ``engine.fit`` without ``meta``).
    """
    if ckpt.preprocess is None:
        raise CnnkitError(f"{ckpt.path or 'the checkpoint'} records no preprocessing (written by engine.fit "
                          "without meta); it cannot prepare images on its own")  # fmt: skip
    model = ckpt.model.to_dict() if ckpt.model is not None else {}
    digest = file_sha256(ckpt.path) if ckpt.path is not None and Path(ckpt.path).is_file() else ""
    cfg = ckpt.config
    return Metadata(list(ckpt.class_names), ckpt.preprocess, model, str(cfg.data.augment or "none"),
                    check_tta(str(cfg.train.tta or "none")), source_sha256=digest,
                    temperature=ckpt.temperature,
                    open_set=ckpt.open_set.params() if ckpt.open_set is not None else None)  # fmt: skip


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MB blocks (a checkpoint may be hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

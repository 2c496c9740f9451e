"""The runtimes that turn a normalised batch ``[B, C, H, W]`` into logits ``[B, K]``:
PyTorch (a checkpoint's model), ONNX Runtime and OpenVINO (a file from ``cnnkit export``).

Each backend is a callable with a ``name`` and the
:class:`~cnnkit.scoring.ScoringSettings` its batches are scored with
(:class:`~cnnkit.inference.Predictor` scores through :func:`cnnkit.scoring.score`);
nothing else is needed from it. ONNX Runtime and OpenVINO are optional (``cnnkit[export]``,
``cnnkit[openvino]``) and imported only when a backend is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnkit.device import autocast
from cnnkit.errors import CnnkitError
from cnnkit.inference.metadata import METADATA_KEY, Metadata
from cnnkit.scoring import ScoringSettings

BACKENDS = ("torch", "onnxruntime", "openvino")


class TorchBackend:
    """Runs a PyTorch model: float32 ``[B, C, H, W]`` in, float32 logits ``[B, K]`` out.

    ``dtype`` (e.g. ``torch.bfloat16``) runs the model under autocast: faster on GPUs and
    on CPUs with bf16 matrix units (Intel AMX), at the cost of logits rounded to ~3
    significant digits (a near-tie may then rank the other way). ``settings`` says the same
    (device, precision, channels-last) to :func:`~cnnkit.scoring.score`.
    """

    name = "torch"

    def __init__(self, model: nn.Module, device: torch.device, dtype: torch.dtype | None = None) -> None:
        # channels-last is up to 2x faster for convolutions on CPUs and tensor cores alike
        self.settings = ScoringSettings(device, dtype, channels_last=True)
        self.model = self.settings.place(model.eval())
        self.device = self.settings.device
        self.dtype = dtype
        self.memory_format = torch.channels_last

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.outputs(images)[0]

    @torch.inference_mode()
    def outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits ``[B, K]`` and, for a model with an open set
        (:class:`~cnnkit.confidence.OpenSetModel`), the known-ness scores ``[B]`` (else None)."""
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        with autocast(self.device, self.dtype):
            out = self.model(images)
        if isinstance(out, tuple):
            return out[0].float().cpu(), out[1].float().cpu()
        return out.float().cpu(), None


class _ArrayBackend:
    """A runtime fed NumPy float32 batches; a file with a fixed batch size runs in chunks of it."""

    name = ""
    fixed_batch: int | None = None
    settings = ScoringSettings()  # NumPy in, NumPy out: batches stay float32 on the CPU

    def run_array(self, array: np.ndarray) -> list[np.ndarray]:
        """Every output of the file for one batch (``logits``, then ``known`` when it has an open set)."""
        raise NotImplementedError

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.outputs(images)[0]

    def outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits ``[B, K]`` and the known-ness scores ``[B]`` of a file with an open set (else None)."""
        array = np.ascontiguousarray(images.detach().cpu().float().numpy())
        size = self.fixed_batch
        if size is None or size == len(array):
            results = [np.asarray(out, dtype=np.float32) for out in self.run_array(array)]
        else:  # exported without --dynamic-batch: run fixed-size chunks, the last one zero-padded
            chunks = []
            for start in range(0, len(array), size):
                chunk = array[start : start + size]
                real = len(chunk)
                if real < size:
                    chunk = np.concatenate([chunk, np.zeros((size - real, *array.shape[1:]), array.dtype)])
                chunks.append([np.asarray(out, dtype=np.float32)[:real] for out in self.run_array(chunk)])
            results = [np.concatenate(parts) for parts in zip(*chunks, strict=True)]
        known = torch.from_numpy(results[1]).reshape(-1) if len(results) > 1 else None
        return torch.from_numpy(results[0]), known


class OnnxBackend(_ArrayBackend):
    """Runs an ONNX file with ONNX Runtime (CPU, or CUDA when its provider is installed)."""

    name = "onnxruntime"

    def __init__(self, session: Any) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name
        shape = session.get_inputs()[0].shape
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None

    def run_array(self, array: np.ndarray) -> list[np.ndarray]:
        return list(self.session.run(None, {self.input_name: array}))


class OpenVinoBackend(_ArrayBackend):
    """Runs an ONNX file from ``cnnkit export`` with OpenVINO on the CPU.

    fp32 and fp16 files run with OpenVINO's ``f32`` precision hint: by default OpenVINO runs
    their float arithmetic in bf16 on CPUs with bf16 units, which changes logits (and so
    labels near ties) without being asked; for an fp16 file bf16 rounds more than the file
    itself does (max |Δlogit| 0.04 against ONNX Runtime on a LeNet, 3e-6 with the hint).
    int8 files run their quantised ops in int8 either way.
    """

    name = "openvino"

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        shape = compiled.inputs[0].get_partial_shape()[0]
        self.fixed_batch = shape.get_length() if shape.is_static else None

    def run_array(self, array: np.ndarray) -> list[np.ndarray]:
        results = self.compiled(array)
        return [results[output] for output in self.compiled.outputs]


def _require_onnxruntime() -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise CnnkitError("the onnxruntime backend needs onnxruntime: pip install 'cnnkit[export]'") from None
    return ort


def onnx_session(path: str | Path) -> tuple[Any, Metadata]:
    """An ONNX Runtime session for ``path`` and the cnnkit metadata stored in it.

    ONNX Runtime keeps its own thread count (one per physical core: fewer measured slower,
    ``bench/predict_throughput.py --tune``).
    """
    ort = _require_onnxruntime()
    path = _existing(path, "ONNX file")
    options = ort.SessionOptions()
    # ONNX Runtime's threads spin-wait between ops by default, taking the cores from the
    # threads that decode the next images; without it cnnkit predict is faster end to end
    # on 2 cores (bench/predict_throughput.py --tune)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(path), options, providers=ort.get_available_providers())
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise CnnkitError(f"{path} is not a loadable ONNX model ({str(exc).splitlines()[0]})") from None
    return session, _metadata_of(session.get_modelmeta().custom_metadata_map, path)


def openvino_model(path: str | Path) -> tuple[Any, Metadata]:
    """An OpenVINO model compiled for the CPU from an exported ONNX file, and its metadata."""
    try:
        import openvino as ov
    except ImportError:
        raise CnnkitError("the openvino backend needs openvino: pip install 'cnnkit[openvino]'") from None
    path = _existing(path, "ONNX file")
    metadata = _metadata_of(_onnx_properties(path), path)
    config: dict[str, Any] = {}
    if metadata.precision in ("fp32", "fp16"):
        config["INFERENCE_PRECISION_HINT"] = "f32"  # see OpenVinoBackend: no silent bf16
    try:
        compiled = ov.Core().compile_model(str(path), "CPU", config)
    except Exception as exc:  # OpenVINO raises RuntimeError subclasses with long messages
        raise CnnkitError(f"OpenVINO cannot load {path} ({str(exc).strip().splitlines()[0][:300]})") from None
    return compiled, metadata


def _onnx_properties(path: Path) -> dict[str, str]:
    """An ONNX file's ``metadata_props``, read without loading its weights into a runtime."""
    try:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
    except ImportError:
        raise CnnkitError("reading an ONNX file's metadata needs onnx: pip install 'cnnkit[export]'") from None
    except Exception as exc:  # a truncated or foreign file: protobuf's DecodeError and others
        raise CnnkitError(f"{path} is not a loadable ONNX model ({str(exc).splitlines()[0][:200]})") from None
    return {prop.key: prop.value for prop in proto.metadata_props}


def _metadata_of(props: dict[str, str], path: Path) -> Metadata:
    if METADATA_KEY not in props:
        raise CnnkitError(f"{path} carries no cnnkit metadata (class names, preprocessing); "
                          "export it with `cnnkit export`")  # fmt: skip
    return Metadata.from_json(props[METADATA_KEY], str(path))


def _existing(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise CnnkitError(f"{what} not found: {path}")
    return path

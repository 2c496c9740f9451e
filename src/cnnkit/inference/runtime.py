"""Which runtime runs a model: the fastest one available unless the user names one.

``backend="auto"`` (what ``cnnkit predict`` and ``cnnkit serve`` use):

* an exported ``.onnx`` file runs in ONNX Runtime;
* a checkpoint or run folder on the CPU, in float32, runs in ONNX Runtime too when the
  export extra is installed: the first time, an ONNX file is exported from it and its
  logits are checked against PyTorch's on real images (the run's validation images, or
  the images about to be predicted); the file that passes is kept in the cache folder
  (``$CNNKIT_CACHE_DIR/onnx``, keyed by the checkpoint's SHA-256), so every later call
  starts from it. ONNX Runtime runs EfficientNet-Lite0 about 2.5x faster than PyTorch on
  a 2-core CPU and small CNNs 1.2-1.7x (``bench/predict_throughput.py``);
* otherwise (no export extra, a GPU, ``--amp``, a build that failed its check): PyTorch.

``torch``, ``onnxruntime`` and ``openvino`` force one (the last two build the same cached
file from a checkpoint). The PyTorch model stays loaded beside any runtime, for Grad-CAM.
:attr:`Predictor.note <cnnkit.inference.Predictor.note>` says what was chosen and why.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from cnnkit.atomic import write_json
from cnnkit.config import check_backend
from cnnkit.errors import CnnkitError
from cnnkit.inference.loading import LoadedCheckpoint, checkpoint_loaders, first_images, load_checkpoint
from cnnkit.inference.metadata import Metadata, checkpoint_metadata
from cnnkit.inference.predictor import Predictor
from cnnkit.log import say

CHECK_IMAGES = 64  # images the one-off ONNX build is checked on
# Seconds of an ONNX build and its check (build_seconds), fitted to a LeNet (15 modules: 11.9 s) and an
# EfficientNet-Lite0 (276 modules, 3.4 M params: 62.1 s) built on a loaded 2-core AMD EPYC (docs/benchmarks.md).
BUILD_COST = {"base": 10, "per_module": 0.17, "per_million_params": 1.0}
EXPORT_EXTRA = ("onnx", "onnxscript", "onnxruntime")


def load_predictor(path: str | Path, *, backend: str = "auto", device: str | torch.device = "cpu", amp: str = "off",
                   trust_code: Any = None, sample_files: Sequence[str] = (),
                   announce: Callable[[str], None] | None = None) -> Predictor:  # fmt: skip
    """A :class:`Predictor` for a checkpoint, run folder or ``.onnx`` file (see the module doc).

    ``sample_files``: images the caller is about to predict; an ONNX build is checked on
    them when the run's own validation images cannot be found. ``announce`` receives one
    line before a first-time ONNX build starts (what it is, about how long it takes, how
    to skip it); default: cnnkit's log.

    Raises:
        UsageError: an unknown backend, or one that cannot run this file with these options.
        CnnkitError: a forced ``onnxruntime``/``openvino`` that is not installed or whose
            ONNX build failed; anything :meth:`Predictor.from_checkpoint` raises.
    """
    check_backend(path, backend, amp)  # the config's rule, as `cnnkit predict` and `serve` check it
    if _is_onnx(path):
        return _exported_file(Path(path), backend)
    loaded = load_checkpoint(path, trust_code=trust_code)
    predictor = Predictor.from_model(loaded.model, checkpoint_metadata(loaded.checkpoint), device, amp,
                                     open_set=loaded.checkpoint.open_set)
    if backend == "torch":
        predictor.note = "torch (as asked)"
        return predictor
    blocked = _fast_path_blocked(predictor, amp, backend)
    if blocked:
        if backend != "auto":
            raise CnnkitError(f"--backend {backend} cannot run here: {blocked}")
        predictor.note = f"torch ({blocked})"
        return predictor
    onnx_file, how = cached_onnx(loaded, predictor, sample_files, announce or say)
    if onnx_file is None:
        if backend != "auto":
            raise CnnkitError(f"--backend {backend}: {how}")
        predictor.note = f"torch ({how})"
        return predictor
    fast = Predictor.from_openvino(onnx_file) if backend == "openvino" else Predictor.from_onnx(onnx_file)
    fast.model = predictor.model  # Grad-CAM and anything else that needs the PyTorch module
    fast.note = f"{fast.backend.name} ({how}; --backend torch for PyTorch)"
    return fast


def _is_onnx(path: str | Path) -> bool:
    return str(path).lower().endswith(".onnx")


def _exported_file(path: Path, backend: str) -> Predictor:
    predictor = Predictor.from_openvino(path) if backend == "openvino" else Predictor.from_onnx(path)
    predictor.note = f"{predictor.backend.name} ({predictor.metadata.precision} file from cnnkit export)"
    return predictor


def _fast_path_blocked(predictor: Predictor, amp: str, backend: str) -> str:
    """Why a checkpoint cannot run through an ONNX file here ('' when it can)."""
    torch_backend = predictor.backend  # the TorchBackend of a checkpoint
    if torch_backend.device.type != "cpu":
        return f"the model runs on {torch_backend.device.type}; the ONNX path is for CPUs"
    if torch_backend.dtype is not None:  # --amp auto on a CPU is float32: no autocast
        return f"--amp {amp} runs PyTorch autocast"
    missing = [name for name in EXPORT_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        return f"{', '.join(missing)} not installed; pip install 'cnnkit[export]' to run it in ONNX Runtime"
    if backend == "openvino" and importlib.util.find_spec("openvino") is None:
        return "openvino is not installed: pip install 'cnnkit[openvino]'"
    return ""


def onnx_cache_path(metadata: Metadata) -> Path:
    """Where the ONNX file of the checkpoint with this metadata is cached."""
    from cnnkit.data.datasets import cache_dir

    return cache_dir() / "onnx" / f"{metadata.source_sha256[:32]}.onnx"


def cached_onnx(loaded: LoadedCheckpoint, predictor: Predictor, sample_files: Sequence[str] = (),
                announce: Callable[[str], None] | None = None) -> tuple[Path | None, str]:  # fmt: skip
    """The checked fp32 ONNX file of a checkpoint, built now if it is not cached, and how it came.

    ``announce`` gets :func:`build_notice` before a build starts (a build takes seconds to
    about a minute, and the caller is waiting for its first prediction).

    Returns ``(file, how)``, or ``(None, why not)`` when the export or its check failed
    (remembered beside the cache entry, so a failing model is not re-exported every call).
    """
    if not predictor.metadata.source_sha256:
        return None, "the checkpoint's file hash is unknown, so an ONNX build could not be cached"
    target = onnx_cache_path(predictor.metadata)
    failed = target.with_suffix(".failed.json")
    if target.is_file():
        return target, f"ONNX file cached from an earlier run: {target}"
    if failed.is_file():
        return None, f"an earlier ONNX build failed: {json.loads(failed.read_text())['reason']} ({failed})"
    if announce is not None:
        announce(build_notice(predictor.model))
    start = time.perf_counter()
    try:
        images, what = _check_images(loaded, predictor, sample_files)
    except CnnkitError as exc:  # not remembered: the next call may bring images to check on
        return None, f"no ONNX build: {exc}"
    try:
        parity = _build(predictor, images, target)
    except CnnkitError as exc:
        return None, _remember_failure(failed, f"ONNX build failed: {exc}")
    except OSError as exc:  # a read-only or full cache folder: PyTorch still predicts
        return None, (f"cannot write the ONNX build to {target.parent} ({exc.strerror or exc}); "
                      "point CNNKIT_CACHE_DIR at a writable folder")  # fmt: skip
    if not parity.ok:
        return None, _remember_failure(failed, f"the ONNX build differs from PyTorch ({parity.summary()})")
    seconds = time.perf_counter() - start
    return target, f"ONNX file built in {seconds:.1f} s, logits match PyTorch on {parity.images} {what}; cached"


def build_notice(model: torch.nn.Module | None) -> str:
    """The line said before a first-time ONNX build: what it is, about how long, how to skip it."""
    return (f"building a faster ONNX copy of the model for predict (once per checkpoint, about "
            f"{build_seconds(model)} s on 2 CPU cores; --backend torch skips it) ...")  # fmt: skip


def build_seconds(model: torch.nn.Module | None) -> int:
    """A rough estimate of an ONNX build and its check, in seconds, rounded to 5.

    Exporting traces every layer (its time grows with the number of modules) and the
    check runs PyTorch and ONNX Runtime on :data:`CHECK_IMAGES` images (it grows with the
    parameters): :data:`BUILD_COST` was measured on a 2-core CPU.
    """
    if model is None:
        return BUILD_COST["base"]
    modules = sum(1 for _ in model.modules())
    params = sum(p.numel() for p in model.parameters())
    seconds = BUILD_COST["base"] + BUILD_COST["per_module"] * modules + BUILD_COST["per_million_params"] * params / 1e6
    return max(5, 5 * round(seconds / 5))


def _build(predictor: Predictor, images: torch.Tensor, target: Path) -> Any:
    """Export to a staging file, check it, move it into place only when it passes."""
    from cnnkit.inference import export

    graph = predictor.graph
    assert graph is not None  # a checkpoint's Predictor holds its model
    # a name of its own: two processes building the same checkpoint must not remove each other's file
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.partial")
    try:
        export.export_onnx(graph, images[:2], staging, predictor.metadata, dynamic_batch=True)
        parity = export.check_outputs(export.reference_outputs(graph, images),
                                      export.exported_outputs(staging, "onnx", images), predictor.open_set)
        if parity.ok:
            staging.replace(target)
        return parity
    finally:
        staging.unlink(missing_ok=True)


def _check_images(loaded: LoadedCheckpoint, predictor: Predictor,
                  sample_files: Sequence[str]) -> tuple[torch.Tensor, str]:  # fmt: skip
    """Up to :data:`CHECK_IMAGES` real images: the run's validation split if it is on disk (never
    downloaded: predicting a few files must not fetch a dataset), else ``sample_files``."""
    from cnnkit.inference.export import prepare_files

    try:  # 64 check images are not worth downloading a dataset for
        loaders, _, _ = checkpoint_loaders(loaded, device=torch.device("cpu"), download=False)
        images, _ = first_images(loaders.val or [], CHECK_IMAGES)
        if images is not None:
            return images, "validation images"
    except (CnnkitError, OSError):  # DataError: the run's data is elsewhere; or its classes changed
        pass  # check on the caller's images
    images, _ = prepare_files(list(sample_files[:CHECK_IMAGES]), predictor.metadata) if sample_files else (None, [])
    if images is None:
        raise CnnkitError("no images to check it against PyTorch (the run's data was not found)")
    return images, "of the images to predict"


def _remember_failure(marker: Path, reason: str) -> str:
    with contextlib.suppress(OSError):  # an unwritable cache: the build is tried again next time
        marker.parent.mkdir(parents=True, exist_ok=True)
        write_json(marker, {"reason": reason})
    return reason

"""Exported models (ONNX, TorchScript) that carry their class names and preprocessing,
and the parity check that compares an exported file with the PyTorch model it came from.

Every file is exported from a float32 copy of the model in eval mode on the CPU (the
caller's model is left as it was), written atomically (temp file, fsync, rename) as one
self-contained file, and carries :class:`~cnnkit.inference.predictor.Metadata` as JSON:
ONNX in ``metadata_props`` (key ``cnnkit``, plus readable ``class_names`` and
``preprocess``), TorchScript as the extra file ``cnnkit.json``. ``Predictor.from_onnx``
needs nothing but the file.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnkit.atomic import atomic_write
from cnnkit.checkpoint import unwrap
from cnnkit.confidence import OpenSet, OpenSetModel
from cnnkit.config import EXPORT_FORMATS, ExportOptions, validate
from cnnkit.config.options import DEFAULT_TOLERANCE
from cnnkit.data.folder import ImageLoadError
from cnnkit.errors import CnnkitError, unknown_name
from cnnkit.inference.backends import OnnxBackend, onnx_session
from cnnkit.inference.metadata import METADATA_KEY, PRECISIONS, Metadata
from cnnkit.inference.precision import quantize_int8, to_fp16
from cnnkit.inference.predictor import Predictor, Skipped, expand_inputs

FORMATS = EXPORT_FORMATS
TORCHSCRIPT_METADATA = f"{METADATA_KEY}.json"  # the TorchScript extra file holding Metadata JSON
# Why 1e-3 (absolute, on logits): float32 carries ~7 significant digits, and ONNX Runtime's
# kernels (other conv algorithms, BatchNorm folded into the convs, another summation order)
# round differently from eager PyTorch, more so the deeper the net and the larger its
# logits. Measured on 2 CPU cores with logits of std 5: 2e-6 (LeNet, CifarCNN) to 1e-5
# (ResNet-18); TorchScript runs PyTorch's own kernels and matches exactly. A real export
# fault (BatchNorm or dropout left in training mode, a dropped op, wrong weights) moves
# logits by 1e-2 or more, so 1e-3 leaves room for other CPUs and GPUs' kernels while still
# catching every fault. The tests hold their models to 1e-4. (DEFAULT_TOLERANCE is declared with
# the other export options in cnnkit.config.options.)
_CHUNK = 256  # images per forward pass when computing logits for the parity check


@dataclass
class ExportedFile:
    """One written file and how it was made.

    Attributes:
        path: the file.
        format: ``onnx`` or ``torchscript``.
        exporter: the exporter used (``torch.export`` unless it failed, see ``notes``).
        opset: the ONNX opset (None for TorchScript).
        seconds: wall time of the export and the write.
        notes: what the user should know (an exporter fallback, tracing warnings).
    """

    path: Path
    format: str
    exporter: str
    opset: int | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


@dataclass
class ParityResult:
    """How an exported file's logits compare with PyTorch's on the same images.

    Attributes:
        images: images compared.
        max_abs_diff: largest absolute logit difference (inf when the file gave NaN/inf).
        top1_agreement: fraction of images with the same top-1 class.
        ok: ``max_abs_diff <= tolerance`` and every top-1 agrees, near-ties excepted.
        tolerance: the bound on ``max_abs_diff``.
        near_ties: top-1 disagreements excused because PyTorch itself ranked the two
            classes within ``tolerance`` of each other (see :func:`check_parity`).
        known_changed: for a model with an open set, images whose known/unknown decision
            differs from PyTorch's, near-threshold ties excused (None: no open set).
    """

    images: int
    max_abs_diff: float
    top1_agreement: float
    ok: bool
    tolerance: float
    near_ties: int = 0
    known_changed: int | None = None

    def summary(self) -> str:
        """``max |Δlogit| 3.1e-06, top-1 agreement 100.00% (tolerance 1e-03): OK``."""
        ties = f", {self.near_ties} near-tie(s) excused" if self.near_ties else ""
        if self.known_changed is not None:
            ties += f", known/unknown decisions changed: {self.known_changed}"
        short = f"{self.tolerance:.0e}"
        tolerance = short if float(short) == self.tolerance else f"{self.tolerance:.2e}"
        return (f"max |Δlogit| {self.max_abs_diff:.1e}, top-1 agreement {self.top1_agreement:.2%}{ties} "
                f"(tolerance {tolerance}): {'OK' if self.ok else 'FAILED'}")  # fmt: skip


@dataclass
class AccuracyCheck:
    """Top-1 of the exported file and of PyTorch on the same images.

    Attributes:
        images: images scored.
        agreement: fraction of images with the same top-1 class in both.
        reference_top1, exported_top1: accuracy against the labels (None without labels).
    """

    images: int
    agreement: float
    reference_top1: float | None = None
    exported_top1: float | None = None

    @property
    def drop_points(self) -> float | None:
        """Accuracy lost by the export, in percentage points (negative: it gained)."""
        if self.reference_top1 is None or self.exported_top1 is None:
            return None
        return 100 * (self.reference_top1 - self.exported_top1)

    def summary(self) -> str:
        """``PyTorch 97.40 %, exported 97.20 % (-0.20 points), top-1 agreement 99.60 %``."""
        agreement = f"top-1 agreement {self.agreement:.2%}"
        if self.drop_points is None:
            return agreement + " (no labels: accuracy not scored)"
        return (f"top-1 PyTorch {self.reference_top1:.2%}, exported {self.exported_top1:.2%} "
                f"({round(-self.drop_points, 2) + 0.0:+.2f} points), {agreement}")  # fmt: skip


def compare_accuracy(reference: torch.Tensor, exported: torch.Tensor, labels: torch.Tensor | None) -> AccuracyCheck:
    """Score logits ``[N, K]`` of PyTorch and of the exported file against ``labels`` ``[N]``."""
    ref_top, out_top = reference.argmax(1).cpu(), exported.argmax(1).cpu()
    agreement = float((ref_top == out_top).double().mean())
    if labels is None:
        return AccuracyCheck(len(ref_top), agreement)
    labels = labels.cpu()
    return AccuracyCheck(len(ref_top), agreement, float((ref_top == labels).double().mean()),
                         float((out_top == labels).double().mean()))  # fmt: skip


# ----------------------------------------------------------------------------- export


def export_model(model: nn.Module, example: torch.Tensor, path: str | Path, metadata: Metadata,
                 options: ExportOptions | None = None, *, calibration: torch.Tensor | None = None) -> ExportedFile:
    """Export to ``options.fmt`` (``onnx`` or ``torchscript``) with its ``dynamic_batch``,
    ``opset`` and ``precision`` (see :func:`export_onnx`; default: ONNX, fp32, batch 1).

    Raises:
        UsageError: options :func:`cnnkit.config.validate` refuses (an unknown format, int8 TorchScript...).
    """
    options = options or ExportOptions()
    validate(options)
    if options.fmt == "onnx":
        return export_onnx(model, example, path, metadata, dynamic_batch=options.dynamic_batch, opset=options.opset,
                           precision=options.precision, calibration=calibration)  # fmt: skip
    return export_torchscript(model, example, path, metadata)


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, metadata: Metadata, *,
                dynamic_batch: bool = False, opset: int | None = None, precision: str = "fp32",
                calibration: torch.Tensor | None = None) -> ExportedFile:  # fmt: skip
    """Write ``model`` as one ONNX file: input ``input`` ``[B, C, H, W]``, output ``logits`` ``[B, K]``.

    Args:
        model: the classifier (wrappers such as ``torch.compile``, DDP or HeadOnly are unwrapped).
        example: a normalised input batch ``[B, C, H, W]``; its batch size is the file's
            fixed batch size unless ``dynamic_batch``.
        path: the file to write (its folder is created).
        metadata: class names and preprocessing to store in the file.
        dynamic_batch: let the batch dimension vary (named ``batch``).
        opset: ONNX opset version (None: the exporter's default).
        precision: ``fp32``, ``fp16`` (:func:`~cnnkit.inference.precision.to_fp16`) or
            ``int8`` (:func:`~cnnkit.inference.precision.quantize_int8`); input and output
            stay float32. The metadata records it.
        calibration: int8 only: normalised images ``[N, C, H, W]`` to calibrate on.

    Uses the ``torch.export``-based exporter; if that fails, the legacy TorchScript-based
    one, and ``notes`` says so.

    Raises:
        CnnkitError: onnx/onnxscript missing, neither exporter could convert the model, or
            int8 without calibration images.
    """
    if precision not in PRECISIONS:
        raise unknown_name("precision", precision, PRECISIONS)
    if precision == "int8" and calibration is None:
        raise CnnkitError("--precision int8 needs calibration images")
    onnx = _require_onnx()
    start = time.perf_counter()
    model, example = _ready(model, example)
    if dynamic_batch and len(example) < 2:
        example = example.expand(2, *example.shape[1:])  # a batch of 1 would fix the dimension at 1
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    exporter, notes = "torch.export", []
    with tempfile.TemporaryDirectory(prefix=".cnnkit-export-", dir=path.parent) as tmp:
        raw = Path(tmp) / "model.onnx"
        try:
            with _exporter_log(notes):
                _onnx_dynamo(model, example, raw, dynamic_batch, opset)
        except Exception as exc:  # the new exporter raises many types; the legacy one may still work
            first = _first_line(exc)
            exporter = "torchscript-based (legacy)"
            notes.append(f"the torch.export-based ONNX exporter failed ({first}); "
                         "used the legacy TorchScript-based exporter instead")  # fmt: skip
            try:
                _onnx_legacy(model, example, raw, dynamic_batch, opset)
            except Exception as legacy:
                raise CnnkitError(f"cannot export the model to ONNX: torch.export: {first}; "
                                  f"legacy exporter: {_first_line(legacy)}") from None  # fmt: skip
        proto = onnx.load(str(raw))  # also pulls in any external-data sidecar: one file comes out
    proto = _convert(proto, precision, calibration, notes)
    _add_metadata(proto, dataclasses.replace(metadata, precision=precision))
    try:
        data = proto.SerializeToString()
    except ValueError as exc:  # protobuf refuses messages over 2 GB
        raise CnnkitError(f"the ONNX model is too large for one file ({exc})") from None
    atomic_write(path, lambda handle: handle.write(data))
    opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return ExportedFile(path, "onnx", exporter, opset_used, time.perf_counter() - start, notes)


def _convert(proto: Any, precision: str, calibration: torch.Tensor | None, notes: list[str]) -> Any:
    if precision == "fp16":
        return to_fp16(proto)
    if precision == "int8":
        assert calibration is not None  # checked by export_onnx
        return quantize_int8(proto, calibration, notes)
    return proto


def _onnx_dynamo(model: nn.Module, example: torch.Tensor, path: Path, dynamic: bool, opset: int | None) -> None:
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=_output_names(model),
                      opset_version=opset, dynamo=True, dynamic_shapes=shapes, external_data=False,
                      verbose=False)  # fmt: skip


@contextlib.contextmanager
def _exporter_log(notes: list[str]) -> Iterator[None]:
    """The exporter's logged warnings (e.g. "converting to opset 17") become ``notes``
    rather than stray lines on stderr; nothing is hidden, it is said once, in one place."""

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            first = record.getMessage().strip().split("\n")[0].split(". ")[0].rstrip(".")
            notes.append(f"exporter: {first}")

    handler = Collect(logging.WARNING)
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    saved = [(logger.handlers, logger.propagate) for logger in loggers]
    for logger in loggers:  # torch gives "torch.onnx" its own stderr handler: replace it for now
        logger.handlers, logger.propagate = [handler], False
    try:
        yield
    finally:
        for logger, (handlers, propagate) in zip(loggers, saved, strict=True):
            logger.handlers, logger.propagate = handlers, propagate


def _onnx_legacy(model: nn.Module, example: torch.Tensor, path: Path, dynamic: bool, opset: int | None) -> None:
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the fallback is already in the notes
        torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=_output_names(model),
                          opset_version=opset, dynamo=False, dynamic_axes=axes)  # fmt: skip


def _add_metadata(proto: Any, metadata: Metadata) -> None:
    """Store the metadata JSON plus readable copies of the class names and preprocessing."""
    values = {
        METADATA_KEY: metadata.to_json(),
        "class_names": json.dumps(metadata.class_names),
        "preprocess": json.dumps(metadata.preprocess.to_dict()),
    }
    kept = [prop for prop in proto.metadata_props if prop.key not in values]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def export_torchscript(model: nn.Module, example: torch.Tensor, path: str | Path, metadata: Metadata) -> ExportedFile:
    """Write ``model`` traced with ``example`` as TorchScript, metadata in ``cnnkit.json``.

    Tracing records the operations ``example`` went through; the tracer's warnings
    (e.g. Python control flow that depends on values) become ``notes``. TorchScript is
    deprecated in recent PyTorch; ONNX is the format to prefer for deployment.
    """
    start = time.perf_counter()
    model, example = _ready(model, example)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with torch.no_grad():
                traced = torch.jit.trace(model, example)
        except Exception as exc:  # tracing fails in many ways (unsupported ops, non-tensor outputs)
            raise CnnkitError(f"cannot trace the model to TorchScript: {_first_line(exc)}; try --format onnx") from None
        extra = {TORCHSCRIPT_METADATA: metadata.to_json()}
        atomic_write(path, lambda handle: torch.jit.save(traced, handle, _extra_files=extra))
    notes = sorted({f"tracing: {w.message}" for w in caught if issubclass(w.category, torch.jit.TracerWarning)})
    return ExportedFile(path, "torchscript", "torch.jit.trace", None, time.perf_counter() - start, notes)


def load_torchscript(path: str | Path) -> tuple[torch.jit.ScriptModule, Metadata]:
    """A TorchScript file written by :func:`export_torchscript` (on the CPU) and its metadata."""
    path = Path(path)
    if not path.is_file():
        raise CnnkitError(f"TorchScript file not found: {path}")
    extra = {TORCHSCRIPT_METADATA: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
        try:
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except RuntimeError as exc:
            raise CnnkitError(f"{path} is not a loadable TorchScript file ({_first_line(exc)})") from None
    if not extra[TORCHSCRIPT_METADATA]:
        raise CnnkitError(f"{path} carries no cnnkit metadata; export it with `cnnkit export`")
    return module.eval(), Metadata.from_json(extra[TORCHSCRIPT_METADATA], str(path))


def _ready(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
    """A float32, eval-mode, contiguous CPU copy of the plain model, and a matching example."""
    if example.dim() != 4 or len(example) == 0:
        raise CnnkitError(f"the example input must be a batch [B, C, H, W]; got shape {tuple(example.shape)}")
    model = copy.deepcopy(unwrap(model)).float().cpu().eval()
    model.to(memory_format=torch.contiguous_format)  # the Predictor may have made it channels-last
    for param in model.parameters():
        param.requires_grad_(False)
    return model, example.detach().float().cpu().contiguous()


def _require_onnx() -> Any:
    try:
        import onnx
        import onnxscript  # noqa: F401  (the torch.export-based exporter needs it)
    except ImportError as exc:
        raise CnnkitError(f"ONNX export needs onnx and onnxscript ({exc.name} is missing): "
                          "pip install 'cnnkit[export]'") from None  # fmt: skip
    return onnx


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


# ----------------------------------------------------------------------------- parity


Outputs = tuple[torch.Tensor, torch.Tensor | None]  # logits [N, K] and, with an open set, known-ness [N]


def _output_names(model: nn.Module) -> list[str]:
    """``logits``, and ``known`` for a model with an open set (:class:`OpenSetModel`)."""
    return ["logits", "known"] if isinstance(model, OpenSetModel) else ["logits"]


def _outputs(out: Any) -> Outputs:
    if isinstance(out, tuple | list):
        known = out[1] if len(out) > 1 else None
        return out[0].float(), known.float().reshape(-1) if known is not None else None
    return out.float(), None


def _joined(parts: list[Outputs]) -> Outputs:
    known = [k for _, k in parts if k is not None]
    return torch.cat([logits for logits, _ in parts]), torch.cat(known) if known else None


@torch.inference_mode()
def reference_outputs(model: nn.Module, images: torch.Tensor) -> Outputs:
    """PyTorch logits ``[N, K]`` (and an open set's known-ness ``[N]``, else None) of normalised
    ``images`` ``[N, C, H, W]``: float32, eval mode, CPU."""
    model, _ = _ready(model, images[:1])
    return _joined([_outputs(model(chunk)) for chunk in images.float().cpu().split(_CHUNK)])


def exported_outputs(path: str | Path, fmt: str, images: torch.Tensor) -> Outputs:
    """Run an exported file on normalised ``images`` ``[N, C, H, W]``: logits ``[N, K]`` and,
    for a file with an open set, its known-ness ``[N]`` (else None).

    ONNX files run in ONNX Runtime (as ``Predictor.from_onnx`` runs them), TorchScript
    files with ``torch.jit.load`` on the CPU.
    """
    if fmt == "onnx":
        session, _ = onnx_session(path)
        run: Callable[[torch.Tensor], Any] = OnnxBackend(session).outputs
    elif fmt == "torchscript":
        module, _ = load_torchscript(path)
        run = module
    else:
        raise unknown_name("format", fmt, FORMATS)
    with torch.inference_mode():
        return _joined([_outputs(run(chunk)) for chunk in images.float().cpu().split(_CHUNK)])


def known_changes(reference: torch.Tensor | None, exported: torch.Tensor | None, threshold: float,
                  tolerance: float = DEFAULT_TOLERANCE) -> int | None:  # fmt: skip
    """Images whose known/unknown decision (score >= ``threshold``) differs between PyTorch and
    the file, those whose PyTorch score lies within ``tolerance`` of the threshold excused;
    None when neither gives known-ness scores.

    Raises:
        CnnkitError: only one of them gives known-ness scores.
    """
    if reference is None and exported is None:
        return None
    if reference is None or exported is None:
        raise CnnkitError("the exported file and PyTorch disagree on whether the model has an open set")
    changed = (reference >= threshold) != (exported >= threshold)
    return int((changed & ((reference - threshold).abs() > tolerance)).sum())


def check_parity(reference: torch.Tensor, exported: torch.Tensor, tolerance: float = DEFAULT_TOLERANCE) -> ParityResult:
    """Compare the logits ``[N, K]`` of the exported file with PyTorch's.

    ``ok`` needs every logit within ``tolerance`` and the same top-1 class for every
    image, with one exception: a top-1 change is excused when PyTorch's own logits for the
    two classes involved differ by at most ``tolerance``. Rounding may move every logit
    by that much, so such an image is a tie that either runtime may break either way, not
    an export fault (``near_ties`` counts them; ``top1_agreement`` stays the raw figure).
    Any other change fails even when every logit is within ``tolerance`` (a margin of up
    to ``2 * tolerance`` can flip then): a changed class is what users notice.

    Raises:
        CnnkitError: no images, or logits of different shapes.
    """
    if reference.shape != exported.shape:
        raise CnnkitError(f"the exported model returns logits of shape {tuple(exported.shape)}, "
                          f"PyTorch {tuple(reference.shape)}")  # fmt: skip
    if reference.dim() != 2 or len(reference) == 0:
        raise CnnkitError(f"parity needs logits [N, K] of at least one image; got shape {tuple(reference.shape)}")
    ref, out = reference.detach().double().cpu(), exported.detach().double().cpu()
    finite = bool(torch.isfinite(out).all())
    max_diff = float((ref - out).abs().max()) if finite else float("inf")
    ref_top, out_top = ref.argmax(1, keepdim=True), out.argmax(1, keepdim=True)
    agree = (ref_top == out_top).squeeze(1)
    gap = (ref.gather(1, ref_top) - ref.gather(1, out_top)).squeeze(1)  # >= 0; 0 where they agree
    near_ties = int((~agree & (gap <= tolerance)).sum())
    agreement = float(agree.double().mean())
    ok = finite and max_diff <= tolerance and int((~agree).sum()) == near_ties
    return ParityResult(len(ref), max_diff, agreement, ok, float(tolerance), near_ties)


def check_outputs(reference: Outputs, exported: Outputs, open_set: OpenSet | None,
                  tolerance: float = DEFAULT_TOLERANCE) -> ParityResult:  # fmt: skip
    """:func:`check_parity` of the logits, and for a model with an open set the known/unknown
    decisions (:func:`known_changes`): ``ok`` also needs every decision to agree."""
    parity = check_parity(reference[0], exported[0], tolerance)
    if open_set is None:
        return parity
    changed = known_changes(reference[1], exported[1], open_set.threshold, tolerance)
    return dataclasses.replace(parity, known_changed=changed, ok=parity.ok and changed == 0)


def prepare_files(paths: Sequence[str], metadata: Metadata) -> tuple[torch.Tensor | None, list[Skipped]]:
    """Image files, folders or glob patterns -> normalised ``[N, C, H, W]`` (as ``Predictor.prepare``
    makes them) and the inputs skipped (unreadable files, patterns matching nothing)."""
    files, skipped = expand_inputs(paths)
    prepare = Predictor(lambda images: images, metadata).prepare  # preprocessing only; no model runs
    tensors = []
    for file in files:
        try:
            tensors.append(prepare(file))
        except ImageLoadError as exc:
            skipped.append(Skipped(file, exc.reason))
        except Exception as exc:  # a decoder bug in one file must not end the check
            skipped.append(Skipped(file, f"cannot decode: {exc.__class__.__name__}: {exc}"))
    return (torch.stack(tensors) if tensors else None), skipped

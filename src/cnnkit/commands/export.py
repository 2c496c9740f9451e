"""``cnnkit export``: ONNX or TorchScript with classes and preprocessing inside, checked
against PyTorch on the run's validation images."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cnnkit.errors import CnnkitError, DataError, UsageError, unknown_name
from cnnkit.inference import export
from cnnkit.inference.loading import LoadedCheckpoint, checkpoint_loaders, load_checkpoint
from cnnkit.inference.predictor import checkpoint_metadata


@dataclass
class ExportResult:
    """What ``cnnkit export`` wrote and how the file compares with PyTorch.

    Attributes:
        path: the exported file (written even when parity failed, for inspection).
        format: ``onnx`` or ``torchscript``.
        parity: the exported file's logits against PyTorch's on ``checked``.
        checked: what the parity images were (``validation images`` or ``given images``).
        exported: how the file was made (exporter, opset, seconds).
        notes: exporter fallbacks, tracing warnings, skipped image files.
    """

    path: Path
    format: str
    parity: export.ParityResult
    checked: str
    exported: export.ExportedFile
    notes: list[str] = field(default_factory=list)


def export_checkpoint(
    path: str | Path, fmt: str = "onnx", *, out: str | Path | None = None, dynamic_batch: bool = False,
    opset: int | None = None, check_images: list[str] | None = None, tolerance: float = export.DEFAULT_TOLERANCE,
    data_dir: str | None = None, count: int = 64,
) -> ExportResult:  # fmt: skip
    """Export a checkpoint (or run folder) to ONNX or TorchScript and check it against PyTorch.

    Args:
        path: run folder (its ``best.pt``) or ``.pt`` checkpoint.
        fmt: ``onnx`` or ``torchscript``.
        out: the file to write (default: ``RUN/export/model.onnx`` or
            ``model.torchscript.pt`` for a run folder, else beside the ``.pt`` file).
        dynamic_batch: ONNX only: any batch size (default: a fixed batch of 1).
        opset: ONNX only: opset version (default: the exporter's).
        check_images: image files/folders for the parity check (default: the first
            ``count`` images of the run's validation split).
        tolerance: largest absolute logit difference that passes.
        data_dir: folder holding the run's dataset, if not where it was trained.
        count: validation images to check when no ``check_images`` are given.

    Raises:
        UsageError: an unknown format, an ONNX-only option with TorchScript, a bad tolerance.
        CnnkitError: no checkpoint, no parity images, or an export failure.
    """
    _check_options(fmt, dynamic_batch, opset, tolerance, count)
    loaded = load_checkpoint(path)
    images, checked, notes = _parity_images(loaded, check_images, data_dir, count)
    target = Path(out) if out else _export_path(Path(path), loaded.path, fmt)
    # the example fixes the file's batch size (1) unless dynamic_batch; any image traces the same graph
    exported = export.export_model(loaded.model, images[:1], target, checkpoint_metadata(loaded.checkpoint), fmt,
                                   dynamic_batch=dynamic_batch, opset=opset)  # fmt: skip
    reference = export.reference_logits(loaded.model, images)
    parity = export.check_parity(reference, export.exported_logits(exported.path, fmt, images), tolerance)
    return ExportResult(exported.path, fmt, parity, checked, exported, exported.notes + notes)


def _check_options(fmt: str, dynamic_batch: bool, opset: int | None, tolerance: float, count: int) -> None:
    if fmt not in export.FORMATS:
        raise unknown_name("format", fmt, export.FORMATS)
    if fmt != "onnx" and (dynamic_batch or opset is not None):
        raise UsageError(
            "--dynamic-batch and --opset apply to --format onnx (a traced TorchScript file takes any batch)"
        )
    if opset is not None and opset < 7:
        raise UsageError(f"--opset must be 7 or more, got {opset}")
    if not tolerance >= 0:  # also refuses NaN
        raise UsageError(f"--tolerance must be 0 or more, got {tolerance}")
    if count < 1:
        raise UsageError(f"the parity check needs at least 1 image, got count={count}")


def _export_path(given: Path, checkpoint: Path, fmt: str) -> Path:
    suffix = ".onnx" if fmt == "onnx" else ".torchscript.pt"
    if given.is_dir():
        return given / "export" / f"model{suffix}"
    return checkpoint.with_name(checkpoint.stem + suffix)


def _parity_images(loaded: LoadedCheckpoint, files: list[str] | None, data_dir: str | None,
                   count: int) -> tuple[torch.Tensor, str, list[str]]:  # fmt: skip
    """Normalised images ``[N, C, H, W]`` for the parity check, what they are, and notes."""
    if files:
        images, skipped = export.prepare_files(files, checkpoint_metadata(loaded.checkpoint))
        notes = [f"skipped {item.source}: {item.reason}" for item in skipped]
        if images is None:
            raise CnnkitError(f"none of the --check-images could be used ({'; '.join(notes)[:500]})")
        return images, "given images", notes
    try:
        loaders, _, _ = checkpoint_loaders(loaded, data_dir=data_dir, device=torch.device("cpu"))
    except DataError as err:
        raise CnnkitError(
            f"the parity check needs the run's validation images, which were not found ({err}); "
            "pass --check-images FILES, or --data-dir FOLDER holding the run's data"
        ) from None
    batches, have = [], 0
    for images, _ in loaders.val:
        batches.append(images[: count - have].cpu().float())
        have += len(batches[-1])
        if have >= count:
            break
    if not batches:
        raise CnnkitError("the run's validation split is empty; pass --check-images FILES")
    return torch.cat(batches), "validation images", []


def main(args: Any) -> None:
    """``cnnkit export``."""
    result = export_checkpoint(args.checkpoint, args.fmt, out=args.out, dynamic_batch=args.dynamic_batch,
                               opset=args.opset, check_images=args.check_images, tolerance=args.tolerance,
                               data_dir=args.data_dir)  # fmt: skip
    made = result.exported
    how = ", ".join([made.format] + ([f"opset {made.opset}"] if made.opset else []) + [made.exporter])
    print(f"wrote {result.path} ({_file_size(result.path.stat().st_size)}; {how}; {made.seconds:.1f}s)")
    for note in result.notes:
        print(f"note: {note}")
    print(f"parity on {result.parity.images} {result.checked}: {result.parity.summary()}")
    if not result.parity.ok:
        raise CnnkitError(f"the exported file's logits differ from PyTorch's beyond --tolerance {args.tolerance:g}; "
                          f"{result.path} was written anyway, for inspection")  # fmt: skip


def _file_size(size: int) -> str:
    if size < 1000:
        return f"{size} bytes"
    return f"{size / 1e3:.1f} kB" if size < 1e6 else f"{size / 1e6:.1f} MB"

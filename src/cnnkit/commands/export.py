"""``cnnkit export``: ONNX or TorchScript with classes and preprocessing inside, checked
against PyTorch on the run's validation images."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cnnkit.config import EXPORT_SUFFIXES, ExportOptions, option_values, options_from_args, validate
from cnnkit.config.options import DEFAULT_ALLOW_DROP
from cnnkit.errors import CnnkitError, DataError
from cnnkit.inference import export
from cnnkit.inference.loading import LoadedCheckpoint, checkpoint_loaders, first_images, load_checkpoint
from cnnkit.inference.metadata import checkpoint_metadata


@dataclass
class ExportResult:
    """What ``cnnkit export`` wrote and how the file compares with PyTorch.

    Attributes:
        path: the exported file (for fp32 written even when parity failed, for inspection;
            a refused fp16/int8 file is not kept).
        format: ``onnx`` or ``torchscript``.
        precision: ``fp32``, ``fp16`` or ``int8``.
        parity: the exported file's logits against PyTorch's on ``checked``.
        accuracy: top-1 of both on the same images (and their labels, when known).
        checked: what the check images were (``validation images``, ``test images`` or ``given images``).
        exported: how the file was made (exporter, opset, seconds).
        calibrated: training images int8 was calibrated on (0 otherwise).
        notes: exporter fallbacks, tracing warnings, skipped image files.
        allow_drop: fp16/int8: the accuracy points the file may lose (``--allow-drop``).
    """

    path: Path
    format: str
    precision: str
    parity: export.ParityResult
    accuracy: export.AccuracyCheck
    checked: str
    exported: export.ExportedFile
    calibrated: int = 0
    notes: list[str] = field(default_factory=list)
    allow_drop: float = DEFAULT_ALLOW_DROP

    @property
    def within_drop(self) -> bool:
        """The accuracy lost (without labels: the top-1 labels changed) is within ``allow_drop``."""
        return _loss_points(self.accuracy) <= self.allow_drop + 1e-9

    @property
    def passed(self) -> bool:
        """fp32: the logits match (:func:`cnnkit.inference.export.check_parity`). fp16/int8:
        accuracy lost within the allowed drop (see :func:`export_checkpoint`)."""
        return self.parity.ok if self.precision == "fp32" else self.within_drop


@dataclass
class _CheckSet:
    """Normalised images ``[N, C, H, W]`` the export is checked on, their labels if known, what they are."""

    images: torch.Tensor
    labels: torch.Tensor | None
    what: str
    notes: list[str] = field(default_factory=list)


def export_checkpoint(path: str | Path, fmt: str | None = None, *, options: ExportOptions | None = None,
                      **values: Any) -> ExportResult:
    """Export a checkpoint (or run folder) and check the file against PyTorch on real images.

    Args:
        path: run folder (its ``best.pt``) or ``.pt`` checkpoint.
        fmt: ``onnx`` or ``torchscript`` (None: the options' own, onnx by default).
        options: :class:`~cnnkit.config.ExportOptions` (default: its defaults), whose fields
            may also be given as keywords:

            * ``out``: the file to write (default: ``RUN/export/model.onnx`` (``model.fp16.onnx``,
              ``model.int8.onnx``) or ``model.torchscript.pt`` for a run folder, else beside the ``.pt``);
            * ``dynamic_batch``, ``opset``: ONNX only: any batch size (default: a fixed batch
              of 1); the opset version (default: the exporter's);
            * ``check_images``: image files/folders to check on (default: up to ``check_count``
              (also accepted as ``count``) images of the run's validation split, or its test
              split when it has none); ``data_dir``: where the run's dataset is, if it moved;
            * ``tolerance``: fp32: largest absolute logit difference that passes;
            * ``precision``: ``fp32``, ``fp16`` or ``int8`` (ONNX only); ``calibration``: int8:
              training images (the run's preprocessing, seeded random order) that set the
              activation ranges; ``allow_drop``: fp16/int8: accuracy points the file may lose
              against PyTorch on the check images (without labels: top-1 agreement may fall
              that far below 100 %). A file that loses more is refused: not written, and
              :class:`CnnkitError` says so;
            * ``trust_code``: your own model code that may be imported (see :mod:`cnnkit.usercode`).

    Raises:
        UsageError: an unknown format or precision, an ONNX-only option with TorchScript, bad values
            (:func:`cnnkit.config.validate`), an ``out`` whose suffix is not the format's (:data:`SUFFIXES`).
        CnnkitError: no checkpoint, no check or calibration images, an export failure, a refused file.
    """
    if "count" in values:  # the keyword of earlier versions
        values["check_count"] = values.pop("count")
    opts = option_values(options or ExportOptions(), {**values, "checkpoint": str(path)}
                         | ({"fmt": fmt} if fmt is not None else {}))  # fmt: skip
    validate(opts)
    loaded = load_checkpoint(path, trust_code=opts.trust_code)
    run_data = _RunData(loaded, opts.data_dir, shuffle_train=opts.precision == "int8")
    checks = _check_set(loaded, opts.check_images, run_data, opts.check_count)
    cal = _calibration_images(run_data, opts.calibration) if opts.precision == "int8" else None
    target = Path(opts.out) if opts.out else _export_path(Path(path), loaded.path, opts.fmt, opts.precision)
    staging = target.with_name(f".{target.name}.partial") if opts.precision != "fp32" else target
    # the example fixes the file's batch size (1) unless dynamic_batch; any image traces the same graph
    try:
        made = export.export_model(loaded.graph, checks.images[:1], staging, checkpoint_metadata(loaded.checkpoint),
                                   opts, calibration=cal)  # fmt: skip
        reference_out = export.reference_outputs(loaded.graph, checks.images)
        exported_out = export.exported_outputs(made.path, opts.fmt, checks.images)
        parity = export.check_outputs(reference_out, exported_out, loaded.checkpoint.open_set, opts.tolerance)
        reference, logits = reference_out[0], exported_out[0]
        result = ExportResult(target, opts.fmt, opts.precision, parity,
                              export.compare_accuracy(reference, logits, checks.labels), checks.what, made,
                              0 if cal is None else len(cal), made.notes + checks.notes, opts.allow_drop)  # fmt: skip
        if staging != target and result.within_drop:
            staging.replace(target)
    finally:
        if staging != target:
            staging.unlink(missing_ok=True)  # gone when it was moved into place; a refused file is not kept
    made.path = target
    return result


def _loss_points(accuracy: export.AccuracyCheck) -> float:
    """What ``--allow-drop`` bounds: accuracy points lost, or without labels the percentage of
    top-1 labels that changed."""
    drop = accuracy.drop_points
    return 100 * (1 - accuracy.agreement) if drop is None else drop


SUFFIXES = EXPORT_SUFFIXES  # the file name endings of each format (checked by validate)


def _export_path(given: Path, checkpoint: Path, fmt: str, precision: str) -> Path:
    suffix = (".onnx" if precision == "fp32" else f".{precision}.onnx") if fmt == "onnx" else ".torchscript.pt"
    if given.is_dir():
        return given / "export" / f"model{suffix}"
    return checkpoint.with_name(checkpoint.stem + suffix)


def _check_set(loaded: LoadedCheckpoint, files: list[str] | None, run_data: _RunData, count: int) -> _CheckSet:
    """The images to check the export on: the given files (no labels), else up to ``count``
    labelled images of the run's validation split (its test split when it has none)."""
    if files:
        images, skipped = export.prepare_files(files, checkpoint_metadata(loaded.checkpoint))
        notes = [f"skipped {item.source}: {item.reason}" for item in skipped]
        if images is None:
            raise CnnkitError(f"none of the --check-images could be used ({'; '.join(notes)[:500]})")
        return _CheckSet(images, None, "given images", notes)
    loaders = run_data.loaders("the check against PyTorch needs the run's validation images",
                               "pass --check-images FILES, or --data-dir FOLDER holding the run's data")  # fmt: skip
    split, loader = ("validation", loaders.val) if loaders.val is not None else ("test", loaders.test)
    images, labels = first_images(loader, count)
    if images is None:
        raise CnnkitError(f"the run's {split} split is empty; pass --check-images FILES")
    return _CheckSet(images, labels, f"{split} images")


def _calibration_images(run_data: _RunData, count: int) -> torch.Tensor:
    """``count`` training images of the run, in its seeded random order, with its preprocessing."""
    loaders = run_data.loaders("int8 calibration needs the run's training images",
                               "pass --data-dir FOLDER holding the run's data, or export --precision fp16")  # fmt: skip
    images, _ = first_images(loaders.train, count)
    if images is None:
        raise CnnkitError("the run's training split is empty: nothing to calibrate int8 on")
    return images


class _RunData:
    """The run's loaders, built the first time they are needed and then shared: the check
    images and int8's calibration images come from one build of the dataset.

    ``shuffle_train``: the training loader in the run's seeded random order (calibration).
    """

    def __init__(self, loaded: LoadedCheckpoint, data_dir: str | None, shuffle_train: bool) -> None:
        self.loaded, self.data_dir, self.shuffle_train = loaded, data_dir, shuffle_train
        self._loaders: Any = None

    def loaders(self, need: str, remedy: str) -> Any:
        """The loaders; ``need`` and ``remedy`` word the error when the run's data is missing."""
        if self._loaders is None:
            try:
                self._loaders, _, _ = checkpoint_loaders(self.loaded, data_dir=self.data_dir,
                                                         device=torch.device("cpu"),
                                                         shuffle_train=self.shuffle_train)  # fmt: skip
            except DataError as err:
                raise CnnkitError(f"{need}, which were not found ({err}); {remedy}") from None
        return self._loaders


def main(args: Any) -> None:
    """``cnnkit export``."""
    result = export_checkpoint(args.checkpoint, options=options_from_args(ExportOptions, args))
    made = result.exported
    how = ", ".join([made.format, result.precision] + ([f"opset {made.opset}"] if made.opset else []) + [made.exporter])
    if result.passed or result.precision == "fp32":  # a failed fp32 file stays, for inspection
        print(f"wrote {result.path} ({_file_size(result.path.stat().st_size)}; {how}; {made.seconds:.1f}s)")
    if result.calibrated:
        print(f"int8 calibrated on {result.calibrated} training images (min/max, per-channel weights)")
    for note in result.notes:
        print(f"note: {note}")
    print(f"check on {result.accuracy.images} {result.checked}: {result.accuracy.summary()}")
    print(f"logits: {result.parity.summary()}" if result.precision == "fp32" else
          f"logits: max |Δlogit| {result.parity.max_abs_diff:.1e} ({result.precision} rounds every logit; "
          f"the accuracy above decides, --allow-drop {args.allow_drop:g} points)")  # fmt: skip
    if not result.passed:
        _refuse(result, args)


def _refuse(result: ExportResult, args: Any) -> None:
    if result.precision == "fp32":
        raise CnnkitError(f"the exported file's logits differ from PyTorch's beyond --tolerance {args.tolerance:g}; "
                          f"{result.path} was written anyway, for inspection")  # fmt: skip
    drop = result.accuracy.drop_points
    lost = f"loses {drop:.2f} accuracy points" if drop is not None else \
        f"changes {1 - result.accuracy.agreement:.2%} of top-1 labels"
    raise CnnkitError(f"the {result.precision} file {lost} against PyTorch on {result.accuracy.images} "
                      f"{result.checked}, more than --allow-drop {args.allow_drop:g}; it was not written. "
                      f"Pass --allow-drop {_accepting(result.accuracy)} to accept it, or export --precision "
                      "fp16/fp32")  # fmt: skip


def _accepting(accuracy: export.AccuracyCheck) -> str:
    """The smallest ``--allow-drop`` (2 decimals, at most 100) that accepts this file."""
    return f"{min(100.0, math.ceil(_loss_points(accuracy) * 100 - 1e-6) / 100):.2f}"


def _file_size(size: int) -> str:
    if size < 1000:
        return f"{size} bytes"
    return f"{size / 1e3:.1f} kB" if size < 1e6 else f"{size / 1e6:.1f} MB"

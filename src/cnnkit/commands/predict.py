"""``cnnkit predict``: classify image files, folders or globs with a checkpoint or ONNX file."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnkit.errors import CnnkitError, UsageError

SKIPPED_SHOWN = 20  # skipped files listed on the terminal; --out files list all of them


@dataclass
class PredictSummary:
    """What ``cnnkit predict`` did: counts, skipped files, throughput and where results went."""

    predicted: int
    skipped: list[Any]
    unknown: int
    seconds: float
    out: Path | None
    backend: str
    backend_note: str = ""

    def as_dict(self) -> dict[str, Any]:
        rate = self.predicted / max(self.seconds, 1e-9)
        return {"predicted": self.predicted, "skipped": len(self.skipped), "unknown": self.unknown,
                "seconds": round(self.seconds, 3), "images_per_second": round(rate, 1), "backend": self.backend}


def predict(
    model: str | Path,
    inputs: list[str],
    *,
    out: str | Path | None = None,
    backend: str = "auto",
    device: str = "cpu",
    topk: int = 5,
    batch_size: int = 64,
    workers: int | None = None,
    tta: bool | str | None = None,
    threshold: float | None = None,
    progress: bool = True,
    amp: str = "off",
) -> PredictSummary:
    """Predict every image among ``inputs`` (files, folders, globs), streaming results to ``out``.

    ``backend``: ``auto`` (ONNX Runtime when the export extra is installed, see
    :mod:`cnnkit.inference.runtime`), ``torch``, ``onnxruntime`` or ``openvino``.
    ``amp`` (torch backend): ``off`` (float32), ``bf16``, ``fp16`` or ``auto`` (bf16 on CUDA).
    ``tta``: None uses the run's own test-time augmentation (as ``cnnkit eval`` does),
    ``False``/``"none"`` none, ``True`` the run's or, for a run without, the views that suit
    its training augmentation, a mode name (``flip``, ``shift``...) that mode.

    Unreadable files and inputs that match nothing are skipped and listed (in ``out`` and
    the returned summary); they never end the run. ``out`` is a .csv, .json or .jsonl file
    written atomically, or None for one line per image on stdout.

    Raises:
        UsageError: bad option values. CnnkitError: an unusable model file, or no file at all.
    """
    from tqdm import tqdm

    from cnnkit.inference import expand_inputs
    from cnnkit.inference.output import check_out_path, open_writer
    from cnnkit.inference.runtime import check_options, load_predictor

    _check_options(topk, batch_size, workers, threshold)
    check_options(model, backend, amp)
    out_path = check_out_path(out) if out is not None else None
    if not Path(model).exists():  # before the inputs are listed: a wrong model path is the first thing to say
        raise CnnkitError(f"model not found: {model}; give a run folder, a .pt checkpoint or an .onnx file")
    files, missing = expand_inputs(inputs)
    if not files:
        raise CnnkitError("no files to predict: " + "; ".join(f"{m.source}: {m.reason}" for m in missing))
    predictor = load_predictor(model, backend=backend, device=device, amp=amp, sample_files=files,
                               announce=lambda line: print(line, file=sys.stderr, flush=True))  # stdout: results
    if progress:
        print(f"backend: {predictor.note}", file=sys.stderr)
    writer, target = open_writer(out_path, topk)
    start = time.perf_counter()
    try:
        for item in missing:
            writer.write(item)
        bar = tqdm(total=len(files), unit="img", disable=not progress or None, file=sys.stderr, leave=False)
        for item in predictor.predict_files(files, topk=topk, batch_size=batch_size, workers=workers,
                                            tta=tta, threshold=threshold):  # fmt: skip
            writer.write(item)
            bar.update()
        bar.close()
        summary = PredictSummary(writer.predicted, writer.skipped, writer.unknown, time.perf_counter() - start,
                                 out_path, predictor.backend.name, predictor.note)  # fmt: skip
        writer.finish(summary.as_dict())
    except BaseException:
        if target is not None:
            target.discard()
        raise
    if target is not None:
        target.commit()
    return summary


def _check_options(topk: int, batch_size: int, workers: int | None, threshold: float | None) -> None:
    if topk < 1:
        raise UsageError(f"--topk must be at least 1, got {topk}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    if workers is not None and workers < 0:
        raise UsageError(f"--workers must be 0 or more, got {workers}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise UsageError(f"--threshold is a probability in [0, 1], got {threshold}")


def main(args: Any) -> None:
    """``cnnkit predict``: results on stdout (or --out), the summary on stderr; exit 1 when no
    file at all could be read (after listing them)."""
    summary = predict(args.model, args.inputs, out=args.out, backend=args.backend, device=args.device,
                      topk=args.topk, batch_size=args.batch_size, workers=args.workers, tta=args.tta,
                      threshold=args.threshold, progress=not args.no_progress, amp=args.amp)  # fmt: skip
    rate = summary.predicted / max(summary.seconds, 1e-9)
    line = f"predicted {summary.predicted:,} images in {summary.seconds:.1f} s ({rate:,.0f} img/s, {summary.backend})"
    if summary.unknown:
        line += f"; {summary.unknown:,} below the threshold, labelled 'unknown'"
    if summary.out is not None:
        line += f"; wrote {summary.out}"
    print(line, file=sys.stderr)
    if summary.skipped:
        print(f"skipped {len(summary.skipped):,} files:", file=sys.stderr)
        for item in summary.skipped[:SKIPPED_SHOWN]:
            print(f"  {item.source}: {item.reason}", file=sys.stderr)
        if len(summary.skipped) > SKIPPED_SHOWN:
            where = f" (all are listed in {summary.out})" if summary.out else ""
            print(f"  ... and {len(summary.skipped) - SKIPPED_SHOWN:,} more{where}", file=sys.stderr)
    if not summary.predicted:  # nothing done: a failure, even though each file's problem was listed
        raise CnnkitError(f"no file could be read: all {len(summary.skipped):,} were skipped (see the list above)")

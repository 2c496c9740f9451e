"""``cnnkit predict``: classify image files, folders or globs with a checkpoint or ONNX file."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnkit.config import PredictOptions
from cnnkit.errors import CnnkitError

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
    not_known: int | None = None  # images that look like none of the classes (None: the model has no open set)

    def as_dict(self) -> dict[str, Any]:
        rate = self.predicted / max(self.seconds, 1e-9)
        return {"predicted": self.predicted, "skipped": len(self.skipped), "unknown": self.unknown,
                "looks_unknown": self.not_known,
                "seconds": round(self.seconds, 3), "images_per_second": round(rate, 1), "backend": self.backend}


def predict(model: str | Path, inputs: list[str], options: PredictOptions | None = None,
            **values: Any) -> PredictSummary:
    """Predict every image among ``inputs`` (files, folders, globs), streaming results to ``out``.

    Args:
        model: a run folder, ``.pt`` checkpoint or ``.onnx`` file.
        inputs: image files, folders (recursive) or glob patterns.
        options: :class:`~cnnkit.config.PredictOptions` (default: its defaults), whose fields
            may also be given as keywords: ``out``, ``backend`` (``auto``: ONNX Runtime when
            the export extra is installed, see :mod:`cnnkit.inference.runtime`; ``torch``,
            ``onnxruntime``, ``openvino``), ``device``, ``topk``, ``batch_size``, ``workers``,
            ``tta``, ``threshold``, ``reject`` (label images that look like none of the
            classes ``unknown``; a model with an open set), ``amp`` (torch backend: ``off``,
            ``bf16``, ``fp16``, ``auto``); ``progress=False`` is ``no_progress=True``.

    Unreadable files and inputs that match nothing are skipped and listed (in ``out`` and
    the returned summary); they never end the run. ``out`` is a .csv, .json or .jsonl file
    written atomically, or None for one line per image on stdout.

    Raises:
        UsageError: bad option values (:func:`cnnkit.config.validate`). CnnkitError: an
            unusable model file, or no file at all.
    """
    from tqdm import tqdm

    from cnnkit.config import option_values, validate
    from cnnkit.inference import expand_inputs
    from cnnkit.inference.output import check_out_path, open_writer
    from cnnkit.inference.runtime import load_predictor

    if "progress" in values:
        values["no_progress"] = not values.pop("progress")
    opts = option_values(options or PredictOptions(), {**values, "model": str(model), "inputs": list(inputs)})
    validate(opts)
    out_path = check_out_path(opts.out) if opts.out is not None else None
    if not Path(model).exists():  # before the inputs are listed: a wrong model path is the first thing to say
        raise CnnkitError(f"model not found: {model}; give a run folder, a .pt checkpoint or an .onnx file")
    files, missing = expand_inputs(opts.inputs)
    if not files:
        raise CnnkitError("no files to predict: " + "; ".join(f"{m.source}: {m.reason}" for m in missing))
    if opts.reject:  # said before an ONNX copy is built
        _require_open_set(model)
    predictor = load_predictor(model, backend=opts.backend, device=opts.device, amp=opts.amp, sample_files=files,
                               trust_code=opts.trust_code,
                               announce=lambda line: print(line, file=sys.stderr, flush=True))  # stdout: results
    open_set = predictor.open_set
    if opts.reject and open_set is None:
        raise _no_open_set(model)
    progress = not opts.no_progress
    if progress:
        print(f"backend: {predictor.note}", file=sys.stderr)
    writer, target = open_writer(out_path, opts.topk, known=open_set is not None)
    start = time.perf_counter()
    try:
        for item in missing:
            writer.write(item)
        bar = tqdm(total=len(files), unit="img", disable=not progress or None, file=sys.stderr, leave=False)
        for item in predictor.predict_files(files, topk=opts.topk, batch_size=opts.batch_size, workers=opts.workers,
                                            tta=opts.tta, threshold=opts.threshold, reject=opts.reject):  # fmt: skip
            writer.write(item)
            bar.update()
        bar.close()
        summary = PredictSummary(writer.predicted, writer.skipped, writer.unknown, time.perf_counter() - start,
                                 out_path, predictor.backend.name, predictor.note,
                                 writer.not_known if open_set is not None else None)  # fmt: skip
        writer.finish(summary.as_dict())
    except BaseException:
        if target is not None:
            target.discard()
        raise
    if target is not None:
        target.commit()
    return summary


def _require_open_set(model: str | Path) -> None:
    """Refuse ``--reject`` for a checkpoint or run without an open set (an ``.onnx`` file's
    metadata is read when it loads, which costs nothing)."""
    from cnnkit.checkpoint import Checkpoint

    if Path(model).suffix.lower() != ".onnx" and Checkpoint.load(model).open_set is None:
        raise _no_open_set(model)


def _no_open_set(model: str | Path) -> CnnkitError:
    return CnnkitError(f"--reject needs a model with an open set, and {model} has none (trained before cnnkit "
                       "fitted one, or with --open-set off); train it again, or leave out --reject")  # fmt: skip


def main(args: Any) -> None:
    """``cnnkit predict``: results on stdout (or --out), the summary on stderr; exit 1 when no
    file at all could be read (after listing them)."""
    from cnnkit.config import options_from_args

    summary = predict(args.model, args.inputs, options_from_args(PredictOptions, args))
    rate = summary.predicted / max(summary.seconds, 1e-9)
    line = f"predicted {summary.predicted:,} images in {summary.seconds:.1f} s ({rate:,.0f} img/s, {summary.backend})"
    if summary.not_known:
        line += f"; {summary.not_known:,} look like none of the classes"
    if summary.unknown:
        line += f"; {summary.unknown:,} labelled 'unknown'"
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

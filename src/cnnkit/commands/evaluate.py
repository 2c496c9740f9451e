"""``cnnkit eval``: score a checkpoint on a split of its own data (or of other data)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnkit.confidence import calibrated, known_scores, turned_away
from cnnkit.engine import EvalResult, resolve_device
from cnnkit.evaluation.metrics import expected_calibration_error
from cnnkit.inference.loading import (
    check_split,
    checkpoint_loaders,
    default_split,
    held_out_files,
    held_out_loaders,
    load_checkpoint,
    run_data_path,
    split_loader,
)
from cnnkit.scoring import ScoringSettings, metrics, score
from cnnkit.tta import check_tta


@dataclass
class EvalReport:
    """What ``cnnkit eval`` prints: the split scored, its result, the classes, the checkpoint.

    ``held_out``: the absolute folder or CSV file scored as a held-out set (``split`` is
    then ``all`` or the one split asked for), or None for the run's own split or a dataset's.
    ``ece``: the expected calibration error of the probabilities cnnkit shows (calibrated by
    ``temperature``, :mod:`cnnkit.confidence`); ``ece_raw``: of the raw softmax.
    """

    split: str
    result: EvalResult
    class_names: list[str]
    checkpoint: Path
    tta: str = "none"
    held_out: str | None = None
    temperature: float = 1.0
    ece: float = float("nan")
    ece_raw: float = float("nan")
    open_set: dict[str, Any] | None = None  # the model's open-set parameters, or None
    turned_away: float | None = None  # the share of the scored images --reject would call unknown

    def as_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": str(self.checkpoint),
            "data": self.held_out,
            "split": self.split,
            "tta": self.tta,
            "images": self.result.count,
            "loss": self.result.loss,
            "top1": self.result.acc,
            "top5": self.result.top5,
            "temperature": self.temperature,
            "ece": self.ece,
            "ece_raw_softmax": self.ece_raw,
            "open_set": self.open_set,
            "turned_away": self.turned_away,
            "per_class_accuracy": dict(zip(self.class_names, self.result.per_class_acc, strict=True)),
        }


def evaluate_checkpoint(
    path: str | Path,
    *,
    split: str | None = None,
    data: str | None = None,
    data_dir: str | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    tta: str | None = None,
) -> EvalReport:
    """Evaluate a checkpoint on a split of its own data (the saved split) or of ``data``.

    ``split``: ``test``, ``val`` or ``train`` (None: the test split when the run has one,
    else val; the report names the split actually scored). ``data`` naming a folder or CSV
    file other than the run's own is a held-out set: all of its images are scored, or only
    its ``split`` sub-folder when one is given (see :func:`held_out_files`). The checkpoint's
    preprocessing (size, channels, mean/std) is always used, and its run's test-time
    augmentation and precision unless ``tta`` names another (``none``, ``flip``...).

    Raises:
        UsageError: a split the data does not have (``test`` never silently becomes val).
    """
    if split is not None:
        check_split(split)
    if tta is not None:
        check_tta(tta)
    loaded = load_checkpoint(path)
    held_out = held_out_files(loaded, data, split) if data is not None else None
    if data is not None and held_out is None and Path(data).expanduser().resolve() == run_data_path(loaded):
        data = None  # the run's own folder: its saved split, not a new draw
    torch_device = resolve_device(device)
    if held_out is not None:
        loaders, spec, cfg = held_out_loaders(loaded, data, held_out, device=torch_device, batch_size=batch_size)
    else:
        loaders, spec, cfg = checkpoint_loaders(loaded, data=data, data_dir=data_dir, device=torch_device,
                                                batch_size=batch_size)  # fmt: skip
    scored = "val" if held_out is not None else split or default_split(loaders)
    settings = ScoringSettings.for_run(cfg, torch_device, tta)  # the run's precision, TTA and layout
    scores = score(settings.place(loaded.model), split_loader(loaders, scored), settings)
    result = metrics(scores, spec.num_classes)
    temperature = loaded.checkpoint.temperature
    calibration = {"temperature": temperature,
                   "ece": expected_calibration_error(calibrated(scores.logits, temperature), scores.labels).ece,
                   "ece_raw": expected_calibration_error(calibrated(scores.logits), scores.labels).ece}  # fmt: skip
    open_set = loaded.checkpoint.open_set
    if open_set is not None:  # what --reject would turn away of these images (of known classes all)
        known = known_scores(settings.place(loaded.graph), split_loader(loaders, scored), torch_device)
        calibration.update(open_set=open_set.params(), turned_away=turned_away(known, open_set))
    views = settings.tta
    if held_out is None:
        return EvalReport(scored, result, loaded.class_names, loaded.path, views, **calibration)
    return EvalReport(split or "all", result, loaded.class_names, loaded.path, views,
                      str(Path(data).expanduser().resolve()), **calibration)  # fmt: skip


def main(args: Any) -> None:
    """``cnnkit eval``."""
    report = evaluate_checkpoint(args.checkpoint, split=args.split, data=args.data, data_dir=args.data_dir,
                                 device=args.device, batch_size=args.batch_size, tta=args.tta)  # fmt: skip
    if args.json:
        print(json.dumps(report.as_dict(), indent=1))
        return
    result = report.result
    print(f"checkpoint: {report.checkpoint}")
    tta = f", tta {report.tta}" if report.tta != "none" else ""
    if report.held_out is not None:
        kind = "folder" if Path(report.held_out).is_dir() else "file"
        whole = report.split == "all"
        which = f"all {result.count:,} images" if whole else f"its {report.split} split: {result.count:,} images"
        print(f"data: {report.held_out} (held-out {kind}, {which}){tta}")
    else:
        print(f"split: {report.split} ({result.count:,} images){tta}")
    print(f"loss: {result.loss:.4f}")
    print(f"top-1: {result.acc:.2%}")
    if result.top5 is not None:
        print(f"top-5: {result.top5:.2%}")
    if report.temperature != 1.0:
        print(f"calibration: ECE {report.ece:.4f} with temperature {report.temperature:.3f} "
              f"(raw softmax: {report.ece_raw:.4f})")
    else:
        print(f"calibration: ECE {report.ece:.4f} (no temperature fitted: raw softmax)")
    if report.open_set is not None and report.turned_away is not None:
        params = report.open_set
        print(f"none of these: {report.turned_away:.1%} of these images look like none of the classes "
              f"({params['score']} score under {params['threshold']:.4g}, set to keep {params['known_rate']:.0%} "
              f"of {params['fitted_on'] or 'val'}); predict --reject would label them unknown")  # fmt: skip
    width = max(len(name) for name in report.class_names)
    support = result.confusion.sum(dim=1).tolist()
    print(f"{'class':<{width}}  accuracy  images")
    for name, acc, count in zip(report.class_names, result.per_class_acc, support, strict=True):
        print(f"{name:<{width}}  {acc:8.2%}  {count:6d}")

"""``cnnkit report``: ``report/report.html`` with curves, confusion matrix, per-class figures,
calibration, the images the model saw and, with ``--robustness``, FGSM and corruptions."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from cnnkit.engine import resolve_device
from cnnkit.inference.loading import (
    check_split,
    checkpoint_loaders,
    default_split,
    load_checkpoint,
    split_loader,
)


def report(
    path: str | Path,
    *,
    split: str | None = None,
    robustness: bool = False,
    data_dir: str | None = None,
    device: str = "auto",
    out_dir: str | Path | None = None,
    scores: Any = None,
) -> Path:
    """Write ``report/report.html`` (and its PNGs) for a run folder or checkpoint.

    Its figures are ``cnnkit eval``'s on the same split: the run's TTA and precision.

    Args:
        path: run folder or checkpoint (``best.pt`` of a folder is used).
        split: ``test`` or ``val`` (None: the test split when the run has one, else val).
        robustness: also measure accuracy under FGSM and simple corruptions.
        data_dir: folder holding torchvision datasets, if not the run's.
        device: where to run the model.
        out_dir: where to write (None: ``report/`` in the run folder).
        scores: the split's :class:`~cnnkit.engine.scoring.Scores`, already computed with the
            run's TTA and precision; the model then only runs for the summary's one-image
            probe. None: scored here. (The end of a training run writes its report from
            memory: :func:`cnnkit.evaluation.report.write_report`.)

    Returns:
        The path of ``report.html``.
    """
    from cnnkit.data.spec import Preprocess
    from cnnkit.evaluation import report as rep

    if split is not None:
        check_split(split)
    loaded = load_checkpoint(path)
    run_dir = loaded.path.parent.parent
    torch_device = resolve_device(device)
    loaders, _, cfg = checkpoint_loaders(loaded, data_dir=data_dir, device=torch_device)
    train_loaders, _, _ = checkpoint_loaders(loaded, data_dir=data_dir, device=torch_device, training=True)
    split = split or default_split(loaders)
    config_file = run_dir / "config.yaml"
    inputs = rep.ReportInputs(
        model=loaded.model.to(torch_device), loader=split_loader(loaders, split), split=split,
        class_names=loaded.class_names, preprocess=Preprocess.from_dict(loaded.preprocess), config=cfg,
        device=torch_device, history=read_history(run_dir / "metrics.csv"),
        title=f"{run_dir.name}: {loaded.checkpoint.model.name} on {cfg.data.name}",
        config_text=config_file.read_text(encoding="utf-8") if config_file.is_file() else "",
        train_loader=train_loaders.train, scores=scores, robustness=robustness,
    )  # fmt: skip
    return rep.write_report(inputs, Path(out_dir) if out_dir else run_dir / "report")


def read_history(metrics_csv: Path) -> list[dict[str, Any]]:
    """``metrics.csv`` as one dict per epoch (numbers as floats, empty cells as None)."""
    if not metrics_csv.is_file():
        return []
    with metrics_csv.open(encoding="utf-8") as handle:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def _number(value: str) -> Any:
    try:
        return float(value) if value not in ("", "None") else None
    except ValueError:
        return value


def main(args: Any) -> None:
    """``cnnkit report``."""
    path = report(args.run, split=args.split, robustness=args.robustness, data_dir=args.data_dir,
                  device=args.device, out_dir=args.out)  # fmt: skip
    print(f"report: {path}")

"""``cnnkit report``: ``report/report.html`` with curves, confusion matrix, per-class figures,
calibration, the images the model saw and, with ``--robustness``, FGSM and corruptions."""

from __future__ import annotations

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
from cnnkit.runfolder import RunFolder


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
        out_dir: where to write (None: ``report/`` in the run folder; for a checkpoint outside
            a run, ``report/`` beside it).
        scores: the split's :class:`~cnnkit.scoring.Scores`, already computed with the
            run's TTA and precision; the model then only runs for the summary's one-image
            probe. None: scored here. (The end of a training run writes its report from
            memory: :func:`cnnkit.evaluation.report.write_report`.)

    Returns:
        The path of ``report.html``.
    """
    from cnnkit.evaluation import report as rep

    if split is not None:
        check_split(split)
    loaded = load_checkpoint(path)
    run = loaded.run_folder  # None: a checkpoint outside a run (no curves, no config)
    torch_device = resolve_device(device)
    loaders, _, cfg = checkpoint_loaders(loaded, data_dir=data_dir, device=torch_device)
    train_loaders, _, _ = checkpoint_loaders(loaded, data_dir=data_dir, device=torch_device, training=True)
    split = split or default_split(loaders)
    inputs = rep.ReportInputs(
        model=loaded.model.to(torch_device), loader=split_loader(loaders, split), split=split,
        class_names=loaded.class_names, preprocess=loaded.preprocess, config=cfg,
        device=torch_device, history=run.read_metrics() if run else [],
        title=f"{run.name if run else loaded.path.stem}: {loaded.checkpoint.model.name} on {cfg.data.name}",
        config_text=(run.read_text(RunFolder.CONFIG) if run else None) or "",
        train_loader=train_loaders.train, scores=scores, robustness=robustness,
        temperature=loaded.checkpoint.temperature, open_set=loaded.checkpoint.open_set,
    )  # fmt: skip
    default_out = run.report_dir if run else loaded.path.parent / RunFolder.REPORT
    return rep.write_report(inputs, Path(out_dir) if out_dir else default_out)


def main(args: Any) -> None:
    """``cnnkit report``."""
    path = report(args.run, split=args.split, robustness=args.robustness, data_dir=args.data_dir,
                  device=args.device, out_dir=args.out)  # fmt: skip
    print(f"report: {path}")

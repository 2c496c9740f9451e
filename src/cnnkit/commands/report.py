"""``cnnkit report``: ``report/report.html`` with curves, confusion matrix, per-class figures,
calibration, the images the model saw and, with ``--robustness``, FGSM and corruptions."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch

from cnnkit.engine import resolve_device
from cnnkit.engine.scoring import ScoringSettings
from cnnkit.inference.loading import (
    LoadedCheckpoint,
    check_split,
    checkpoint_loaders,
    default_split,
    load_checkpoint,
    split_loader,
)
from cnnkit.preprocess import Preprocess

# Images of the split that the (slower) robustness measurements use.
ROBUSTNESS_IMAGES = 1000


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
            run's TTA and precision (the end of a run passes its test evaluation's, or a
            frozen backbone's val scores from its cached features); the model then only
            runs for the summary's one-image probe. None: scored here.

    Returns:
        The path of ``report.html``.
    """
    from cnnkit.evaluation import report as rep
    from cnnkit.models.summary import as_trained, format_summary, summarize

    if split is not None:
        check_split(split)
    loaded = load_checkpoint(path)
    run_dir = loaded.path.parent.parent
    torch_device = resolve_device(device)
    loaders, spec, cfg = checkpoint_loaders(loaded, data_dir=data_dir, device=torch_device)
    split = split or default_split(loaders)
    loader = split_loader(loaders, split)
    pre = loaded.preprocess
    settings = ScoringSettings.for_run(cfg, torch_device)  # precision, TTA and layout, as `cnnkit eval` scores
    model = settings.place(loaded.model)
    pred = rep.collect_predictions(model, loader, mean=pre.mean, std=pre.std, settings=settings, scores=scores)
    data = rep.summarise(pred, loaded.class_names, split)
    extra = None
    if robustness:
        extra = _robustness(model, loader, pre, loaded.class_names, settings)
        extra["images"] = min(ROBUSTNESS_IMAGES, data.count)
    label_errors = _label_errors(pred, loader, loaded.class_names, split, pre)
    summary = summarize(as_trained(model.cpu(), cfg), (pre.channels, *pre.input_size))  # the run's frozen part
    config_file = run_dir / "config.yaml"
    return rep.write_report(
        Path(out_dir) if out_dir else run_dir / "report", data, pred,
        history=read_history(run_dir / "metrics.csv"),
        preview=_train_preview(loaded, torch_device, data_dir),
        config_text=config_file.read_text(encoding="utf-8") if config_file.is_file() else "",
        summary_text=format_summary(summary),
        title=f"{run_dir.name}: {loaded.checkpoint.model.name} on {cfg.data.name}",
        robustness=extra, label_errors=label_errors,
    )  # fmt: skip


def _label_errors(pred: Any, loader: Any, class_names: list[str], split: str, pre: Preprocess) -> dict[str, Any]:
    """The "likely label errors" section of the split's own (held-out) predictions, with the suspects' pixels."""
    from cnnkit.evaluation import report as rep
    from cnnkit.evaluation.label_errors import label_errors_section, loader_paths

    scores = pred.scores
    section = label_errors_section(scores, class_names, split, loader_paths(loader, scores.count))
    if section["rows"]:
        section["images"] = rep.images_at(loader, section["positions"], scores.labels, pre.mean, pre.std)
    return section


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


def _train_preview(loaded: LoadedCheckpoint, device: torch.device, data_dir: str | None, count: int = 16):
    """The first training batch after augmentation, de-normalised, with class names."""
    loaders, _, _ = checkpoint_loaders(loaded, data_dir=data_dir, device=device, training=True)
    images, labels = next(iter(loaders.train))
    pre = loaded.preprocess
    mean = torch.tensor(pre.mean).view(1, -1, 1, 1)
    std = torch.tensor(pre.std).view(1, -1, 1, 1)
    shown = (images[:count].cpu().float() * std + mean).clamp(0, 1)
    return shown, [loaded.class_names[int(i)] for i in labels[:count]]


def _robustness(model, loader, pre, class_names: list[str], settings: ScoringSettings) -> dict[str, Any]:
    from cnnkit.evaluation import plots
    from cnnkit.evaluation.robustness import Normalisation, robustness_table

    rows, example = robustness_table(model, loader, Normalisation.of(pre.mean, pre.std), settings,
                                     max_images=ROBUSTNESS_IMAGES)  # fmt: skip
    figure = None
    if example is not None:
        diff = (example["adversarial"] - example["clean"]).abs()
        diff = diff / max(float(diff.max()), 1e-8)  # amplified to be visible
        figure = plots.image_grid_figure(
            torch.stack([example["clean"], example["adversarial"], diff]),
            [f"original: {class_names[example['clean_pred']]}",
             f"FGSM {example['eps']}/255: {class_names[example['adv_pred']]}", "perturbation (amplified)"],
            ncols=3, title=f"true class: {class_names[example['label']]}",
        )  # fmt: skip
    return {"rows": rows, "figure": figure}


def main(args: Any) -> None:
    """``cnnkit report``."""
    path = report(args.run, split=args.split, robustness=args.robustness, data_dir=args.data_dir,
                  device=args.device, out_dir=args.out)  # fmt: skip
    print(f"report: {path}")

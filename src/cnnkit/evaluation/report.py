"""The evaluation report: one self-contained ``report.html`` plus the PNGs it shows.

:func:`write_report` makes the whole report from what is in memory, a
:class:`ReportInputs`: the model with the weights reported, the split's loader (and its
scores when an evaluation already made them), the training loader, the history and the
config. The end of a training run hands it its own model, loaders and test scores; ``cnnkit
report`` (:mod:`cnnkit.commands.report`) loads them from a run folder first. Nothing here
loads data or checkpoints, so notebooks can pass their own.

:func:`collect_predictions` scores a loader through the one scoring path
(:func:`cnnkit.scoring.score`, with the run's TTA and precision) or takes the
:class:`~cnnkit.scoring.Scores` of an evaluation already made, then fetches the
pixels of only the images the report shows (the worst mistakes). :func:`summarise`
computes the numbers with :func:`cnnkit.scoring.metrics`, so they equal ``cnnkit
eval``'s on the same scores.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import torch
from torch import nn

from cnnkit import atomic
from cnnkit.confidence import OpenSet, OpenSetModel, calibrated, known_scores, turned_away
from cnnkit.evaluation import metrics as M
from cnnkit.evaluation import plots
from cnnkit.scoring import Scores, ScoringSettings, metrics, score

if TYPE_CHECKING:
    from cnnkit.config import RunConfig
    from cnnkit.data.spec import Preprocess

# Mistakes shown in the top-losses gallery.
GALLERY_SIZE = 16
# Training images the preview shows (the first batch's, as the model sees them).
PREVIEW_SIZE = 16
# Images of the split that the (slower) robustness measurements use.
ROBUSTNESS_IMAGES = 1000


@dataclass
class ReportInputs:
    """What a report is made from, all in memory (the caller trained or loaded it).

    Attributes:
        model: the classifier with the weights reported (a run's best), on ``device``.
        loader: the reported split's loader: unshuffled, the whole split.
        split: its name (``test``, ``val`` or ``train``).
        class_names: one per logit.
        preprocess: the loaders' preprocessing (mean and std are undone for display; channels
            and input size give the model summary's one-image probe).
        config: the run's config: the TTA and precision it is scored with (as ``cnnkit eval``
            scores), the frozen part of the model for the summary, the data's name.
        device: where the model runs.
        history: one metrics row per epoch, as in ``metrics.csv`` (the curves).
        title: the page's title.
        config_text: the run's ``config.yaml``, shown as it is.
        train_loader: the training loader with its augmentation: its first batch is the
            "as the model sees them" preview (None: no preview).
        scores: the split's :class:`~cnnkit.scoring.Scores`, already computed with
            the run's TTA and precision (the model then only runs for the summary's probe);
            None: scored here.
        robustness: also measure accuracy under FGSM and simple corruptions (slower).
        temperature: the run's fitted temperature (``best.pt``): the probabilities and ECE
            shown are calibrated by it, and the raw softmax's ECE is shown beside them.
        open_set: the run's open set (``best.pt``): the split's known-ness scores are shown
            against its threshold (None: no such section).
        known: the split's known-ness scores already computed (the end of training has val's);
            None: computed here through the model and its open set.
    """

    model: nn.Module
    loader: Iterable
    split: str
    class_names: list[str]
    preprocess: Preprocess
    config: RunConfig
    device: torch.device
    history: list[dict[str, Any]]
    title: str
    config_text: str = ""
    train_loader: Iterable | None = None
    scores: Scores | None = None
    robustness: bool = False
    temperature: float = 1.0
    open_set: OpenSet | None = None
    known: torch.Tensor | None = None


@dataclass
class Predictions:
    """The scores of a loader and the images the report shows.

    Attributes:
        logits: ``[N, num_classes]`` float32 on the CPU (TTA views combined).
        labels: ``[N]`` true classes.
        worst_images: de-normalised images ``[K, C, H, W]`` in [0, 1] of the K samples
            with the highest loss, highest first, with their positions in ``worst_index``.
        tta: the test-time augmentation of the logits.
    """

    logits: torch.Tensor
    labels: torch.Tensor
    worst_images: torch.Tensor
    worst_index: torch.Tensor
    tta: str = "none"

    @property
    def scores(self) -> Scores:
        return Scores(self.logits, self.labels, self.tta)


def collect_predictions(
    model: nn.Module | None, loader: Iterable, *, mean: Iterable[float], std: Iterable[float],
    settings: ScoringSettings | None = None, scores: Scores | None = None,
) -> Predictions:  # fmt: skip
    """The scores of ``loader`` and the pixels of its :data:`GALLERY_SIZE` highest-loss images.

    Args:
        model: the classifier (unused when ``scores`` is given: pass None).
        loader: the evaluation loader (unshuffled), scored or to be scored.
        mean: the loader's normalisation, undone for display (with ``std``).
        settings: how to score (the run's :meth:`ScoringSettings.for_run`: device, precision,
            TTA, layout; the model already placed by :meth:`ScoringSettings.place`).
        scores: logits of this same loader already computed by
            :func:`~cnnkit.scoring.score` (no model pass is run).
    """
    if scores is None:
        if model is None:
            raise ValueError("collect_predictions needs a model or precomputed scores")
        scores = score(model, loader, settings)
    empty = torch.zeros(0, dtype=torch.long)
    worst = M.top_losses(scores.logits, scores.labels, GALLERY_SIZE).indices if scores.count else empty
    images = images_at(loader, worst, scores.labels, mean, std)
    return Predictions(scores.logits, scores.labels, images, worst, scores.tta)


def images_at(
    loader: Iterable, positions: torch.Tensor, labels: torch.Tensor, mean: Iterable[float], std: Iterable[float],
) -> torch.Tensor:  # fmt: skip
    """Pixels ``[K, C, H, W]`` in [0, 1] of the loader's samples at ``positions`` (in its order).

    In-memory loaders and file datasets give them by index, decoding only those images; a
    loader whose order cannot be mapped to its dataset (files skipped as unreadable, an
    unknown loader) is walked once without running any model. ``labels`` (``[N]``, the
    scored labels) guard the mapping: on any mismatch the walk is used.
    """
    if not len(positions):
        return torch.zeros(0)
    mean_t = torch.tensor(list(mean)).view(1, -1, 1, 1)
    std_t = torch.tensor(list(std)).view(1, -1, 1, 1)
    direct = _indexed_images(loader, positions, labels, mean_t, std_t)
    if direct is not None:
        return direct
    wanted = {int(p): k for k, p in enumerate(positions)}
    found: dict[int, torch.Tensor] = {}
    seen = 0
    for batch_images, _ in loader:
        for offset in range(len(batch_images)):
            if seen + offset in wanted:
                found[seen + offset] = batch_images[offset].cpu().float()
        seen += len(batch_images)
        if len(found) == len(wanted):
            break
    shown = torch.stack([found[int(p)] for p in positions])
    return (shown * std_t + mean_t).clamp_(0, 1)


def _indexed_images(loader, positions, labels, mean_t, std_t) -> torch.Tensor | None:
    """The images at ``positions`` by index when the loader's order is its dataset's (None otherwise)."""
    from cnnkit.data.builder import FileLoader
    from cnnkit.data.tensor_data import WHOLE, TensorLoader

    if isinstance(loader, TensorLoader):
        if loader.images is None or loader.shuffle or loader.part != WHOLE or loader.sample_weights is not None \
                or len(loader.labels) != len(labels):  # fmt: skip
            return None
        if not torch.equal(loader.labels[positions.to(loader.labels.device)].cpu(), labels[positions]):
            return None
        return loader.images[positions.to(loader.images.device)].cpu().float().div_(255)  # uint8 -> [0, 1]
    if isinstance(loader, FileLoader):
        dataset = loader.loader.dataset
        if loader.sampler.shuffle or loader.sampler.weights is not None or loader.part != WHOLE \
                or len(dataset) != len(labels):  # type: ignore[arg-type]  # fmt: skip
            return None
        samples = [dataset[int(p)] for p in positions]  # None: an unreadable file
        if any(sample is None or int(sample[1]) != int(labels[p])
               for sample, p in zip(samples, positions, strict=True)):
            return None
        return (torch.stack([sample[0].float() for sample in samples]) * std_t + mean_t).clamp_(0, 1)
    return None


@dataclass
class ReportData:
    """Everything a report shows, computed from predictions (see :func:`summarise`)."""

    split: str
    count: int
    loss: float
    top1: float
    top5: float | None
    confusion: torch.Tensor
    prf: dict[str, Any]
    calibration: M.CalibrationResult
    confused_pairs: list[tuple[int, int, int]]
    class_names: list[str]
    extra: dict[str, Any] = field(default_factory=dict)
    temperature: float = 1.0
    calibration_raw: M.CalibrationResult | None = None  # the raw softmax's, when a temperature was fitted
    known: dict[str, Any] | None = None  # the split's known-ness scores, threshold and share turned away


def summarise(pred: Predictions | Scores, class_names: list[str], split: str, temperature: float = 1.0) -> ReportData:
    """The report's numbers: :func:`cnnkit.scoring.metrics` of the scores (the same
    loss/top-1/top-5 as ``cnnkit eval`` on the same images, TTA and precision); calibration
    of the probabilities shown (``softmax(logits / temperature)``) and, when the temperature
    is not 1, of the raw softmax before it."""
    scores = pred.scores if isinstance(pred, Predictions) else pred
    result = metrics(scores, len(class_names))
    raw = None
    if temperature != 1.0:
        raw = M.expected_calibration_error(scores.logits.softmax(1), scores.labels)
    return ReportData(
        split=split,
        count=result.count,
        loss=result.loss,
        top1=result.acc,
        top5=result.top5,
        confusion=result.confusion,
        prf=M.precision_recall_f1(result.confusion),
        calibration=M.expected_calibration_error(calibrated(scores.logits, temperature), scores.labels),
        confused_pairs=M.most_confused_pairs(result.confusion, k=10),
        class_names=list(class_names),
        extra={"tta": scores.tta},
        temperature=temperature,
        calibration_raw=raw,
    )


def write_report(inputs: ReportInputs, out_dir: str | Path) -> Path:
    """Write the PNGs and ``report.html`` (images embedded) into ``out_dir``; return the HTML path.

    The split is scored with the run's TTA and precision unless ``inputs.scores`` are given;
    the "likely label errors" section comes from those same held-out predictions.
    """
    cfg, pre = inputs.config, inputs.preprocess
    settings = ScoringSettings.for_run(cfg, inputs.device)  # precision, TTA and layout, as `cnnkit eval` scores
    model = settings.place(inputs.model)
    pred = collect_predictions(model, inputs.loader, mean=pre.mean, std=pre.std, settings=settings,
                               scores=inputs.scores)  # fmt: skip
    data = summarise(pred, inputs.class_names, inputs.split, inputs.temperature)
    if inputs.open_set is not None:
        known = inputs.known
        if known is None:
            known = known_scores(settings.place(OpenSetModel(inputs.model, inputs.open_set, inputs.temperature)),
                                 inputs.loader, inputs.device)  # fmt: skip
        data.known = {"scores": known, "threshold": inputs.open_set.threshold, "score": inputs.open_set.score,
                      "turned_away": turned_away(known, inputs.open_set), "known_rate": inputs.open_set.known_rate}
    robustness = None
    if inputs.robustness:
        robustness = _robustness(model, inputs.loader, pre, inputs.class_names, settings)
        robustness["images"] = min(ROBUSTNESS_IMAGES, data.count)
    page = _Page(
        title=inputs.title, history=inputs.history, config_text=inputs.config_text,
        summary_text=_summary_text(model, cfg, pre),
        preview=_train_preview(inputs.train_loader, inputs.class_names, pre) if inputs.train_loader else None,
        robustness=robustness,
        label_errors=_label_errors(pred, inputs.loader, inputs.class_names, inputs.split, pre),
    )  # fmt: skip
    return _render(Path(out_dir), data, pred, page)


@dataclass
class _Page:
    """What the page shows besides the split's numbers and worst images."""

    title: str
    history: list[dict[str, Any]]
    config_text: str
    summary_text: str
    preview: tuple[torch.Tensor, list[str]] | None
    robustness: dict[str, Any] | None
    label_errors: dict[str, Any] | None  # see cnnkit.evaluation.label_errors.label_errors_section, + "images"


def _render(out: Path, data: ReportData, pred: Predictions, page: _Page) -> Path:
    """The PNGs and ``report.html``. ``page.label_errors``: the section of
    :func:`cnnkit.evaluation.label_errors.label_errors_section`, with the suspects'
    de-normalised pixels as ``images`` (None: no section)."""
    out.mkdir(parents=True, exist_ok=True)
    label_errors = page.label_errors
    figures = _figures(data, pred, page.history, page.preview, page.robustness)
    if label_errors and label_errors.get("images") is not None and len(label_errors["images"]):
        titles = [f"given {r['given']}\nsuggested {r['suggested']}" for r in label_errors["rows"]]
        figures["label_errors"] = plots.image_grid_figure(label_errors["images"], titles, title="likely label errors")
    else:  # a silent section leaves no earlier report's suspects behind (the studio shows this file)
        (out / "label_errors.png").unlink(missing_ok=True)
    _write_label_verdict(out / "label_errors.json", label_errors)
    images = {}
    for name, fig in figures.items():
        path = out / f"{name}.png"
        plots.save_png(fig, path)
        images[name] = base64.b64encode(path.read_bytes()).decode("ascii")
    html = _TEMPLATE.render(
        title=page.title, data=data, images=images, rows=_class_rows(data), pairs=_pair_rows(data),
        config_text=page.config_text, summary_text=page.summary_text, robustness=page.robustness, pct=_pct,
        label_errors=label_errors,
    )  # fmt: skip
    target = out / "report.html"
    atomic.write_text(target, html)
    return target


def _summary_text(model: nn.Module, cfg: RunConfig, pre: Preprocess) -> str:
    """The model summary table, counting the run's frozen part as frozen (one-image probe on the model's device)."""
    from cnnkit.models.summary import as_trained, format_summary, summarize

    return format_summary(summarize(as_trained(model, cfg), (pre.channels, *pre.input_size)))


def _label_errors(pred: Predictions, loader: Iterable, class_names: list[str], split: str,
                  pre: Preprocess) -> dict[str, Any]:  # fmt: skip
    """The "likely label errors" section of the split's own (held-out) predictions, with the suspects' pixels."""
    from cnnkit.evaluation.label_errors import label_errors_section, loader_paths

    scores = pred.scores
    section = label_errors_section(scores, class_names, split, loader_paths(loader, scores.count))
    if section["rows"]:
        section["images"] = images_at(loader, section["positions"], scores.labels, pre.mean, pre.std)
    return section


def _train_preview(loader: Iterable, class_names: list[str], pre: Preprocess) -> tuple[torch.Tensor, list[str]]:
    """The first training batch after augmentation, de-normalised, with class names."""
    images, labels = next(iter(loader))
    mean = torch.tensor(pre.mean).view(1, -1, 1, 1)
    std = torch.tensor(pre.std).view(1, -1, 1, 1)
    shown = (images[:PREVIEW_SIZE].cpu().float() * std + mean).clamp(0, 1)
    return shown, [class_names[int(i)] for i in labels[:PREVIEW_SIZE]]


def _robustness(model, loader, pre: Preprocess, class_names, settings: ScoringSettings) -> dict[str, Any]:
    """Accuracy under FGSM and simple corruptions on the split's first images, and the FGSM example figure."""
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


def _write_label_verdict(path: Path, section: dict[str, Any] | None) -> None:
    """What the section concluded, for pages that show it beside the figure (the studio's Look tab):
    ``{"split", "listed", "reason"}``; no file when the report has no section."""
    if section is None:
        path.unlink(missing_ok=True)
        return
    atomic.write_json(path, {"split": section.get("split"), "listed": len(section.get("rows") or []),
                             "reason": section.get("reason") or ""})  # fmt: skip


def _figures(data, pred, history, preview, robustness) -> dict[str, Any]:
    names = data.class_names
    figs: dict[str, Any] = {}
    if history:
        figs["curves"] = plots.curves_figure(history)
    # Many classes: order them so that classes confused with each other sit together.
    cluster = len(names) > plots.ANNOTATE_MAX_CLASSES
    figs["confusion"] = plots.confusion_figure(data.confusion, names, normalize=False, cluster=cluster)
    figs["confusion_normalized"] = plots.confusion_figure(data.confusion, names, normalize=True, cluster=cluster)
    figs["per_class"] = plots.per_class_figure(data.prf, names)
    figs["reliability"] = plots.reliability_figure(data.calibration, title=(
        f"after temperature scaling (T = {data.temperature:.3g})" if data.calibration_raw else "reliability"))
    if data.known is not None:
        known = data.known
        figs["known"] = plots.known_score_figure(known["scores"], known["threshold"], data.split, known["score"])
    if data.calibration_raw is not None:
        figs["reliability_raw"] = plots.reliability_figure(data.calibration_raw, title="before: raw softmax")
    if len(pred.worst_index):
        probs = calibrated(pred.logits[pred.worst_index], data.temperature)
        titles = [
            f"true {names[int(pred.labels[i])]}\npred {names[int(p.argmax())]} {float(p.max()):.0%}"
            for i, p in zip(pred.worst_index.tolist(), probs, strict=True)
        ]
        figs["top_losses"] = plots.image_grid_figure(pred.worst_images, titles, title="highest-loss images")
    if preview is not None:
        title = "training images as the model sees them"
        figs["train_preview"] = plots.image_grid_figure(preview[0], preview[1], title=title)
    if robustness and robustness.get("figure") is not None:
        figs["adversarial"] = robustness["figure"]
    return figs


def _class_rows(data: ReportData) -> list[dict[str, Any]]:
    prf = data.prf
    return [
        {"name": name, "precision": float(prf["precision"][i]), "recall": float(prf["recall"][i]),
         "f1": float(prf["f1"][i]), "support": int(prf["support"][i])}
        for i, name in enumerate(data.class_names)
    ]  # fmt: skip


def _pair_rows(data: ReportData) -> list[dict[str, Any]]:
    return [{"true": data.class_names[t], "pred": data.class_names[p], "count": c} for t, p, c in data.confused_pairs]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def png_bytes(fig: Any) -> bytes:
    """A figure as PNG bytes (for notebooks and tests)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


# The page's HTML lives beside this module (package data), autoescaped.
_TEMPLATE = jinja2.Environment(
    loader=jinja2.PackageLoader("cnnkit.evaluation", "templates"), autoescape=True
).get_template("report.html.j2")

__all__ = ["Predictions", "ReportData", "ReportInputs", "collect_predictions", "images_at", "png_bytes", "summarise",
           "write_report"]

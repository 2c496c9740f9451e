"""The evaluation report: one self-contained ``report.html`` plus the PNGs it shows.

:func:`collect_predictions` runs a model over a loader once and keeps what the report
needs (logits, labels and the worst mistakes' images); :func:`write_report` turns that,
the training history and the run's config into figures and HTML. Nothing here loads data
or checkpoints: the caller (``cnnkit.commands.report``) does, so notebooks can pass their own.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import torch
from torch import nn
from torch.nn import functional as F

from cnnkit.evaluation import metrics as M
from cnnkit.evaluation import plots

# Mistakes shown in the top-losses gallery.
GALLERY_SIZE = 16


@dataclass
class Predictions:
    """One pass of a model over a loader.

    Attributes:
        logits: ``[N, num_classes]`` float32 on the CPU.
        labels: ``[N]`` true classes.
        worst_images: de-normalised images ``[K, C, H, W]`` in [0, 1] of the K samples
            with the highest loss, highest first, with their indices in ``worst_index``.
    """

    logits: torch.Tensor
    labels: torch.Tensor
    worst_images: torch.Tensor
    worst_index: torch.Tensor


@torch.no_grad()
def collect_predictions(
    model: nn.Module, loader: Iterable, *, mean: Iterable[float], std: Iterable[float],
    device: torch.device | str = "cpu", keep: int = GALLERY_SIZE,
) -> Predictions:  # fmt: skip
    """Logits and labels of every sample, keeping the ``keep`` worst images on the way.

    ``mean``/``std`` undo the loader's normalisation for display.
    """
    model.eval()
    device = torch.device(device)
    mean_t = torch.tensor(list(mean)).view(1, -1, 1, 1)
    std_t = torch.tensor(list(std)).view(1, -1, 1, 1)
    all_logits, all_labels = [], []
    best_loss = torch.empty(0)
    best_images = torch.empty(0)
    best_index = torch.empty(0, dtype=torch.long)
    seen = 0
    for images, labels in loader:
        logits = model(images.to(device)).float().cpu()
        labels = labels.cpu()
        losses = F.cross_entropy(logits, labels, reduction="none")
        shown = (images.cpu().float() * std_t + mean_t).clamp_(0, 1)
        # Running top-k by loss: merge this batch's candidates with the kept ones.
        best_loss = torch.cat([best_loss, losses])
        best_images = torch.cat([best_images, shown]) if best_images.numel() else shown
        best_index = torch.cat([best_index, torch.arange(seen, seen + len(labels))])
        order = best_loss.argsort(descending=True)[:keep]
        best_loss, best_images, best_index = best_loss[order], best_images[order], best_index[order]
        all_logits.append(logits)
        all_labels.append(labels)
        seen += len(labels)
    return Predictions(torch.cat(all_logits), torch.cat(all_labels), best_images, best_index)


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


def summarise(pred: Predictions, class_names: list[str], split: str) -> ReportData:
    """The report's numbers: the same loss/top-1/top-5 as ``cnnkit eval`` on the same images."""
    num_classes = len(class_names)
    confusion = M.confusion_matrix(pred.logits.argmax(1), pred.labels, num_classes)
    count = len(pred.labels)
    top5 = M.topk_correct(pred.logits, pred.labels, 5) / max(count, 1) if num_classes > 5 else None
    return ReportData(
        split=split,
        count=count,
        loss=float(F.cross_entropy(pred.logits, pred.labels)) if count else float("nan"),
        top1=M.accuracy(confusion),
        top5=top5,
        confusion=confusion,
        prf=M.precision_recall_f1(confusion),
        calibration=M.expected_calibration_error(pred.logits.softmax(1), pred.labels),
        confused_pairs=M.most_confused_pairs(confusion, k=10),
        class_names=list(class_names),
    )


def write_report(
    out_dir: str | Path, data: ReportData, pred: Predictions, *, history: list[dict[str, Any]],
    preview: tuple[torch.Tensor, list[str]] | None, config_text: str, summary_text: str, title: str,
    robustness: dict[str, Any] | None = None,
) -> Path:  # fmt: skip
    """Write the PNGs and ``report.html`` (images embedded) into ``out_dir``; return the HTML path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = _figures(data, pred, history, preview, robustness)
    images = {}
    for name, fig in figures.items():
        path = out / f"{name}.png"
        plots.save_png(fig, path)
        images[name] = base64.b64encode(path.read_bytes()).decode("ascii")
    page = _TEMPLATE.render(
        title=title, data=data, images=images, rows=_class_rows(data), pairs=_pair_rows(data),
        config_text=config_text, summary_text=summary_text, robustness=robustness, pct=_pct,
    )  # fmt: skip
    target = out / "report.html"
    _atomic_write_text(target, page)
    return target


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
    figs["reliability"] = plots.reliability_figure(data.calibration)
    if len(pred.worst_index):
        probs = pred.logits[pred.worst_index].softmax(1)
        titles = [
            f"true {names[int(pred.labels[i])]}\npred {names[int(p.argmax())]} {float(p.max()):.0%}"
            for i, p in zip(pred.worst_index.tolist(), probs)
        ]
        figs["top_losses"] = plots.image_grid_figure(pred.worst_images, titles, title="highest-loss images")
    if preview is not None:
        figs["train_preview"] = plots.image_grid_figure(preview[0], preview[1], title="training images as the model sees them")
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


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def png_bytes(fig: Any) -> bytes:
    """A figure as PNG bytes (for notebooks and tests)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


_TEMPLATE = jinja2.Environment(autoescape=True).from_string(
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em} td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4} td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee} pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:.85em}
.kpi{display:inline-block;margin-right:2em;font-size:1.2em}
</style></head><body>
<h1>{{ title }}</h1>
<p><span class="kpi">split: <b>{{ data.split }}</b> ({{ data.count }} images)</span>
<span class="kpi">top-1: <b>{{ pct(data.top1) }}</b></span>
<span class="kpi">top-5: <b>{{ pct(data.top5) }}</b></span>
<span class="kpi">loss: <b>{{ "%.4f"|format(data.loss) }}</b></span>
<span class="kpi">ECE: <b>{{ "%.4f"|format(data.calibration.ece) }}</b></span></p>
{% if images.curves %}<h2 id="curves">Training curves</h2>
<img alt="loss and accuracy curves" src="data:image/png;base64,{{ images.curves }}">{% endif %}
<h2 id="confusion">Confusion matrix</h2>
<img alt="confusion matrix (counts)" src="data:image/png;base64,{{ images.confusion }}">
<img alt="confusion matrix (row-normalised)" src="data:image/png;base64,{{ images.confusion_normalized }}">
<h2 id="per-class">Per-class precision, recall, F1</h2>
<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>
{% for r in rows %}<tr><td>{{ r.name }}</td><td>{{ pct(r.precision) }}</td><td>{{ pct(r.recall) }}</td><td>{{ pct(r.f1) }}</td><td>{{ r.support }}</td></tr>
{% endfor %}<tr><th>macro avg</th><td>{{ pct(data.prf.macro.precision) }}</td><td>{{ pct(data.prf.macro.recall) }}</td><td>{{ pct(data.prf.macro.f1) }}</td><td>{{ data.count }}</td></tr>
<tr><th>weighted avg</th><td>{{ pct(data.prf.weighted.precision) }}</td><td>{{ pct(data.prf.weighted.recall) }}</td><td>{{ pct(data.prf.weighted.f1) }}</td><td>{{ data.count }}</td></tr>
</table>
<img alt="per-class precision, recall and F1" src="data:image/png;base64,{{ images.per_class }}">
<h2 id="confused">Most confused pairs</h2>
{% if pairs %}<table><tr><th>true</th><th>predicted</th><th>images</th></tr>
{% for p in pairs %}<tr><td>{{ p.true }}</td><td>{{ p.pred }}</td><td>{{ p.count }}</td></tr>{% endfor %}</table>
{% else %}<p>No mistakes.</p>{% endif %}
{% if images.top_losses %}<h2 id="top-losses">Top losses</h2>
<img alt="highest-loss images" src="data:image/png;base64,{{ images.top_losses }}">{% endif %}
<h2 id="calibration">Calibration</h2>
<p>Expected calibration error (15 bins, top-1 confidence): {{ "%.4f"|format(data.calibration.ece) }}</p>
<img alt="reliability diagram" src="data:image/png;base64,{{ images.reliability }}">
{% if images.train_preview %}<h2 id="preview">Training images as the model sees them</h2>
<img alt="training images after augmentation" src="data:image/png;base64,{{ images.train_preview }}">{% endif %}
{% if robustness %}<h2 id="robustness">Robustness</h2>
<p>Top-1 accuracy on the first {{ robustness.images }} images of the split: FGSM moves every pixel by eps grey levels
against the gradient of the loss; the corruptions are Gaussian noise, a 5x5 box blur and +30 % brightness.</p>
<table><tr><th>perturbation</th><th>top-1</th></tr>
{% for name, acc in robustness.rows %}<tr><td>{{ name }}</td><td>{{ pct(acc) }}</td></tr>{% endfor %}</table>
{% if images.adversarial %}<img alt="adversarial example" src="data:image/png;base64,{{ images.adversarial }}">{% endif %}{% endif %}
<h2 id="model">Model</h2><pre>{{ summary_text }}</pre>
<h2 id="config">Config</h2><pre>{{ config_text }}</pre>
</body></html>
"""
)

__all__ = ["Predictions", "ReportData", "collect_predictions", "png_bytes", "summarise", "write_report"]

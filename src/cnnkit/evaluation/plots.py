"""Figures for the evaluation report: training curves, confusion, per-class scores,
calibration and image galleries.

Every function builds and returns its own :class:`matplotlib.figure.Figure` on the Agg
canvas and never touches ``pyplot``: no global figure registry to leak, no display
needed, safe from threads and notebooks. Callers write figures with :func:`save_png`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from cnnkit.atomic import atomic_write
from cnnkit.evaluation.metrics import CalibrationResult

DPI = 110
ANNOTATE_MAX_CLASSES = 20  # above this, per-cell numbers are unreadable at any sane size
MAX_TICK_LABELS = 100  # class names per confusion axis; at 16 inches more overlap even at 6 pt


def _figure(width: float, height: float, layout: str | None = "constrained") -> Figure:
    """A fresh figure (inches) on its own Agg canvas, laid out so labels are never cut
    (``layout=None``: the caller places the axes itself)."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: str | Path, dpi: int = DPI) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically (:mod:`cnnkit.atomic`): readers never
    see a half-written file. Parent folders are created. The figure is left open; it holds
    no global state, so dropping the reference frees it.
    """
    return atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=dpi))


# ----------------------------------------------------------------------------- training curves


def _column(history: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    """One metric per epoch as floats; NaN where a row lacks it or holds no number (rows of
    ``FitResult.history``, or of ``metrics.csv`` as :meth:`cnnkit.runfolder.RunFolder.read_metrics`
    reads it: None for an empty cell)."""
    values = [row.get(key) for row in history]
    return np.array([float(v) if isinstance(v, (int, float)) else math.nan for v in values], dtype=float)


def curves_figure(history: Sequence[Mapping[str, Any]]) -> Figure:
    """Loss and accuracy per epoch, train and validation, side by side.

    Args:
        history: one row per epoch with keys ``epoch``, ``train_loss``, ``train_acc``,
            ``val_loss``, ``val_acc`` (accuracies as fractions), as in ``metrics.csv`` or
            ``FitResult.history``. Missing values are skipped.

    Raises:
        ValueError: for an empty history.
    """
    if not history:
        raise ValueError("no epochs to plot")
    epochs = _column(history, "epoch")
    fig = _figure(10, 3.8)
    loss_ax, acc_ax = fig.subplots(1, 2)
    for ax, metric, label in ((loss_ax, "loss", "loss"), (acc_ax, "acc", "accuracy")):
        for split, style in (("train", "-"), ("val", "--")):
            values = _column(history, f"{split}_{metric}")
            # Markers keep a one-epoch run visible: a single point draws no line.
            ax.plot(epochs, values, style, marker="o", markersize=3, label=split)
        ax.set_xlabel("epoch")
        ax.set_title(label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    acc_ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    val_acc = _column(history, "val_acc")
    if not np.isnan(val_acc).all():
        best = int(np.nanargmax(val_acc))
        acc_ax.axvline(epochs[best], color="grey", linestyle=":", linewidth=1)
        acc_ax.set_title(f"accuracy (best val {val_acc[best]:.2%} at epoch {epochs[best]:g})")
    return fig


# ----------------------------------------------------------------------------- confusion matrix


def _numpy(values: torch.Tensor | np.ndarray | Sequence[float]) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def cluster_order(confusion: torch.Tensor | np.ndarray) -> np.ndarray:
    """A class order that puts classes confused with each other next to each other.

    Spectral seriation: sort classes by the Fiedler vector of the graph whose edge
    weights are the symmetric, row-normalised confusion rates. A small uniform weight
    keeps the graph connected, so the eigenvector exists even for a perfect classifier
    (whose order is then arbitrary: nothing is confused).

    Returns:
        int64 ``[C]`` permutation of class indices.
    """
    matrix = _numpy(confusion).astype(float)  # [C, C]
    size = matrix.shape[0]
    if size < 3:
        return np.arange(size)
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    weights = rates + rates.T + 1e-3 / size
    np.fill_diagonal(weights, 0)
    laplacian = np.diag(weights.sum(axis=1)) - weights
    fiedler = np.linalg.eigh(laplacian)[1][:, 1]  # eigenvector of the second-smallest eigenvalue
    return np.argsort(fiedler, kind="stable")


def _class_ticks(ax: Any, names: Sequence[str]) -> None:
    """Every class name when few; beyond that a thinned, smaller set that does not overlap."""
    size = len(names)
    step = math.ceil(size / MAX_TICK_LABELS)
    positions = np.arange(0, size, step)
    fontsize = 9 if size <= ANNOTATE_MAX_CLASSES else 6
    ax.set_xticks(positions, [names[i] for i in positions], rotation=90, fontsize=fontsize)
    ax.set_yticks(positions, [names[i] for i in positions], fontsize=fontsize)


def confusion_figure(
    confusion: torch.Tensor | np.ndarray,
    class_names: Sequence[str],
    normalize: bool = False,
    cluster: bool = False,
) -> Figure:
    """The confusion matrix as a heat map, rows true classes and columns predictions.

    Up to ``ANNOTATE_MAX_CLASSES`` classes every cell carries its number (so a 10-class
    figure has 100 cell texts); above that no cell text is drawn and tick labels are
    thinned to at most ``MAX_TICK_LABELS`` per axis.

    Args:
        confusion: ``[C, C]`` counts, as :func:`cnnkit.evaluation.metrics.confusion_matrix`.
        class_names: ``C`` names, in index order.
        normalize: show each row as fractions of that class's examples (recall on the
            diagonal) instead of counts; rows with no examples stay 0.
        cluster: reorder classes with :func:`cluster_order` so confused classes sit together.

    Raises:
        ValueError: when the matrix is not square or the names do not match its size.
    """
    counts = _numpy(confusion).astype(float)  # [C, C]
    size = counts.shape[0]
    if counts.shape != (size, size) or len(class_names) != size:
        raise ValueError(f"confusion {counts.shape} does not match {len(class_names)} class names")
    order = cluster_order(counts) if cluster else np.arange(size)
    counts = counts[np.ix_(order, order)]
    names = [str(class_names[i]) for i in order]
    values = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) if normalize else counts
    vmax = 1.0 if normalize else max(values.max(), 1.0)

    side = min(max(0.45 * size + 2.5, 5.0), 16.0)  # inches: 10 classes -> 7, 100 classes -> 16
    fig = _figure(side + 1.2, side)  # extra width for the colour bar
    ax = fig.subplots()
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=vmax, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, format=PercentFormatter(1.0) if normalize else None)
    _class_ticks(ax, names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix" + (" (row-normalised)" if normalize else " (counts)"))
    if size <= ANNOTATE_MAX_CLASSES:
        _annotate_cells(ax, values, vmax, fmt="{:.2f}" if normalize else "{:.0f}")
    return fig


def _annotate_cells(ax: Any, values: np.ndarray, vmax: float, fmt: str) -> None:
    """One number per cell, white on dark cells so it stays legible."""
    fontsize = 9 if values.shape[0] <= 12 else 6
    for (row, col), value in np.ndenumerate(values):
        color = "white" if value > 0.5 * vmax else "black"
        ax.text(col, row, fmt.format(value), ha="center", va="center", color=color, fontsize=fontsize)


# ----------------------------------------------------------------------------- per-class scores


def per_class_figure(prf: Mapping[str, Any], class_names: Sequence[str]) -> Figure:
    """Horizontal bars of precision, recall and F1 for each class, first class on top.

    Args:
        prf: the dict :func:`cnnkit.evaluation.metrics.precision_recall_f1` returns.
        class_names: ``C`` names, in index order; each label also shows the support.
    """
    size = len(class_names)
    support = _numpy(prf["support"])
    fig = _figure(8, min(max(0.3 * size + 1.5, 3.0), 40.0))
    ax = fig.subplots()
    rows = np.arange(size)
    height = 0.27
    for offset, key in zip((-height, 0.0, height), ("precision", "recall", "f1"), strict=True):
        ax.barh(rows + offset, _numpy(prf[key]), height=height, label=key)
    fontsize = 9 if size <= ANNOTATE_MAX_CLASSES else 6
    ax.set_yticks(rows, [f"{name} ({int(n)})" for name, n in zip(class_names, support, strict=True)],
                  fontsize=fontsize)  # fmt: skip
    ax.set_ylim(size - 0.5, -0.5)  # first class at the top, as in a table
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(axis="x", alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=3, fontsize=8)
    macro = prf["macro"]
    ax.set_title(f"per class (support)   macro precision {macro['precision']:.2%}  "
                 f"recall {macro['recall']:.2%}  F1 {macro['f1']:.2%}", fontsize=10)  # fmt: skip
    return fig


# ----------------------------------------------------------------------------- calibration


def reliability_figure(calibration: CalibrationResult, show_counts: bool = True, title: str = "reliability") -> Figure:
    """Reliability diagram: accuracy against confidence per bin, the diagonal being perfect.

    Args:
        calibration: from :func:`cnnkit.evaluation.metrics.expected_calibration_error`.
        show_counts: add a lower panel with the number of samples per bin (log scale),
            which shows how much each bar can be trusted.
        title: the plot's title, before its ECE.
    """
    edges = _numpy(calibration.bin_edges)
    lefts, widths = edges[:-1], np.diff(edges)
    centres = lefts + widths / 2
    accuracy = np.nan_to_num(_numpy(calibration.bin_accuracy), nan=0.0)  # empty bins draw no bar
    confidence = _numpy(calibration.bin_confidence)
    fig = _figure(5.5, 6.5 if show_counts else 5.0)
    if show_counts:
        ax, count_ax = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    else:
        ax, count_ax = fig.subplots(), None
    ax.bar(lefts, accuracy, width=widths, align="edge", edgecolor="black", linewidth=0.5, label="accuracy")
    # The gap to the bin's mean confidence is what ECE sums, weighted by count.
    ax.scatter(centres, confidence, color="tab:red", s=12, zorder=3, label="mean confidence")  # NaN: skipped
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"{title} (ECE {calibration.ece:.2%})")
    if count_ax is None:
        ax.set_xlabel("confidence (top-1 probability)")
        return fig
    counts = _numpy(calibration.bin_count)
    count_ax.bar(lefts, counts, width=widths, align="edge", color="grey", edgecolor="black", linewidth=0.5)
    if counts.max(initial=0) > 0:
        count_ax.set_yscale("log")  # a trained CNN puts most samples in the last bin or two
    count_ax.set_ylabel("samples")
    count_ax.set_xlabel("confidence (top-1 probability)")
    return fig


# ----------------------------------------------------------------------------- image galleries


def known_score_figure(scores: torch.Tensor | np.ndarray, threshold: float, split: str, score: str) -> Figure:
    """Histogram of a split's known-ness scores with the none-of-these threshold: the images
    left of the line are what ``--reject`` turns away (every one of a known class here)."""
    values = _numpy(scores)
    fig = _figure(6.0, 3.4)
    ax = fig.subplots()
    ax.hist(values, bins=40, color="tab:blue", alpha=0.8, label=f"{split} images")
    ax.axvline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold:.3g}")
    away = float((values < threshold).mean()) if len(values) else math.nan
    ax.set_title(f"{score} score on {split}: {away:.1%} below the threshold")
    ax.set_xlabel(f"{score} score (higher: more like the training images)")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    return fig


def _to_display(image: torch.Tensor) -> np.ndarray:
    """``[C, H, W]`` float in [0, 1] or uint8 -> ``[H, W]`` (grey) or ``[H, W, 3]`` floats."""
    array = image.detach().cpu()
    array = array.float() / 255 if array.dtype == torch.uint8 else array.float().clamp(0, 1)
    if array.shape[0] == 1:
        return array[0].numpy()  # [H, W]
    return array.permute(1, 2, 0).numpy()  # [H, W, C]


def image_grid_figure(
    images: torch.Tensor,
    titles: Sequence[str],
    ncols: int = 8,
    title: str | None = None,
) -> Figure:
    """Images in a grid, each under its own caption (top-losses gallery, training preview).

    Args:
        images: ``[N, C, H, W]`` with ``C`` 1 (drawn with a grey colour map) or 3; float in
            ``[0, 1]`` (clipped) or uint8 in ``[0, 255]``. Pass images before normalisation.
        titles: ``N`` captions; a newline splits one into lines.
        ncols: images per row (fewer when ``N`` is smaller).
        title: optional heading above the grid.

    Raises:
        ValueError: on an empty batch, a shape other than ``[N, 1|3, H, W]`` or a caption count
            other than ``N``.
    """
    if images.ndim != 4 or images.shape[0] == 0 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images [N, 1 or 3, H, W] with N > 0, got {tuple(images.shape)}")
    count = images.shape[0]
    if len(titles) != count:
        raise ValueError(f"{len(titles)} titles for {count} images")
    ncols = max(1, min(ncols, count))
    nrows = math.ceil(count / ncols)
    lines = max(str(t).count("\n") + 1 for t in titles)
    tile, caption, heading = 1.6, 0.15 * lines, 0.4 if title else 0.0  # inches
    width, height = tile * ncols, (tile + caption) * nrows + heading
    fig = _figure(width, height, layout=None)
    # A fixed grid: each image gets a tile with its caption above it. Constrained layout
    # measured every caption of every tile and took most of a report's time (4 s of 14).
    axes = fig.subplots(nrows, ncols, squeeze=False, gridspec_kw={
        "left": 0.01, "right": 0.99, "bottom": 0.01, "top": 1 - (heading + caption) / height,
        "wspace": 0.08, "hspace": caption / tile + 0.05})  # fmt: skip
    for index, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if index >= count:
            continue
        pixels = _to_display(images[index])
        ax.imshow(pixels, cmap="gray" if pixels.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(str(titles[index]), fontsize=7)
    if title:
        fig.suptitle(title)
    return fig

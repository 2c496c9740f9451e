"""Report figures: each one renders to a PNG that decodes, has the promised size and shows something."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from cnnkit.evaluation import metrics, plots
from cnnkit.runfolder import RunFolder

HISTORY = [
    {"epoch": e, "train_loss": 2.0 / e, "train_acc": 0.5 + 0.05 * e, "val_loss": 2.2 / e,
     "val_acc": 0.45 + 0.05 * e}
    for e in range(1, 7)
]  # fmt: skip


def _predictions(num_classes: int, count: int = 3000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[count, C]`` that are right about 70 % of the time, and their labels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(num_classes, (count,), generator=g)
    logits = torch.randn(count, num_classes, generator=g) * 2
    logits[torch.arange(count), labels] += 4
    return logits, labels


def _confusion(num_classes: int) -> torch.Tensor:
    logits, labels = _predictions(num_classes)
    return metrics.confusion_matrix(logits.argmax(dim=1), labels, num_classes)


def _names(num_classes: int) -> list[str]:
    return [f"class_{i}" for i in range(num_classes)]


def _saved(fig: Figure, path: Path) -> np.ndarray:
    """Save ``fig``, check the PNG decodes at the figure's size and is not blank; return its pixels."""
    assert isinstance(fig, Figure)
    plots.save_png(fig, path)
    with Image.open(path) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("RGB"))
    width, height = (fig.get_size_inches() * plots.DPI).round().astype(int)
    assert pixels.shape[:2] == (height, width)
    assert pixels.std() > 10, "figure is (nearly) one colour"
    packed = pixels.astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], dtype=np.uint32)  # [H, W] RGB ids
    assert len(np.unique(packed)) > 20  # distinct colours
    # Empty axes alone ink about 1 % of the pixels; every real figure here inks 2.8 % or more.
    assert (pixels.min(axis=2) < 200).mean() > 0.02, "nothing drawn beyond the axes"
    return pixels


def _cell_texts(fig: Figure) -> int:
    return sum(len(ax.texts) for ax in fig.axes)


# ----------------------------------------------------------------------------- one test per figure


def test_curves_figure(tmp_path: Path) -> None:
    fig = plots.curves_figure(HISTORY)
    pixels = _saved(fig, tmp_path / "curves.png")
    assert pixels.shape[1] > pixels.shape[0]  # two panels side by side
    loss_ax, acc_ax = fig.axes
    assert [line.get_label() for line in loss_ax.lines] == ["train", "val"]
    assert list(acc_ax.lines[1].get_ydata()) == [row["val_acc"] for row in HISTORY]


def test_curves_figure_reads_metrics_csv_rows(tmp_path: Path) -> None:
    # metrics.csv rows as RunFolder reads them back: floats, None where a value was None
    run = RunFolder(tmp_path)
    run.write_metrics([{**row, "val_top5": None} for row in HISTORY])
    rows = run.read_metrics()
    assert rows[0]["val_top5"] is None
    fig = plots.curves_figure(rows)
    assert list(fig.axes[0].lines[0].get_ydata()) == pytest.approx([row["train_loss"] for row in HISTORY])
    _saved(fig, tmp_path / "curves.png")


def test_single_epoch_and_empty_history(tmp_path: Path) -> None:
    _saved(plots.curves_figure(HISTORY[:1]), tmp_path / "one.png")
    with pytest.raises(ValueError):
        plots.curves_figure([])


@pytest.mark.parametrize("normalize", [False, True])
def test_confusion_figure_10_classes_numbers_every_cell(tmp_path: Path, normalize: bool) -> None:
    fig = plots.confusion_figure(_confusion(10), _names(10), normalize=normalize)
    assert _cell_texts(fig) == 100
    texts = [text.get_text() for text in fig.axes[0].texts]
    assert all("." in t for t in texts) if normalize else all(t.isdigit() for t in texts)
    _saved(fig, tmp_path / "confusion.png")


def test_confusion_figure_100_classes_has_no_cell_text(tmp_path: Path) -> None:
    confusion = _confusion(100)
    fig = plots.confusion_figure(confusion, _names(100), normalize=True, cluster=True)
    assert _cell_texts(fig) == 0
    labels = [label.get_text() for label in fig.axes[0].get_yticklabels()]
    assert len(labels) == 100 and sorted(labels) == sorted(_names(100))  # clustered, none lost
    _saved(fig, tmp_path / "confusion100.png")
    small = plots.confusion_figure(_confusion(10), _names(10))
    assert (fig.get_size_inches() > small.get_size_inches()).all()  # more classes, bigger figure


def test_confusion_ticks_are_thinned_for_many_classes() -> None:
    fig = plots.confusion_figure(torch.eye(250, dtype=torch.long), _names(250))
    ax = fig.axes[0]
    assert len(ax.get_xticks()) <= plots.MAX_TICK_LABELS
    assert all(label.get_fontsize() <= 6 for label in ax.get_xticklabels())


def test_cluster_order_groups_confused_classes() -> None:
    # Classes 0 and 3 are confused with each other, as are 1 and 4; 2 and 5 are clean.
    confusion = torch.eye(6, dtype=torch.long) * 50
    confusion[0, 3] = confusion[3, 0] = confusion[1, 4] = confusion[4, 1] = 20
    order = plots.cluster_order(confusion).tolist()
    assert sorted(order) == list(range(6))
    assert abs(order.index(0) - order.index(3)) == 1 and abs(order.index(1) - order.index(4)) == 1


@pytest.mark.parametrize("num_classes", [10, 100])
def test_per_class_figure(tmp_path: Path, num_classes: int) -> None:
    prf = metrics.precision_recall_f1(_confusion(num_classes))
    fig = plots.per_class_figure(prf, _names(num_classes))
    pixels = _saved(fig, tmp_path / "per_class.png")
    assert len(fig.axes[0].patches) == 3 * num_classes  # precision, recall and F1 bars
    assert pixels.shape[0] > pixels.shape[1] or num_classes <= 20  # grows downwards with classes


@pytest.mark.parametrize("show_counts", [True, False])
def test_reliability_figure(tmp_path: Path, show_counts: bool) -> None:
    logits, labels = _predictions(10)
    calibration = metrics.expected_calibration_error(logits.softmax(dim=1), labels)
    fig = plots.reliability_figure(calibration, show_counts=show_counts)
    assert f"{calibration.ece:.2%}" in fig.axes[0].get_title()
    assert len(fig.axes) == (2 if show_counts else 1)
    _saved(fig, tmp_path / "reliability.png")


def test_image_grid_colour_floats(tmp_path: Path) -> None:
    images = torch.rand(20, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    titles = [f"pred cat\ntrue dog {i}" for i in range(20)]
    fig = plots.image_grid_figure(images, titles, ncols=8, title="top losses")
    pixels = _saved(fig, tmp_path / "grid.png")
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 20 and len(fig.axes) == 24  # 3 rows of 8, the last 4 cells empty
    assert shown[0].images[0].get_array().shape == (32, 32, 3)
    assert pixels.shape[1] > pixels.shape[0]


def test_image_grid_grey_uint8_uses_grey_colormap(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8, generator=g)
    fig = plots.image_grid_figure(images, ["a", "b", "c"])
    assert len(fig.axes) == 3  # ncols shrinks to the batch
    image = fig.axes[0].images[0]
    assert image.get_cmap().name == "gray"
    assert image.get_array().max() <= 1.0  # uint8 scaled to [0, 1]
    _saved(fig, tmp_path / "grey.png")


def test_image_grid_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="titles"):
        plots.image_grid_figure(torch.rand(2, 3, 8, 8), ["only one"])
    with pytest.raises(ValueError, match="N, 1 or 3, H, W"):
        plots.image_grid_figure(torch.rand(2, 8, 8), ["a", "b"])


# ----------------------------------------------------------------------------- save_png


def test_save_png_is_atomic_and_readable(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "folder" / "fig.png"
    plots.save_png(plots.curves_figure(HISTORY), target)
    first = target.read_bytes()
    plots.save_png(plots.curves_figure(HISTORY[:3]), target)  # replaces, never appends
    assert target.read_bytes() != first
    assert [p.name for p in target.parent.iterdir()] == ["fig.png"]  # no temp file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600


def test_save_png_cleans_up_after_a_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fig = plots.curves_figure(HISTORY)

    def broken(handle, *args: object, **kwargs: object) -> None:
        handle.write(b"half a png")  # the temporary file cnnkit.atomic hands it
        raise OSError("disk full")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        plots.save_png(fig, tmp_path / "fig.png")
    assert list(tmp_path.iterdir()) == []


def test_plots_never_touch_pyplot(tmp_path: Path) -> None:
    # pyplot keeps a global registry of open figures (a leak in a server, a clash between
    # threads) and picks a GUI backend; building and saving report figures must not use it.
    had_pyplot = "matplotlib.pyplot" in sys.modules
    open_before = sys.modules["matplotlib.pyplot"].get_fignums() if had_pyplot else []
    plots.save_png(plots.image_grid_figure(torch.rand(2, 3, 8, 8), ["a", "b"]), tmp_path / "grid.png")
    plots.save_png(plots.confusion_figure(torch.eye(3, dtype=torch.long), _names(3)), tmp_path / "cm.png")
    if had_pyplot:  # another test imported it: at least no figure was registered there
        assert sys.modules["matplotlib.pyplot"].get_fignums() == open_before
    else:
        assert "matplotlib.pyplot" not in sys.modules

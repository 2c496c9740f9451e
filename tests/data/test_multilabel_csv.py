"""Multi-label CSV lists (``path,labels`` and the Kaggle 0/1-column layout) of real imagenette-2k photos."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from cnnkit.data.folder import is_multilabel_csv, multilabel_sample_weights, multilabel_split, read_multilabel_csv
from cnnkit.data.folder.multilabel import LAYOUT_COLUMNS, LAYOUT_LABELS, csv_layout, iter_label_sets
from cnnkit.errors import DataError


@pytest.fixture()
def photos(tmp_path: Path, imagenette: Path) -> list[str]:
    """12 real photos copied beside the CSVs; their names relative to tmp_path."""
    names = []
    for i, photo in enumerate(sorted((imagenette / "train" / "church").glob("*.JPEG"))[:12]):
        (tmp_path / "img").mkdir(exist_ok=True)
        shutil.copy(photo, tmp_path / "img" / f"{i}.jpg")
        names.append(f"img/{i}.jpg")
    return names


def _write(path: Path, text: str) -> Path:
    path.write_text(text.strip() + "\n", encoding="utf-8")
    return path


def _read(path: Path, val: float = 0.0, test: float = 0.0, seed: int = 0):
    return read_multilabel_csv(path, val_fraction=val, test_fraction=test, seed=seed)


def test_labels_layout_with_semicolons_empty_cells_and_splits(tmp_path: Path, photos: list[str]) -> None:
    csv_file = _write(
        tmp_path / "labels.csv",
        f"""
Path,Labels,Split
{photos[0]},golden retriever;cat,train
{photos[1]},cat,train

{photos[2]},,train
{photos[3]},golden retriever; sofa ;cat;cat,valid
{photos[4]},sofa,train
""",
    )
    data = _read(csv_file)
    assert data.layout == LAYOUT_LABELS
    assert data.class_names == ["cat", "golden retriever", "sofa"]
    assert set(data.splits) == {"train", "val"}
    train = data.splits["train"]
    assert train.targets.dtype == torch.float32 and train.targets.shape == (4, 3)
    assert train.label_indices() == [[0, 1], [0], [], [2]]
    assert train.paths[0] == str(tmp_path / photos[0])
    assert list(iter_label_sets(data, "val")) == [(str(tmp_path / photos[3]), ["cat", "golden retriever", "sofa"])]
    assert any("1 image(s) with no label" in note for note in data.notes)


def test_whitespace_separates_labels_when_no_cell_has_a_semicolon(tmp_path: Path, photos: list[str]) -> None:
    csv_file = _write(tmp_path / "tags.csv", f"image,tags\n{photos[0]},haze primary  water\n{photos[1]},clear primary")
    data = _read(csv_file)
    assert data.class_names == ["clear", "haze", "primary", "water"]
    assert data.splits["train"].label_indices() == [[1, 2, 3], [0, 2]]
    assert any("label(s) on a single image" in note and "haze" in note for note in data.notes)


def test_kaggle_layout_sorts_class_columns(tmp_path: Path, photos: list[str]) -> None:
    csv_file = _write(
        tmp_path / "kaggle.csv",
        f"""
filename,zebra,apple,mango,split
{photos[0]},1,0,1,train
{photos[1]},0,1.0,0,train
{photos[2]},0,0,0,train
{photos[3]},true,0,0,test
""",
    )
    data = _read(csv_file)
    assert data.layout == LAYOUT_COLUMNS
    assert data.class_names == ["apple", "mango", "zebra"]
    assert data.splits["train"].label_indices() == [[1, 2], [0], []]
    assert data.splits["test"].label_indices() == [[2]]


def test_kaggle_layout_bad_cell_names_line_and_column(tmp_path: Path, photos: list[str]) -> None:
    csv_file = _write(tmp_path / "kaggle.csv", f"path,cat,dog\n{photos[0]},1,0\n{photos[1]},0,2")
    with pytest.raises(DataError, match=r"kaggle.csv line 3: column 'dog' holds '2'"):
        _read(csv_file)


@pytest.mark.parametrize(
    ("header", "layout"),
    [
        ("path,label", None),
        ("path,label,split", None),
        ("file,labels", LAYOUT_LABELS),
        ("image,tags,split", LAYOUT_LABELS),
        ("path,cat,dog", LAYOUT_COLUMNS),
        ("path,cat,split", None),  # one class column: not a classifier's worth
        ("name,cat,dog", None),  # no path column
    ],
)
def test_layout_is_taken_from_the_header(tmp_path: Path, header: str, layout: str | None) -> None:
    assert csv_layout(header.split(",")) == layout
    csv_file = _write(tmp_path / "x.csv", header + "\n")
    assert is_multilabel_csv(csv_file) is (layout is not None)


def test_extra_columns_of_a_single_label_csv_are_not_class_columns(tmp_path: Path, photos: list[str]) -> None:
    assert is_multilabel_csv(_write(tmp_path / "kaggle.csv", f"path,cat,dog\n{photos[0]},1,0"))
    assert not is_multilabel_csv(_write(tmp_path / "single.csv", f"path,species,photographer\n{photos[0]},cat,Ann"))


def test_is_multilabel_csv_is_false_for_missing_or_empty_files(tmp_path: Path) -> None:
    assert not is_multilabel_csv(tmp_path / "absent.csv")
    assert not is_multilabel_csv(_write(tmp_path / "empty.csv", ""))


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("{0},a;b\nmissing.jpg,a", r"line 3: file not found: .*missing.jpg; paths are relative"),
        ("{0},a;b\n,a", r"line 3: empty path"),
        ("{0},a\n{1},a", r"has 1 class\(es\) \(a\)"),
        ("{0},a\n{1},", r"has 1 class\(es\)"),
    ],
)
def test_errors_name_the_line(tmp_path: Path, photos: list[str], rows: str, message: str) -> None:
    csv_file = _write(tmp_path / "labels.csv", "path,labels\n" + rows.format(*photos))
    with pytest.raises(DataError, match=message):
        _read(csv_file)


def test_unknown_split_and_label_only_held_out(tmp_path: Path, photos: list[str]) -> None:
    bad_split = _write(tmp_path / "a.csv", f"path,labels,split\n{photos[0]},a;b,train\n{photos[1]},a,dev")
    with pytest.raises(DataError, match=r"a.csv line 3: unknown split 'dev'"):
        _read(bad_split)
    held_out = _write(tmp_path / "b.csv", f"path,labels,split\n{photos[0]},a;b,train\n{photos[1]},a;c,val")
    with pytest.raises(DataError, match=r"b.csv line 3: label 'c' \(val\) has no train rows"):
        _read(held_out)


def test_single_label_csv_is_refused_with_the_expected_columns(tmp_path: Path, photos: list[str]) -> None:
    csv_file = _write(tmp_path / "single.csv", f"path,label\n{photos[0]},a\n{photos[1]},b")
    with pytest.raises(DataError, match=r"not a multi-label list: found path, label"):
        _read(csv_file)


def test_missing_splits_are_carved_keeping_every_label_in_train(tmp_path: Path, photos: list[str]) -> None:
    # 12 photos, labels of very different frequencies: "rare" on two images only.
    sets = ["a;b", "a", "a;c", "b", "a;b;c", "c", "a", "b;rare", "a", "c;rare", "", "a;b"]
    csv_file = _write(tmp_path / "labels.csv", "path,labels\n" + "\n".join(
        f"{p},{s}" for p, s in zip(photos, sets, strict=True)))  # fmt: skip
    data = _read(csv_file, val=0.25, test=0.25, seed=3)
    sizes = {name: len(files) for name, files in data.splits.items()}
    assert sum(sizes.values()) == 12 and sizes["train"] >= 5 and sizes["val"] >= 2 and sizes["test"] >= 2
    assert bool((data.splits["train"].targets.sum(0) > 0).all()), "a label lost every training image"
    again = _read(csv_file, val=0.25, test=0.25, seed=3)
    assert again.splits["val"].paths == data.splits["val"].paths


def test_multilabel_split_follows_each_labels_share() -> None:
    generator = torch.Generator().manual_seed(1)
    rates = torch.tensor([0.5, 0.3, 0.1, 0.03, 0.006])
    targets = (torch.rand(1000, 5, generator=generator) < rates).float()
    split = multilabel_split(targets, {"val": 0.2}, seed=0)
    assert sorted(split["train"] + split["val"]) == list(range(1000))
    assert abs(len(split["val"]) - 200) <= 10
    per_label = targets[split["val"]].sum(0) / targets.sum(0)
    assert torch.allclose(per_label, torch.full((5,), 0.2), atol=0.1), per_label
    assert bool((targets[split["train"]].sum(0) > 0).all())
    assert multilabel_split(targets, {"val": 0.2}, seed=0) == split
    assert multilabel_split(targets, {"val": 0.2}, seed=1) != split


def test_a_label_of_two_images_keeps_one_in_train() -> None:
    # Both images of label 1 also carry label 0, which is placed second; a held-out split
    # that wants label 1 must not take both.
    targets = torch.tensor([[1, 1], [1, 1], [1, 0], [1, 0], [0, 0]], dtype=torch.float32)
    for seed in range(10):
        split = multilabel_split(targets, {"val": 0.4, "test": 0.4}, seed=seed)
        assert targets[split["train"], 1].sum() >= 1, (seed, split)


def test_sample_weights_draw_every_label_about_equally() -> None:
    # 90 images of "common" only, 10 of "common" + "rare", 20 with no label.
    targets = torch.zeros(120, 2)
    targets[:100, 0] = 1
    targets[90:100, 1] = 1
    weights = multilabel_sample_weights(targets)
    assert weights[0] == pytest.approx(1 / 100) and weights[95] == pytest.approx(1 / 10)
    assert weights[110] == pytest.approx(1 / 20)
    drawn = torch.multinomial(weights, 30000, replacement=True, generator=torch.Generator().manual_seed(0))
    rare_share = float(targets[drawn, 1].mean())  # 1/10 of the images, about a third of the draws
    none_share = float((targets[drawn].sum(1) == 0).float().mean())
    assert 0.28 < rare_share < 0.39 and 0.28 < none_share < 0.39

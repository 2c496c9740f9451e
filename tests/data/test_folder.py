"""Image folders and CSV lists on disk: scanning, splitting, decoding, skipping bad files.

Trees are built in tmp_path from real imagenette-2k photos plus a few converted files
(greyscale, RGBA, palette, 16-bit) so the decoder sees what users' folders hold.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageFile
from torchvision.transforms import v2

from cnnkit.data.builder import FileLoader
from cnnkit.data.folder import (
    IMAGE_EXTENSIONS,
    FileDataset,
    ImageFileDataset,
    ImageLoadError,
    SkipLog,
    collate_skip_bad,
    fingerprint,
    load_image,
    read_csv,
    scan_folder,
    skipped_files_log,
    stratified_split,
)
from cnnkit.errors import DataError

CLASSES = ["cassette_player", "church", "tench"]
PER_CLASS = 6


def _photos(imagenette: Path, name: str, count: int, split: str = "train") -> list[Path]:
    return sorted((imagenette / split / name).glob("*.JPEG"))[:count]


def _copy_class(imagenette: Path, dest: Path, name: str, count: int, split: str = "train") -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for photo in _photos(imagenette, name, count, split):
        shutil.copy(photo, dest / photo.name)


@pytest.fixture()
def tree(tmp_path: Path, imagenette: Path) -> Path:
    """3 classes x (6 JPEGs + 1 extra image), a notes.txt and hidden clutter."""
    root = tmp_path / "raw-img"
    for name in CLASSES:
        _copy_class(imagenette, root / name, name, PER_CLASS)
    photo = Image.open(_photos(imagenette, "church", 1, "val")[0])
    photo.convert("L").save(root / "cassette_player" / "grey.png")
    rgba = photo.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(root / "church" / "alpha.PNG")  # upper-case suffix must count too
    photo.convert("P", palette=Image.Palette.ADAPTIVE).save(root / "tench" / "palette.gif")
    (root / "cassette_player" / "notes.txt").write_text("shot on a Tuesday")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    hidden = root / "tench" / ".ipynb_checkpoints"
    hidden.mkdir()
    shutil.copy(_photos(imagenette, "tench", 1, "val")[0], hidden / "copy-checkpoint.JPEG")
    (root / ".ipynb_checkpoints").mkdir()
    return root


def _per_class(dataset: FileDataset, split: str) -> Counter[str]:
    return Counter(dataset.class_names[label] for label in dataset.splits[split].labels)


# ----------------------------------------------------------------------------- folders


def test_scan_finds_classes_images_and_ignored_files(tree: Path) -> None:
    dataset = scan_folder(tree, val_fraction=0.0, test_fraction=0.0, seed=0)

    assert dataset.class_names == CLASSES
    assert list(dataset.splits) == ["train"]
    assert _per_class(dataset, "train") == {name: PER_CLASS + 1 for name in CLASSES}
    assert [Path(p).name for p, _ in dataset.ignored] == ["notes.txt"]
    assert "not an image" in dataset.ignored[0][1]
    every_path = dataset.splits["train"].paths
    assert not [p for p in every_path if ".ipynb_checkpoints" in p]
    assert every_path == sorted(every_path)  # class folders are sorted, files within them
    assert {Path(p).suffix.lower() for p in every_path} <= IMAGE_EXTENSIONS
    assert dataset.root == str(tree)


def test_scan_splits_stratified_and_seeded(tree: Path) -> None:
    dataset = scan_folder(tree, val_fraction=0.3, test_fraction=0.15, seed=0)

    # 7 images per class: round(2.1) = 2 for val, round(1.05) = 1 for test, 4 left to train.
    assert _per_class(dataset, "val") == {name: 2 for name in CLASSES}
    assert _per_class(dataset, "test") == {name: 1 for name in CLASSES}
    assert _per_class(dataset, "train") == {name: 4 for name in CLASSES}
    parts = [set(dataset.splits[s].paths) for s in ("train", "val", "test")]
    assert sum(len(p) for p in parts) == len(set().union(*parts)) == 21

    again = scan_folder(tree, val_fraction=0.3, test_fraction=0.15, seed=0)
    other = scan_folder(tree, val_fraction=0.3, test_fraction=0.15, seed=1)
    assert again.splits == dataset.splits
    assert other.splits["val"].paths != dataset.splits["val"].paths
    assert fingerprint(again) == fingerprint(dataset) != fingerprint(other)


def test_split_folders_are_detected_with_aliases(tmp_path: Path, imagenette: Path) -> None:
    for name in CLASSES:
        _copy_class(imagenette, tmp_path / "train" / name, name, 5)
        _copy_class(imagenette, tmp_path / "valid" / name, name, 2, split="val")
        _copy_class(imagenette, tmp_path / "test" / name, name, 3, split="val")
    (tmp_path / "README.md").write_text("a dataset card")

    dataset = scan_folder(tmp_path, val_fraction=0.5, test_fraction=0.0, seed=0)

    assert dataset.class_names == CLASSES
    # The folders win over val_fraction: nothing is carved out of train.
    assert {s: len(f) for s, f in dataset.splits.items()} == {"train": 15, "val": 6, "test": 9}
    assert all("/valid/" in p.replace(os.sep, "/") for p in dataset.splits["val"].paths)
    assert [Path(p).name for p, _ in dataset.ignored] == ["README.md"]


def test_missing_val_folder_is_carved_from_train(tmp_path: Path, imagenette: Path) -> None:
    for name in CLASSES:
        _copy_class(imagenette, tmp_path / "train" / name, name, 6)
        _copy_class(imagenette, tmp_path / "test" / name, name, 2, split="val")

    dataset = scan_folder(tmp_path, val_fraction=0.2, test_fraction=0.2, seed=3)

    assert _per_class(dataset, "val") == {name: 1 for name in CLASSES}  # round(1.2) = 1
    assert _per_class(dataset, "train") == {name: 5 for name in CLASSES}
    assert _per_class(dataset, "test") == {name: 2 for name in CLASSES}  # the folder, untouched
    assert not set(dataset.splits["val"].paths) & set(dataset.splits["train"].paths)


def test_val_class_unknown_to_train_is_an_error(tmp_path: Path, imagenette: Path) -> None:
    for name in CLASSES[:2]:
        _copy_class(imagenette, tmp_path / "train" / name, name, 2)
    _copy_class(imagenette, tmp_path / "val" / "tench", "tench", 2, split="val")

    with pytest.raises(DataError, match="tench.*no match"):
        scan_folder(tmp_path, val_fraction=0.0, test_fraction=0.0, seed=0)


def test_real_imagenette_scans_to_its_split_folders(imagenette: Path) -> None:
    dataset = scan_folder(imagenette, val_fraction=0.0, test_fraction=0.0, seed=0)

    assert len(dataset.class_names) == 10
    assert "english_springer" in dataset.class_names
    assert {s: len(f) for s, f in dataset.splits.items()} == {"train": 1500, "val": 500}
    assert set(Counter(dataset.splits["train"].labels).values()) == {150}
    assert set(Counter(dataset.splits["val"].labels).values()) == {50}
    assert len(fingerprint(dataset)) == 12


def test_missing_folder_says_how_to_give_data(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data folder not found: .*nowhere.*one sub-folder"):
        scan_folder(tmp_path / "nowhere", val_fraction=0.2, test_fraction=0.0, seed=0)


def test_empty_class_folder_is_named(tree: Path) -> None:
    (tree / "empty_class").mkdir()
    with pytest.raises(DataError, match="empty_class has no images"):
        scan_folder(tree, val_fraction=0.0, test_fraction=0.0, seed=0)


def test_no_class_folders_and_one_class_are_errors(tmp_path: Path, imagenette: Path) -> None:
    (tmp_path / "loose.txt").write_text("no folders here")
    with pytest.raises(DataError, match="no class folders"):
        scan_folder(tmp_path, val_fraction=0.0, test_fraction=0.0, seed=0)
    _copy_class(imagenette, tmp_path / "tench", "tench", 2)
    with pytest.raises(DataError, match="at least 2"):
        scan_folder(tmp_path, val_fraction=0.0, test_fraction=0.0, seed=0)


def test_stratified_split_keeps_balance_and_train() -> None:
    labels = [0] * 10 + [1] * 3 + [2] * 1
    parts = stratified_split(labels, {"val": 0.2, "test": 0.1}, seed=7)

    counts = {name: Counter(labels[i] for i in idx) for name, idx in parts.items()}
    assert counts["val"] == {0: 2, 1: 1}  # round(0.6) -> at least 1; the lone item stays
    assert counts["test"] == {0: 1, 1: 1}
    assert counts["train"] == {0: 7, 1: 1, 2: 1}
    assert sorted(i for idx in parts.values() for i in idx) == list(range(len(labels)))
    assert parts == stratified_split(labels, {"val": 0.2, "test": 0.1}, seed=7)


# ----------------------------------------------------------------------------- CSV


def _write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_csv_with_and_without_split_column(tree: Path) -> None:
    files = sorted(p for p in tree.glob("*/*.JPEG"))
    rows = [f"{p.relative_to(tree).as_posix()},{p.parent.name}" for p in files]
    rows[0] = f"{files[0]},{files[0].parent.name}"  # absolute paths are allowed too
    dataset = read_csv(
        _write_csv(tree / "labels.csv", "Image,Class", rows),
        val_fraction=0.2,
        test_fraction=0.0,
        seed=0,
    )
    assert dataset.class_names == CLASSES
    assert _per_class(dataset, "val") == {name: 1 for name in CLASSES}
    assert _per_class(dataset, "train") == {name: 5 for name in CLASSES}
    assert dataset.root == str(tree)

    splits = ["train", "train", "valid", "test"] * (len(files) // 4 + 1)
    split_rows = [f"{s},{row}" for s, row in zip(splits, rows, strict=False)]
    labelled = read_csv(
        _write_csv(tree / "split.csv", "split,filename,label", split_rows),
        val_fraction=0.0,
        test_fraction=0.0,
        seed=0,
    )
    sizes = {s: len(f) for s, f in labelled.splits.items()}
    assert sizes == dict(Counter("val" if s == "valid" else s for s in splits[: len(files)]))
    first = labelled.splits["train"]
    assert Path(first.paths[0]) == files[0]
    assert labelled.class_names[first.labels[0]] == files[0].parent.name


def test_csv_missing_file_names_the_line(tree: Path) -> None:
    csv_path = _write_csv(
        tree / "labels.csv",
        "path,label",
        ["tench/" + p.name + ",tench" for p in sorted((tree / "tench").glob("*.JPEG"))[:2]]
        + ["church/not-there.jpg,church"],
    )
    with pytest.raises(DataError, match=r"line 4: file not found: .*not-there\.jpg"):
        read_csv(csv_path, val_fraction=0.0, test_fraction=0.0, seed=0)


def test_csv_missing_column_lists_found_and_expected(tree: Path) -> None:
    csv_path = _write_csv(tree / "labels.csv", "path,species", ["tench/x.jpg,tench"])
    with pytest.raises(DataError, match="no label column: found path, species; expected one of"):
        read_csv(csv_path, val_fraction=0.0, test_fraction=0.0, seed=0)


def test_csv_empty_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        read_csv(tmp_path / "empty.csv", val_fraction=0.0, test_fraction=0.0, seed=0)


# ----------------------------------------------------------------------------- decoding


def test_load_image_modes_and_sizes(tree: Path) -> None:
    grey = load_image(tree / "cassette_player" / "grey.png", "RGB")
    assert (grey.mode, grey.size) == ("RGB", (224, 224))
    assert load_image(tree / "cassette_player" / "grey.png", "L").mode == "L"

    alpha = load_image(tree / "church" / "alpha.PNG", "RGB")
    assert (alpha.mode, alpha.size) == ("RGB", (224, 224))
    # Half-transparent over white lifts every pixel to at least ~127.
    assert min(lo for lo, _ in alpha.getextrema()) >= 126

    palette = load_image(tree / "tench" / "palette.gif", "L")
    assert (palette.mode, palette.size) == ("L", (224, 224))


def test_load_image_transparency_goes_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", (4, 2), (255, 0, 0, 255))
    image.putpixel((0, 0), (0, 0, 0, 0))
    image.save(tmp_path / "a.png")
    palette = Image.new("P", (4, 2), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0])
    palette.putpixel((0, 0), 0)
    palette.save(tmp_path / "p.gif", transparency=0)  # palette index 0 (black) transparent

    for name in ("a.png", "p.gif"):
        rgb = load_image(tmp_path / name, "RGB")
        assert rgb.getpixel((0, 0)) == (255, 255, 255), name
        assert rgb.getpixel((1, 0)) == (255, 0, 0), name


def test_load_image_scales_16_bit(tmp_path: Path) -> None:
    image = Image.new("I;16", (3, 2))
    image.putpixel((0, 0), 65535)
    image.putpixel((1, 0), 32896)  # = 128 * 257
    image.save(tmp_path / "deep.png")

    grey = load_image(tmp_path / "deep.png", "L")
    assert (grey.mode, grey.size) == ("L", (3, 2))
    assert [grey.getpixel((x, 0)) for x in range(3)] == [255, 128, 0]


def test_load_image_applies_exif_and_converts_cmyk(tmp_path: Path, imagenette: Path) -> None:
    photo = Image.open(_photos(imagenette, "church", 1)[0]).convert("RGB").resize((40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    photo.save(tmp_path / "rotated.jpg", exif=exif)
    photo.convert("CMYK").save(tmp_path / "cmyk.jpg")

    assert load_image(tmp_path / "rotated.jpg", "RGB").size == (20, 40)
    cmyk = load_image(tmp_path / "cmyk.jpg", "RGB")
    assert (cmyk.mode, cmyk.size) == ("RGB", (40, 20))


def test_bad_files_raise_image_load_error(
    tmp_path: Path, imagenette: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _photos(imagenette, "tench", 1)[0].read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("not a picture")
    # A library elsewhere in the process may have switched truncated loading on.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)

    with pytest.raises(ImageLoadError, match="truncated"):
        load_image(tmp_path / "cut.jpg", "RGB")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is restored
    with pytest.raises(ImageLoadError, match="zero bytes") as zero:
        load_image(tmp_path / "zero.jpg", "RGB")
    assert zero.value.path == str(tmp_path / "zero.jpg")
    with pytest.raises(ImageLoadError, match="not an image"):
        load_image(tmp_path / "text.png", "RGB")
    assert issubclass(ImageLoadError, DataError)


def test_decompression_bomb_is_an_image_load_error(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 224 x 224 is over twice this
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_image(tree / "cassette_player" / "grey.png", "RGB")


# ----------------------------------------------------------------------------- dataset


def test_dataset_skips_bad_files_in_batches(tree: Path) -> None:
    dataset = scan_folder(tree, val_fraction=0.0, test_fraction=0.0, seed=0)
    files = dataset.splits["train"]
    bad = Path(files.paths[1])
    bad.write_bytes(bad.read_bytes()[:500])  # truncate one photo after the scan
    transform = v2.Compose(
        [v2.ToImage(), v2.Resize((32, 32)), v2.ToDtype(torch.float32, scale=True)]
    )
    images = ImageFileDataset(files.paths[:8], files.labels[:8], transform, mode="RGB")
    loader = torch.utils.data.DataLoader(images, batch_size=4, collate_fn=collate_skip_bad)

    with pytest.warns(RuntimeWarning, match=f"{bad.name}.*truncated"):
        batches = list(loader)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second pass must not warn again for the file
        list(loader)

    assert [tuple(b[0].shape) for b in batches] == [(3, 3, 32, 32), (4, 3, 32, 32)]
    assert batches[0][1].tolist() == [files.labels[i] for i in (0, 2, 3)]
    assert batches[0][1].dtype == torch.long
    assert images.bad_files == {str(bad): images.bad_files[str(bad)]}
    assert collate_skip_bad([None, None]) is None


# ----------------------------------------------------------------------------- each dataset its own skip log


def _broken_copies(tree: Path, dest: Path, names: list[str]) -> list[str]:
    """Good photos of ``tree`` plus one unreadable file per name, in ``dest``."""
    dest.mkdir()
    for name in names:
        (dest / name).write_bytes(b"not an image")
    return [str(p) for p in sorted((tree / "church").glob("*.JPEG"))[:3]] + [str(dest / n) for n in names]


@pytest.mark.filterwarnings("error:skipping:RuntimeWarning")  # a dataset with a log records, never warns
def test_skip_logs_of_two_datasets_in_one_process_stay_separate(tree: Path, tmp_path: Path) -> None:
    transform = v2.Compose([v2.ToImage(), v2.Resize((16, 16)), v2.ToDtype(torch.float32, scale=True)])
    first_files = _broken_copies(tree, tmp_path / "a", ["first.jpg"])
    second_files = _broken_copies(tree, tmp_path / "b", ["second.jpg", "third.png"])
    first, second = SkipLog(tmp_path / "first.jsonl"), SkipLog(tmp_path / "second.jsonl")
    one = ImageFileDataset(first_files, [0] * len(first_files), transform, skip_log=first)
    two = ImageFileDataset(second_files, [0] * len(second_files), transform, skip_log=second)
    # one decodes in a worker process (the log travels with the dataset), the other in this one
    batches = list(torch.utils.data.DataLoader(one, batch_size=2, num_workers=1, collate_fn=collate_skip_bad))
    list(torch.utils.data.DataLoader(two, batch_size=2, collate_fn=collate_skip_bad))
    # a file decoded outside both datasets (a studio upload) lands in neither list
    with pytest.raises(ImageLoadError):
        load_image(_broken_copies(tree, tmp_path / "upload", ["upload.jpg"])[-1], "RGB")

    assert sum(len(labels) for _, labels in batches) == 3
    assert set(first.read()) == {first_files[-1]} and first.read()[first_files[-1]]["kind"] == "not-an-image"
    assert set(second.read()) == set(second_files[-2:])


def test_skipped_files_log_hands_its_log_to_the_loaders_and_takes_it_back(tree: Path, tmp_path: Path) -> None:
    transform = v2.Compose([v2.ToImage(), v2.Resize((16, 16)), v2.ToDtype(torch.float32, scale=True)])
    files = _broken_copies(tree, tmp_path / "a", ["bad.jpg"])
    loader = FileLoader(ImageFileDataset(files, [0] * len(files), transform), 2, shuffle=False, workers=1, seed=0,
                        drop_last=False)  # fmt: skip
    list(loader)  # its persistent worker starts without a log (and warns, in its own process)
    with skipped_files_log(tmp_path / "run.jsonl", [loader, None]) as path:
        assert loader.skip_log is not None and loader.skip_log.path == path
        list(loader)  # a fresh worker, with the log
    assert loader.skip_log is None
    assert set(SkipLog(path).read()) == {files[-1]}

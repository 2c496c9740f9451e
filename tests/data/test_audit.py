"""The dataset doctor (`cnnkit check`) and what training does with the faults it reports.

Each fault users' folders hold is injected into a copy of real photos (imagenette-2k JPEGs,
CIFAR-10 PNGs): a truncated JPEG, a zero-byte PNG, text named .jpg, decompression bombs,
CMYK, 16-bit, RGBA, palette and 1x1 images, copies shared by train and val, a copy under
another class, and a re-encoded smaller copy. The check must name each one for what it is,
and `cnnkit train` must run to the end on the same folder and list the files it skipped.
"""

from __future__ import annotations

import json
import shutil
import struct
import warnings
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from cli_helpers import one_line_error, run_cli
from cnnkit.data.audit import _popcount, audit, close_pairs, format_report

pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

CLASSES = ("church", "golf_ball", "tench")
PER_CLASS = 6

# file -> the problem the check must report (each injected below)
BROKEN = {
    "train/church/cut.jpg": "truncated",
    "train/tench/empty.png": "zero-bytes",
    "train/golf_ball/notes.jpg": "not-an-image",
    "train/church/huge.png": "decompression-bomb",  # over 2x MAX_IMAGE_PIXELS: PIL raises
    "train/tench/big.png": "decompression-bomb",  # over 1x: PIL only warns; cnnkit refuses
}
# readable files in modes other than RGB -> (mode, size)
ODD = {
    "train/church/cmyk.jpg": ("CMYK", (64, 48)),
    "train/tench/deep.png": ("I;16", (32, 32)),
    "train/golf_ball/alpha.png": ("RGBA", (32, 32)),
    "train/tench/palette.gif": ("P", (224, 224)),
    "train/golf_ball/dot.png": ("L", (1, 1)),
}


def _rgb_photos(folder: Path, count: int) -> list[Path]:
    """The first ``count`` RGB photos of an imagenette class folder (some are greyscale)."""
    photos = [p for p in sorted(folder.glob("*.JPEG")) if Image.open(p).mode == "RGB"]
    return photos[:count]


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width x height`` 8-bit grey pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory, imagenette: Path, shared_data: Path) -> Path:
    """train/ and val/ folders of 3 imagenette classes with every fault above injected."""
    root = tmp_path_factory.mktemp("faulty")
    for name in CLASSES:
        for split, count in (("train", PER_CLASS), ("val", 2)):
            (root / split / name).mkdir(parents=True)
            for photo in _rgb_photos(imagenette / split / name, count):
                shutil.copy(photo, root / split / name / photo.name)
    church = _rgb_photos(imagenette / "train" / "church", PER_CLASS + 1)
    tench = _rgb_photos(imagenette / "train" / "tench", PER_CLASS + 1)
    cats = sorted((shared_data / "cifar10" / "train" / "cat").glob("*.png"))[:2]
    unused_church, unused_tench = (
        church[PER_CLASS],
        tench[PER_CLASS],
    )  # sources that look like no other file

    data = church[0].read_bytes()
    (root / "train/church/cut.jpg").write_bytes(data[: len(data) // 2])
    (root / "train/tench/empty.png").write_bytes(b"")
    (root / "train/golf_ball/notes.jpg").write_text("field notes, not a photo\n")
    (root / "train/church/huge.png").write_bytes(_png_claiming(30_000, 30_000))
    (root / "train/tench/big.png").write_bytes(_png_claiming(10_000, 10_000))

    Image.open(unused_church).resize((64, 48)).convert("CMYK").save(root / "train/church/cmyk.jpg")
    grey16 = np.asarray(Image.open(cats[0]).convert("L"), dtype=np.uint16) * 257
    Image.fromarray(grey16).save(root / "train/tench/deep.png")  # 16-bit PNG, opens as I;16
    rgba = Image.open(cats[1]).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(root / "train/golf_ball/alpha.png")
    Image.open(unused_tench).convert("P", palette=Image.Palette.ADAPTIVE).save(
        root / "train/tench/palette.gif"
    )
    Image.new("L", (1, 1), 128).save(root / "train/golf_ball/dot.png")

    shutil.copy(church[0], root / "val/church" / church[0].name)  # leakage: the same file in val
    shutil.copy(church[1], root / "train/golf_ball/lost_church.JPEG")  # one photo, two labels
    shutil.copy(tench[2], root / "train/tench/again.JPEG")  # a plain copy within the class
    Image.open(tench[0]).resize((160, 160)).save(
        root / "val/tench/smaller.jpg", quality=60
    )  # near copy

    (root / "train/church/notes.txt").write_text("shot on a Tuesday")  # listed as ignored
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # hidden: ignored silently
    (root / "train/church/.hidden.jpg").write_bytes(b"")  # hidden: never examined
    return root


@pytest.fixture(scope="module")
def report(faulty: Path):
    return audit(faulty, workers=0)


def _paths(group: dict) -> list[str]:
    return [entry["path"] for entry in group["files"]]


def test_each_broken_file_is_reported_with_its_reason(report) -> None:
    found = {entry["path"]: entry for entry in report.unreadable}

    assert {path: entry["problem"] for path, entry in found.items()} == BROKEN
    assert "truncated" in found["train/church/cut.jpg"]["reason"]
    assert found["train/tench/empty.png"]["reason"] == "zero bytes"
    assert "not an image" in found["train/golf_ball/notes.jpg"]["reason"]
    assert (
        "30000x30000" in found["train/church/huge.png"]["reason"]
        or "exceeds" in found["train/church/huge.png"]["reason"]
    )
    assert "10000x10000" in found["train/tench/big.png"]["reason"]
    assert {entry["class"] for entry in report.unreadable} == set(CLASSES)
    assert "5 unreadable file(s) (2 decompression-bomb" in " ".join(report.warnings)


def test_modes_sizes_and_the_tiny_image(report) -> None:
    copies = (
        len(CLASSES) * (PER_CLASS + 2) + 4
    )  # photos, plus the val copy, lost_church, again, smaller
    assert report.modes == dict(
        Counter({"RGB": copies} | {mode: 1 for mode, _ in ODD.values()}).most_common()
    )
    assert report.formats == {"JPEG": copies + 1, "PNG": 3, "GIF": 1}
    assert report.readable == copies + len(ODD)
    assert report.images == report.readable + len(BROKEN)
    assert report.tiny == [
        {
            "path": "train/golf_ball/dot.png",
            "split": "train",
            "class": "golf_ball",
            "width": 1,
            "height": 1,
        }
    ]
    assert report.tiny_side == 28  # 224 px photos: 1/8 of the median shorter side
    assert report.sizes["smallest"] == "1x1" and report.sizes["largest"] == "224x224"
    assert report.sizes["shorter_side"] == {"<16": 1, "32-63": 3, "128-255": copies + 1}


def test_duplicates_leakage_and_conflicting_labels(report, imagenette: Path) -> None:
    church = _rgb_photos(imagenette / "train" / "church", 2)
    tench = _rgb_photos(imagenette / "train" / "tench", 1)
    by_kind = {}
    for group in report.exact:
        kind = (
            "leak" if len(group["splits"]) > 1 else "conflict" if group["conflicting"] else "within"
        )
        by_kind[kind] = group

    assert len(report.exact) == 3
    assert _paths(by_kind["leak"]) == [
        f"train/church/{church[0].name}",
        f"val/church/{church[0].name}",
    ]
    assert by_kind["leak"]["splits"] == ["train", "val"]
    assert _paths(by_kind["conflict"]) == [
        f"train/church/{church[1].name}",
        "train/golf_ball/lost_church.JPEG",
    ]
    assert by_kind["conflict"]["classes"] == ["church", "golf_ball"]
    assert "train/tench/again.JPEG" in _paths(by_kind["within"])

    (near,) = report.near  # the re-encoded, smaller copy in val; not the exact copies again
    assert _paths(near) == [f"train/tench/{tench[0].name}", "val/tench/smaller.jpg"]
    assert near["splits"] == ["train", "val"] and near["distance"] <= report.near_distance
    assert len(report.leakage) == 2
    text = " ".join(report.warnings)
    assert (
        "leakage: 1 group(s) of identical files" in text
        and "leakage: 1 group(s) of near-identical" in text
    )
    assert "1 group(s) of identical files under different classes (conflicting labels)" in text


def test_counts_ignored_and_hidden_entries(report) -> None:
    readable_train = {"church": PER_CLASS + 1, "golf_ball": PER_CLASS + 3, "tench": PER_CLASS + 3}
    assert report.counts == {
        "train": readable_train,
        "val": {"church": 3, "golf_ball": 2, "tench": 3},
    }
    assert report.imbalance == round(9 / 7, 2)
    assert report.empty_classes == [] and report.usable and report.problems == []
    assert report.ignored == [
        {"path": "train/church/notes.txt", "reason": "not an image file (by its extension)"}
    ]
    everything = json.dumps(report.to_dict())
    assert ".hidden.jpg" not in everything and ".DS_Store" not in everything


def test_summary_names_each_fault(report) -> None:
    text = format_report(report)

    assert "train/church/cut.jpg: truncated: truncated or corrupt" in text
    assert "train/tench/empty.png: zero-bytes: zero bytes" in text
    assert "modes: RGB 28, " in text and "I;16 1" in text and "CMYK 1" in text
    assert "[LEAKAGE train/val]" in text and "[CONFLICTING LABELS]" in text
    assert "verdict: usable for training (0 problems, " in text


def test_quick_check_reads_headers_only(faulty: Path) -> None:
    quick = audit(faulty, quick=True, workers=0)

    # A truncated JPEG has an intact header: only decoding (training, or a full check) finds it.
    assert {e["path"]: e["problem"] for e in quick.unreadable} == {
        path: kind for path, kind in BROKEN.items() if kind != "truncated"
    }
    assert quick.near == [] and quick.near_distance is None
    assert len(quick.exact) == 3 and len(quick.leakage) == 1
    assert quick.modes["I;16"] == 1 and quick.tiny[0]["path"] == "train/golf_ball/dot.png"


def test_check_command_json_out_and_exit_0(faulty: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report.json"
    code, stdout, _ = run_cli(
        capsys, "check", str(faulty), "--json", "--out", str(out), "--no-progress"
    )

    assert code == 0
    printed = json.loads(stdout)
    assert printed == json.loads(out.read_text())
    assert printed["usable"] is True and printed["root"] == str(faulty)
    assert {e["path"] for e in printed["unreadable"]} == set(BROKEN)


def test_unusable_data_exits_1(tmp_path: Path, imagenette: Path, capsys) -> None:
    """A class whose only files are broken leaves nothing to learn it from."""
    for name in ("church", "tench"):
        (tmp_path / name).mkdir()
    for photo in _rgb_photos(imagenette / "train" / "church", 3):
        shutil.copy(photo, tmp_path / "church" / photo.name)
    (tmp_path / "tench" / "a.jpg").write_bytes(b"")
    (tmp_path / "tench" / "b.png").write_text("nope")
    (tmp_path / "parachute").mkdir()  # no files at all

    code, stdout, err = run_cli(capsys, "check", str(tmp_path), "--no-progress")

    assert code == 1
    line = one_line_error(err)
    assert "not usable for training" in line and "parachute, tench" in line
    assert "problem: no readable training image in class(es) parachute, tench" in stdout


def test_fewer_than_two_classes_and_nothing_readable_exit_1(tmp_path: Path, capsys) -> None:
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "x.png").write_bytes(b"")

    code, stdout, err = run_cli(capsys, "check", str(tmp_path), "--no-progress")

    assert code == 1
    assert "no readable image among 1 image files" in stdout
    assert "1 class(es) (only)" in one_line_error(err)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["mnist"], "'mnist' is a registered dataset"),
        (["{tmp}/labels.txt"], "not a .csv"),
        (["{tmp}", "--near-distance", "40"], "--near-distance must be in [0, 16], got 40"),
        (["{tmp}", "--workers", "-1"], "--workers must be >= 0, got -1"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    (tmp_path / "labels.txt").write_text("path,label\n")
    code, _, err = run_cli(capsys, "check", *[a.format(tmp=tmp_path) for a in args])

    assert code == 2
    assert message in one_line_error(err)


def test_missing_data_exits_1(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(capsys, "check", str(tmp_path / "nowhere"))

    assert code == 1
    assert str(tmp_path / "nowhere") in one_line_error(err)


def test_csv_data_is_checked_too(faulty: Path, tmp_path: Path) -> None:
    rows = [f"{path},{path.split('/')[1]},{path.split('/')[0]}" for path in (*BROKEN, *ODD)]
    rows += [
        f"train/church/{p.name},church,train" for p in _rgb_photos(faulty / "train" / "church", 2)
    ]
    (faulty / "labels.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    try:
        report = audit(faulty / "labels.csv", workers=0)
    finally:
        (faulty / "labels.csv").unlink()  # the module's folder stays as the other tests expect it

    assert report.layout == "csv"
    assert {e["path"]: e["problem"] for e in report.unreadable} == BROKEN
    assert report.modes["CMYK"] == 1 and report.exact == []


# ----------------------------------------------------------------------------- training on it


TRAIN = ["--model", "lenet", "--epochs", "1", "--image-size", "32", "--no-progress", "--no-report"]


def _train(data: Path, out: Path, capsys, *extra: str) -> tuple[Path, str]:
    """``cnnkit train`` a LeNet for one epoch on ``data``; returns (run folder, stdout)."""
    args = ["train", "--data", str(data), "--output-dir", str(out.parent), "--name", out.name]
    code, stdout, err = run_cli(capsys, *args, *TRAIN, *extra)
    assert code == 0, err
    return out, stdout


def _skipped(run: Path) -> dict[str, dict]:
    return {entry["path"]: entry for entry in json.loads((run / "skipped_files.json").read_text())}


@pytest.mark.filterwarnings("error:skipping:RuntimeWarning")  # counted in the run's summary, never warned (issue 28)
def test_train_skips_bad_files_and_lists_them(faulty: Path, tmp_path: Path, capsys) -> None:
    """Two loader worker processes meet the bad files; the run folder lists every one."""
    run, stdout = _train(faulty, tmp_path / "run", capsys, "--workers", "2")

    assert (run / "checkpoints" / "best.pt").is_file()
    assert "data quick check: 34/38 images readable, 3 classes" in stdout
    assert "warning: leakage: 1 group(s) of identical files shared between train/val/test" in stdout
    skipped = _skipped(run)
    assert set(skipped) == {str(faulty / path) for path in BROKEN}
    for path, kind in BROKEN.items():
        entry = skipped[str(faulty / path)]
        assert entry["kind"] == kind and entry["reason"]
        # the truncated JPEG passes the header check; training finds it and skips it
        assert entry["found_by"] == (["training"] if kind == "truncated" else ["check", "training"])
    assert json.loads((run / "data_check.json").read_text())["usable"] is True
    log = (run / "log.txt").read_text()
    assert "skipped files: 5 unreadable (5 met while training); listed in skipped_files.json" in log
    assert not (run / "skipped_files.jsonl").exists()

    # A second run may take its images from a decode cache the first one left: no file is
    # loaded again, and the list must still be complete.
    again, _ = _train(faulty, tmp_path / "again", capsys, "--workers", "2")
    assert {path: (e["kind"], e["found_by"]) for path, e in _skipped(again).items()} == {
        path: (e["kind"], e["found_by"]) for path, e in skipped.items()
    }


def test_train_without_the_check_lists_skipped_files_without_raw_warnings(
    faulty: Path, tmp_path: Path, capsys
) -> None:
    data = tmp_path / "data"
    shutil.copytree(faulty, data)  # other paths: nothing cached from the other test's runs
    with warnings.catch_warnings(record=True) as seen:  # decoded in this process
        warnings.simplefilter("always")
        run, stdout = _train(data, tmp_path / "run", capsys, "--no-check", "--workers", "0")

    # the run counts them into its skipped-files line instead (issue 28)
    assert [str(w.message) for w in seen if str(w.message).startswith("skipping ")] == []
    assert f"skipped files: {len(BROKEN)} unreadable ({len(BROKEN)} met while training)" in stdout
    assert "data quick check" not in stdout and not (run / "data_check.json").exists()
    assert {(path, e["kind"], tuple(e["found_by"])) for path, e in _skipped(run).items()} == {
        (str(data / path), kind, ("training",)) for path, kind in BROKEN.items()
    }


def test_train_stops_on_unusable_data_before_making_a_run(
    tmp_path: Path, imagenette: Path, capsys
) -> None:
    data = tmp_path / "data"
    for name in ("church", "tench"):
        (data / name).mkdir(parents=True)
    for photo in _rgb_photos(imagenette / "train" / "church", 2):
        shutil.copy(photo, data / "church" / photo.name)
    (data / "tench" / "a.jpg").write_text("nope")

    code, _, err = run_cli(
        capsys, "train", "--data", str(data), "--output-dir", str(tmp_path / "runs")
    )

    assert code == 1
    line = one_line_error(err)
    assert "not usable for training: no readable training image in class(es) tench" in line
    assert f"cnnkit check {data}" in line
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- real data


def test_imagenette_is_clean_and_balanced(imagenette: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "imagenette.json"
    code, stdout, _ = run_cli(capsys, "check", str(imagenette), "--out", str(out), "--no-progress")

    assert code == 0
    report = json.loads(out.read_text())
    assert (report["images"], report["readable"]) == (2000, 2000)
    assert len(report["class_names"]) == 10
    assert all(
        counts == {"train": 150, "val": 50}
        for counts in (
            {s: report["counts"][s][c] for s in ("train", "val")} for c in report["class_names"]
        )
    )
    assert report["imbalance"] == 1.0 and report["usable"] is True
    assert report["exact"] == [] and report["near"] == [] and report["warnings"] == []
    assert report["formats"] == {"JPEG": 2000} and sum(report["modes"].values()) == 2000
    assert "images: 2,000 files, 2,000 readable, 0 unreadable" in stdout
    assert "classes: 10; imbalance 1.00 " in stdout


# ----------------------------------------------------------------------------- near duplicates


@settings(max_examples=60, deadline=None)
@given(
    seeds=st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=12),
    flips=st.lists(st.lists(st.integers(0, 63), max_size=6), min_size=1, max_size=40),
    distance=st.integers(0, 8),
)
def test_close_pairs_finds_exactly_the_pairs_brute_force_finds(seeds, flips, distance) -> None:
    """Clustered hashes (a few seeds, each copied with some bits flipped) against all pairs."""
    hashes = []
    for index, bits in enumerate(flips):
        value = seeds[index % len(seeds)]
        for bit in bits:
            value ^= 1 << bit
        hashes.append(value)
    array = np.array(hashes, dtype=np.uint64)
    apart = _popcount(array[:, None] ^ array[None, :])
    expected = [
        (i, j, int(apart[i, j]))
        for i in range(len(array))
        for j in range(i + 1, len(array))
        if apart[i, j] <= distance
    ]

    assert close_pairs(array, distance) == expected

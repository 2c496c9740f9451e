"""``cnnkit check --labels`` on real images whose labels the tests flip.

The photos are a small subset of imagenette-2k (its 10 classes, 20 each: the issue's
"clean 10-class set of 20 photos per class") linked into class folders; a flipped image is
linked under a wrong class. Most trees link the same 200 files, so the backbone's features
are computed once for the session (the cache keys on the files, not on their folders or
labels) and each check then takes about a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import one_line_error, run_cli
from cnnkit.cli import main
from cnnkit.data.audit.label_output import REVIEW, fix_to, write_files
from cnnkit.data.audit.labels import INSTALL_HINT, MIN_ACCURACY, select_suspects
from cnnkit.errors import CnnkitError, DataError
from cnnkit.evaluation.label_check import check_labels

pytest.importorskip("cleanlab")

CLASSES = ("cassette_player", "chain_saw", "church", "english_springer", "french_horn", "garbage_truck", "gas_pump",
           "golf_ball", "parachute", "tench")  # fmt: skip
PER_CLASS = 20


@pytest.fixture(scope="module")
def photos(imagenette: Path) -> list[tuple[str, str]]:
    """(file, class) of the 200 photos, the first PER_CLASS of each class folder."""
    return [(str(f), c) for c in CLASSES for f in sorted((imagenette / "train" / c).iterdir())[:PER_CLASS]]


def link_tree(dest: Path, files: list[tuple[str, str]]) -> Path:
    """``dest/<class>/<name>`` symlinks to ``files`` (path, class)."""
    for path, label in files:
        link = dest / label / Path(path).name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path)
    return dest


def flipped(files: list[tuple[str, str]], count: int, seed: int) -> tuple[list[tuple[str, str]], set[str]]:
    """``files`` with ``count`` of them under a random other class, and those files' names."""
    rng = random.Random(seed)
    rows = set(rng.sample(range(len(files)), count))
    out = [(p, rng.choice([c for c in CLASSES if c != label]) if i in rows else label)
           for i, (p, label) in enumerate(files)]  # fmt: skip
    return out, {Path(files[i][0]).name for i in rows}


def names(entries: list[dict]) -> list[str]:
    return [Path(e["path"]).name for e in entries]


def test_flipped_labels_are_listed_and_rank_at_the_top(photos, tmp_path):
    files, wrong = flipped(photos, 10, seed=11)  # 5 %, as in the benchmark
    report = check_labels(link_tree(tmp_path / "noisy", files))
    assert report.images == 200 and report.folds == 5
    found = wrong & set(names(report.issues))
    precision, recall = len(found) / max(len(report.issues), 1), len(found) / len(wrong)
    assert precision >= 0.8 and recall >= 0.8, (sorted(wrong), names(report.issues), report.evidence)
    top = names(report.issues[: len(wrong) + 2])
    assert len(wrong & set(top)) >= 8, (wrong, names(report.issues))  # at least 8 of 10 among the first 12
    assert report.evidence.accuracy >= 0.8 and report.evidence.listed == len(report.issues)
    assert "timm:efficientnet_lite0" in report.method
    given = {Path(p).name: c for p, c in files}
    first = report.issues[0]
    assert first["given"] == given[Path(first["path"]).name] and first["suggested"] != first["given"]
    original = {Path(p).name: c for p, c in photos}
    # the suggestion is the true class for the flipped ones the check found
    assert all(e["suggested"] == original[Path(e["path"]).name] for e in report.issues if Path(e["path"]).name in wrong)


def test_a_clean_set_of_20_photos_a_class_flags_at_most_5_percent(photos, tmp_path, capsys):
    data = link_tree(tmp_path / "clean", photos)
    code, out, _ = run_cli(capsys, "check", str(data), "--labels", "--no-progress", "--labels-out",
                           str(tmp_path / "out"))  # fmt: skip
    assert code == 0
    labels = json.loads((tmp_path / "out" / "label_issues.json").read_text())["labels"]
    assert len(labels["issues"]) <= 0.05 * 200, names(labels["issues"])
    assert labels["agreement"] >= 0.9
    assert len(labels["outliers"]) == 5  # the floor of the outlier list on a small set
    evidence = labels["evidence"]  # the JSON carries what the list rests on
    assert evidence["images"] == 200 and evidence["accuracy"] == labels["agreement"]
    assert evidence["listed"] == len(labels["issues"]) and evidence["min_accuracy"] == MIN_ACCURACY
    assert f"evidence: 200 images, cross-validated accuracy {evidence['accuracy']:.1%}" in out
    if evidence["reason"]:  # fewer listed than cleanlab proposed: one line says why
        assert f"  {evidence['reason']}\n" in out


def test_too_few_images_list_no_suspects_and_say_why(photos, tmp_path, capsys):
    # 4 photos of each class, one of them flipped: too few to tell it from the model's own errors
    files = [f for i, f in enumerate(photos) if i % PER_CLASS < 4]
    files[0] = (files[0][0], CLASSES[5])
    data = link_tree(tmp_path / "tiny", files)
    code, out, _ = run_cli(capsys, "check", str(data), "--labels", "--no-progress", "--labels-out",
                           str(tmp_path / "out"), "--json")  # fmt: skip
    assert code == 0
    labels = json.loads(out)["labels"]
    assert labels["issues"] == [] and labels["evidence"]["images"] == 40
    assert labels["evidence"]["reason"].startswith("not listing suspects: only 40 images (4 a class): too few to "
                                                   "tell label errors from model errors")  # fmt: skip


def test_a_model_that_barely_learned_lists_no_suspects(photos):
    # out-of-sample probabilities of a model right on 60 % of the images (a model of chance
    # guesses elsewhere): its confident disagreements are its own errors, not the labels'
    labels = np.arange(200) % 10
    rng = np.random.default_rng(0)
    guessed = np.where(rng.random(200) < 0.6, labels, rng.integers(0, 10, 200))
    probs = np.full((200, 10), 0.02)
    probs[np.arange(200), guessed] = 0.82
    suspects, evidence = select_suspects(labels, probs)
    assert suspects == [] and evidence.proposed > 0
    assert evidence.reason.startswith(f"not listing suspects: the cross-validated model agrees with only "
                                      f"{evidence.accuracy:.0%} of the given labels; below 80%")  # fmt: skip


def test_a_second_check_reads_the_features_from_the_cache(photos, tmp_path):
    # the defect: the key hashed the backbone's unused, randomly initialised head, so no check found it
    data = link_tree(tmp_path / "clean", photos)
    check_labels(data)
    again = check_labels(data, seed=1)
    assert any(note.startswith("features from the cache") for note in again.notes), again.notes


def test_fix_to_copies_and_sets_suspects_aside(photos, tmp_path):
    files, wrong = flipped(photos, 5, seed=3)
    data = link_tree(tmp_path / "noisy", files)
    before = _snapshot(data)
    code = main(["check", str(data), "--labels", "--no-progress", "--labels-out", str(tmp_path / "out"),
                 "--fix-to", str(tmp_path / "fixed"), "--out", str(tmp_path / "check.json")])  # fmt: skip
    assert code == 0
    assert _snapshot(data) == before  # originals untouched: same links, same bytes behind them
    issues = json.loads((tmp_path / "out" / "label_issues.json").read_text())["labels"]["issues"]
    report = json.loads((tmp_path / "check.json").read_text())  # --out: the file check and the label check
    assert report["labels"]["issues"] == issues and report["usable"] is True
    fixed = tmp_path / "fixed"
    copied = [p for p in fixed.rglob("*") if p.is_file()]
    assert len(copied) == len(files)  # nothing dropped
    review = [p for p in copied if REVIEW in p.parts]
    assert sorted(p.name for p in review) == sorted(names(issues))
    assert all(not p.is_symlink() for p in copied)  # real copies, not links to the originals
    for entry in issues:
        folder = fixed / REVIEW / f"{entry['given']}__as__{entry['suggested']}"
        assert (folder / Path(entry["path"]).name).is_file()
    assert wrong & {p.name for p in review}
    # a second --fix-to into the same, now full, folder is refused: nothing is overwritten
    report = check_labels(data)
    with pytest.raises(CnnkitError, match="not empty"):
        fix_to(report, data, fixed)
    # the cleaned copy trains as a class tree: _review is not a class
    from cnnkit.data.folder import scan_folder

    assert scan_folder(fixed, val_fraction=0, test_fraction=0, seed=0).class_names == list(CLASSES)


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): os.readlink(p) + hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_symlink()}  # fmt: skip


def test_missing_cleanlab_gives_the_install_hint(photos, tmp_path, hide_package, capsys):
    hide_package("cleanlab")
    data = link_tree(tmp_path / "clean", photos[:10] + photos[20:30])
    code, _, err = run_cli(capsys, "check", str(data), "--labels")
    assert code == 1 and INSTALL_HINT in one_line_error(err)


def test_a_class_smaller_than_the_folds(photos, tmp_path):
    # the same 200 files (cached features); tench keeps 3, its other 17 go to church
    files = [(p, "church" if c == "tench" and i % PER_CLASS >= 3 else c) for i, (p, c) in enumerate(photos)]
    report = check_labels(link_tree(tmp_path / "small", files))
    assert report.folds == 3
    assert any("3 folds instead of 5" in note and "tench (3)" in note for note in report.notes)


def test_a_class_of_one_image_is_a_clear_error(photos, tmp_path):
    files = photos[:20] + photos[20:21]
    with pytest.raises(DataError, match=r"at least 2 training images per class.*chain_saw \(1\)"):
        check_labels(link_tree(tmp_path / "one", files))


def test_label_flags_need_labels(tmp_path, capsys):
    code, _, err = run_cli(capsys, "check", str(tmp_path), "--folds", "3")
    assert code == 2 and "add --labels" in one_line_error(err)


def test_grey_digits_train_a_small_network(mnist_digits, tmp_path):
    from PIL import Image

    images, labels = mnist_digits["train"]
    rng = np.random.default_rng(0)
    rows = np.concatenate([rng.choice(np.flatnonzero(labels.numpy() == d), 60, replace=False) for d in range(10)])
    wrong = set(rng.choice(rows, 12, replace=False).tolist())
    for row in rows:
        label = int(labels[row]) if row not in wrong else (int(labels[row]) + 1 + int(row) % 9) % 10
        folder = tmp_path / "digits" / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[row].numpy()).save(folder / f"{row}.png")
    report = check_labels(tmp_path / "digits", epochs=3)
    assert "mnist_fast" in report.method
    ranked = [int(Path(e["path"]).stem) for e in report.issues]
    # a net trained on 480 digits is right about 90 % of the time, so clean digits are flagged
    # too; the flipped ones still come first: at least 8 of the 12 among the first 24
    assert len(set(ranked[: 2 * len(wrong)]) & wrong) >= 8, (sorted(wrong), ranked)


def test_files_and_page(photos, tmp_path):
    files, _ = flipped(photos, 4, seed=5)
    report = check_labels(link_tree(tmp_path / "noisy", files))
    written = write_files(report, tmp_path / "out")
    rows = Path(written["csv"]).read_text().splitlines()
    assert rows[0] == "rank,path,given,suggested,score,suggested_prob" and len(rows) == len(report.issues) + 1
    html = Path(written["html"]).read_text()
    assert html.count("data:image/jpeg;base64,") == len(report.issues) + len(report.outliers)


@pytest.mark.slow
def test_page_shows_thumbnails_in_chromium(photos, tmp_path, chromium):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    from screenshot_report import open_report

    files, _ = flipped(photos, 4, seed=5)
    report = check_labels(link_tree(tmp_path / "noisy", files))
    html = write_files(report, tmp_path / "out")["html"]
    shown = open_report(Path(html))
    assert len(shown["images"]) == len(report.issues) + len(report.outliers) >= 5
    assert all(width > 0 for _, width in shown["images"]), shown["images"]
    assert {"Likely label errors", "Outliers", "Most confused class pairs"} <= set(shown["headings"])

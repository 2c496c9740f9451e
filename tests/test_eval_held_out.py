"""``cnnkit eval --data FOLDER``: a held-out folder is scored whole (or the split asked for),
the run's own folder by its saved split, and a split the data lacks is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import cnnkit
from cli_helpers import one_line_error, run_cli

CLASSES = ("church", "golf_ball", "parachute")


def copy_photos(imagenette: Path, split: str, dest: Path, per_class: int, skip: int = 0) -> Path:
    for name in CLASSES:
        (dest / name).mkdir(parents=True)
        for file in sorted((imagenette / split / name).iterdir())[skip : skip + per_class]:
            shutil.copy(file, dest / name / file.name)
    return dest


@pytest.fixture(scope="module")
def photo_run(imagenette: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run folder, its training folder): a small CNN, one epoch on 3 classes x 20 photos (20 % held out)."""
    root = tmp_path_factory.mktemp("eval-held-out")
    photos = copy_photos(imagenette, "train", root / "photos", 20)
    run = cnnkit.train(data=str(photos), model="convnet", image_size=32, epochs=1, output_dir=str(root / "runs"),
                       report=False, progress=False, log=lambda _: None)  # fmt: skip
    return run.dir, photos


def test_a_held_out_folder_is_scored_whole(photo_run, imagenette, tmp_path, capsys) -> None:
    run_dir, _ = photo_run
    held_out = copy_photos(imagenette, "val", tmp_path / "held out", 10)

    code, out, err = run_cli(capsys, "eval", str(run_dir), "--data", str(held_out))
    assert code == 0, err
    assert f"data: {held_out} (held-out folder, all 30 images)" in out.splitlines()
    code, out, _ = run_cli(capsys, "eval", str(run_dir), "--data", str(held_out), "--json")
    report = json.loads(out)
    assert (report["images"], report["split"], report["data"]) == (30, "all", str(held_out))


def test_a_held_out_folder_with_split_folders_scores_all_or_the_split_asked_for(photo_run, imagenette, tmp_path,
                                                                                 capsys) -> None:  # fmt: skip
    run_dir, _ = photo_run
    held_out = tmp_path / "set"
    copy_photos(imagenette, "val", held_out / "train", 4)
    copy_photos(imagenette, "val", held_out / "val", 2, skip=4)

    code, out, err = run_cli(capsys, "eval", str(run_dir), "--data", str(held_out))
    assert code == 0 and f"data: {held_out} (held-out folder, all 18 images)" in out, err
    code, out, err = run_cli(capsys, "eval", str(run_dir), "--data", str(held_out), "--split", "val")
    assert code == 0 and f"data: {held_out} (held-out folder, its val split: 6 images)" in out, err
    code, _, err = run_cli(capsys, "eval", str(run_dir), "--data", str(held_out), "--split", "test")
    assert code == 2
    assert "has no test split (it has: train, val)" in one_line_error(err)


def test_the_runs_own_folder_is_scored_by_its_saved_split(photo_run, capsys) -> None:
    run_dir, photos = photo_run

    code, own, err = run_cli(capsys, "eval", str(run_dir))
    assert code == 0 and "split: val (12 images)" in own, err  # 20 % of 20 per class, 3 classes
    code, given, err = run_cli(capsys, "eval", str(run_dir), "--data", str(photos))
    assert code == 0 and given == own, err


def test_a_split_the_data_lacks_is_refused(photo_run, imagenette, tmp_path, capsys) -> None:
    run_dir, _ = photo_run

    code, out, err = run_cli(capsys, "eval", str(run_dir), "--split", "test")
    assert code == 2 and out == ""
    assert "no test split (it has: train, val)" in one_line_error(err)
    flat = copy_photos(imagenette, "val", tmp_path / "flat", 2)
    code, _, err = run_cli(capsys, "eval", str(run_dir), "--data", str(flat), "--split", "test")
    assert code == 2 and "has no split folders" in one_line_error(err)

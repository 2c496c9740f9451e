"""The take-away zip of a studio run: best checkpoint, checked ONNX export, report, config, the
exact `cnnkit train` command; `cnnkit eval` and `predict` work on the unpacked run."""

from __future__ import annotations

import re
import shlex
import sys
import zipfile
from pathlib import Path

import pytest

from cli_helpers import run_cli
from cnnkit.studio.jobs import TrainJob
from cnnkit.studio.kinds import train_command
from cnnkit.studio.takeaway import run_zip
from studio_data import PHOTO_CLASSES, photos


@pytest.fixture(scope="module")
def unpacked(photo_job: TrainJob, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The zip and the run folder it unpacks to."""
    archive = run_zip(photo_job.project, photo_job.run_name)
    folder = tmp_path_factory.mktemp("unpacked")
    with zipfile.ZipFile(archive) as opened:
        opened.extractall(folder)
    return archive, folder / photo_job.run_name


def test_the_zip_holds_the_model_its_onnx_export_report_config_and_command(photo_job: TrainJob, unpacked) -> None:
    archive, run = unpacked

    names = set(zipfile.ZipFile(archive).namelist())
    top = photo_job.run_name
    for name in ("checkpoints/best.pt", "model.onnx", "report/report.html", "config.yaml", "metrics.csv",
                 "classes.json", "split.json", "train_command.txt", "README.txt"):  # fmt: skip
        assert f"{top}/{name}" in names, name
    assert f"{top}/checkpoints/last.pt" not in names  # the training state stays home
    assert archive.parent == photo_job.run_dir / "takeaway"
    command = (run / "train_command.txt").read_text().splitlines()
    assert command[-1] == train_command(photo_job.project, "photos")
    assert command[1].startswith(f"#   cd {shlex.quote(photo_job.project.root.name)}   ")  # its name, no server path
    assert str(photo_job.project.root) not in "\n".join(command)
    assert "Left out" not in (run / "README.txt").read_text()


def test_the_onnx_file_gives_the_checkpoints_answers(photo_job: TrainJob, unpacked, imagenette: Path) -> None:
    from cnnkit.inference import Predictor

    _, run = unpacked
    files = [str(p) for name in PHOTO_CLASSES for p in photos(imagenette, "val", name, 4)]

    truth = [name for name in PHOTO_CLASSES for _ in range(4)]

    from_onnx = Predictor.load(run / "model.onnx", backend="onnxruntime").predict_files(files, workers=0)
    from_torch = Predictor.from_checkpoint(run / "checkpoints" / "best.pt").predict_files(files, workers=0)

    onnx, torch = [p.label for p in from_onnx], [p.label for p in from_torch]
    assert onnx == torch and sum(a == b for a, b in zip(onnx, truth, strict=True)) >= 10


def test_cnnkit_eval_and_predict_work_on_the_unpacked_run(photo_job: TrainJob, unpacked, imagenette: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    _, run = unpacked

    code, out, err = run_cli(capsys, "eval", str(run / "checkpoints" / "best.pt"))
    assert code == 0, err
    top1 = float(re.search(r"top-1: ([0-9.]+)%", out).group(1)) / 100
    assert "split: val (12 images)" in out
    assert top1 == pytest.approx(photo_job.status()["best_val_acc"], abs=0.09)  # one image of 12 may flip

    photo = photos(imagenette, "val", "church", 1)[0]
    code, out, err = run_cli(capsys, "predict", str(run / "checkpoints" / "best.pt"), str(photo), "--no-progress")
    assert code == 0, err
    assert "church" in out


def test_without_the_export_extra_the_zip_says_what_is_missing(photo_job: TrainJob, monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:  # fmt: skip
    export = photo_job.run_dir / "export" / "model.onnx"
    kept = export.read_bytes()
    export.unlink()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    try:
        archive = run_zip(photo_job.project, photo_job.run_name)
    finally:
        export.write_bytes(kept)

    with zipfile.ZipFile(archive) as opened:
        names = opened.namelist()
        readme = opened.read(f"{photo_job.run_name}/README.txt").decode()
    assert f"{photo_job.run_name}/model.onnx" not in names
    assert "model.onnx: left out: the export extra is not installed here (pip install 'cnnkit[export]'" in readme
    assert f"{photo_job.run_name}/checkpoints/best.pt" in names

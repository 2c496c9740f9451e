"""Training in the background: the default photo model on 3 x 20 photos scores 90 % on held-out
photos, one job at a time, live status, stop and resume, and failures reported, not raised."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from PIL import Image

import cnnkit
from cnnkit.data.datasets import load_source
from cnnkit.errors import CnnkitError, UsageError
from cnnkit.inference import Predictor
from cnnkit.runfolder import RunFolder
from cnnkit.studio.jobs import TrainJob, job_status, resume_training, start_training
from cnnkit.studio.kinds import Settings, train_command, train_overrides
from cnnkit.studio.project import Project
from polling import WAIT_S
from studio_data import PHOTO_CLASSES, photos


@pytest.fixture(scope="module")
def digit_project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """30 embedded-MNIST digits of each class, imported as PNGs."""
    project = Project.open(tmp_path_factory.mktemp("studio") / "digits")
    project.import_from("embedded-mnist", limit_per_class=30)
    return project


def wait_for(job: TrainJob, epochs: int, timeout: float = WAIT_S) -> dict:
    """Poll the job's status until ``epochs`` epochs are done (or it ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = job.status()
        if status["epoch"] >= epochs or status["state"] != "running":
            return status
        time.sleep(0.05)
    raise AssertionError(f"no {epochs} epochs in {timeout}s: {job.status()['log'][-5:]}")


def untimed(history: list[dict]) -> list[dict]:
    """The metrics rows without their timings (the only columns a resumed run may change)."""
    return [{k: v for k, v in row.items() if not k.endswith(("_s", "per_s"))} for row in history]


def test_the_default_photo_model_scores_90_percent_on_held_out_photos(photo_job: TrainJob, imagenette: Path) -> None:
    held_out = [(str(path), name) for name in PHOTO_CLASSES for path in photos(imagenette, "val", name)]

    predictor = Predictor.from_checkpoint(photo_job.run_dir / "checkpoints" / "best.pt")
    predicted = [p.label for p in predictor.predict_files([path for path, _ in held_out], workers=0)]

    correct = sum(label == name for label, (_, name) in zip(predicted, held_out, strict=True))
    assert len(held_out) == 150 and correct / len(held_out) >= 0.90
    assert predictor.class_names == list(PHOTO_CLASSES)


def test_a_studio_run_is_a_normal_run_folder(photo_job: TrainJob) -> None:
    status = photo_job.status()
    run = photo_job.run_dir

    assert status["state"] == "completed" and status["error"] is None
    assert status["epoch"] == status["epochs"] == 30 and len(status["history"]) == 30
    assert [row["epoch"] for row in status["history"]] == list(range(1, 31))
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    for name in ("config.yaml", "metrics.csv", "checkpoints/best.pt", "checkpoints/last.pt", "report/report.html"):
        assert (run / name).is_file(), name
    assert any(line.startswith("features: train 48 x 1,280 ") for line in status["log"])  # cached features
    command = (run / "studio_command.txt").read_text().strip()
    assert command == train_command(photo_job.project, "photos")


def test_reopening_the_project_finds_its_run(photo_job: TrainJob) -> None:
    again = Project.open(photo_job.project.root, create=False)

    rows = again.runs()

    assert [row.name for row in rows] == [photo_job.run_name]
    assert rows[0].status == "done" and rows[0].epochs_run == 30 and rows[0].metric == "val_acc"
    assert rows[0].best == photo_job.status()["best_val_acc"]
    assert job_status(again)["run"] == photo_job.run_name  # the same process: its job is known


def test_a_second_job_is_refused_and_a_stopped_run_resumes(digit_project: Project) -> None:
    job = start_training(digit_project, "digits", Settings(epochs=500))
    try:
        running = wait_for(job, 1)
        assert running["state"] == "running" and running["history"][0]["epoch"] == 1
        with pytest.raises(CnnkitError, match=rf"a training job is already running in this project \(run "
                                              rf"{job.run_name}, epoch \d+/500\); wait for it or stop it"):  # fmt: skip
            start_training(digit_project, "digits")
    finally:
        job.stop()
    status = job.wait(timeout=WAIT_S)

    assert status["state"] == "stopped" and status["error"] is None
    recorded = json.loads((job.run_dir / "status.json").read_text())
    assert recorded["status"] == "interrupted" and recorded["reason"].startswith("stopped on request (epoch ")
    assert (job.run_dir / "checkpoints" / "last.pt").is_file()
    done = len(RunFolder(job.run_dir).read_metrics())
    assert 1 <= done < 500
    assert digit_project.runs()[0].status == "interrupted"

    again = resume_training(digit_project, job.run_name, epochs=done + 2)
    resumed = again.wait(timeout=WAIT_S)

    assert resumed["state"] == "completed", resumed["error"]
    assert [row["epoch"] for row in resumed["history"]] == list(range(1, done + 3))
    assert digit_project.runs()[0].status == "done"


def test_stop_and_resume_end_where_the_uninterrupted_run_ends(digit_project: Project) -> None:
    overrides = train_overrides(digit_project, "digits", Settings(epochs=3)) | {"report": False, "tensorboard": False}
    whole = cnnkit.train(progress=False, log=lambda line: None, name="whole", **overrides)
    asked = []

    def after_ten_steps() -> bool:  # asked after 6 of epoch 1's 7 steps and at its end: stops mid epoch 2
        asked.append(True)
        return len(asked) >= 10

    with pytest.raises(cnnkit.engine.loop.TrainingStopped, match="in epoch 2 after 3 steps"):
        cnnkit.train(progress=False, log=lambda line: None, name="parts", should_stop=after_ten_steps, **overrides)
    resumed = cnnkit.train(resume=digit_project.runs_dir / "parts", progress=False, log=lambda line: None)

    assert untimed(resumed.history) == untimed(whole.history)
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]


def test_the_digits_kind_learns_digits_from_30_of_each(digit_project: Project) -> None:
    images, labels = load_source("embedded-mnist", None, False).test
    held_out = [Image.fromarray(images[i, 0].numpy()) for i in range(500)]  # official test digits

    job = start_training(digit_project, "digits")
    status = job.wait(timeout=WAIT_S)
    predicted = Predictor.from_checkpoint(job.run_dir / "checkpoints" / "best.pt").predict(held_out)

    assert status["state"] == "completed" and status["epochs"] == 30
    assert sum(int(p.label) == int(label) for p, label in zip(predicted, labels[:500], strict=True)) / 500 >= 0.8


def test_the_small_kind_trains_from_scratch(digit_project: Project) -> None:
    job = start_training(digit_project, "small", Settings(epochs=2))

    status = job.wait(timeout=WAIT_S)

    assert status["state"] == "completed", status["error"]
    assert [row["epoch"] for row in status["history"]] == [1, 2]
    assert cnnkit.load_checkpoint(job.run_dir / "checkpoints" / "best.pt").preprocess.input_size == (32, 32)


def test_a_failing_job_reports_why_frees_the_project_and_leaves_no_folder(digit_project: Project) -> None:
    before = set(digit_project.runs_dir.iterdir())
    # a valid config that fails once the model is built: VGG's five poolings need 32 px
    job = start_training(digit_project, "advanced", Settings(model="vgg11", image_size=8, epochs=1))

    status = job.wait(timeout=WAIT_S)

    assert status["state"] == "failed" and "needs inputs of at least 32x32 pixels" in status["error"]
    assert job_status(digit_project)["state"] == "failed"
    assert set(digit_project.runs_dir.iterdir()) == before  # the folder claimed for it is gone


def test_a_mistyped_model_name_is_refused_before_a_run_folder_exists(digit_project: Project) -> None:
    before = set(digit_project.runs_dir.iterdir())

    with pytest.raises(UsageError, match=r"unknown model 'lenett'; did you mean 'lenet'\?"):
        start_training(digit_project, "advanced", Settings(model="lenett", epochs=1))

    assert set(digit_project.runs_dir.iterdir()) == before
    assert job_status(digit_project)["state"] != "running"  # no job was started


def test_a_project_that_cannot_train_is_refused_before_a_job_starts(tmp_path: Path) -> None:
    project = Project.open(tmp_path / "one-class")
    project.add_class("only")

    with pytest.raises(CnnkitError, match=r"cannot train yet: add at least 2 classes .*class only has only 0 images"):
        start_training(project, "photos")
    assert list(project.runs_dir.iterdir()) == []

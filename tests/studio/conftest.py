"""Studio projects on real data: three Imagenette classes x 20 photos, and embedded-MNIST digits."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from local_server import Server, kill_all, start_cnnkit_server

from cnnkit.studio.jobs import TrainJob, start_training
from cnnkit.studio.project import Project
from polling import WAIT_S
from studio_data import PHOTO_CLASSES, PHOTOS_PER_CLASS, photos


def photo_project_at(root: Path, imagenette: Path) -> Project:
    """A new project with :data:`PHOTO_CLASSES`, each the first 20 training photos, uploaded."""
    project = Project.open(root)
    for name in PHOTO_CLASSES:
        project.add_class(name)
        result = project.add_files(name, photos(imagenette, "train", name, PHOTOS_PER_CLASS))
        assert not result.rejected, result.message
    return project


@pytest.fixture(scope="session")
def photo_job(imagenette: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainJob:
    """The default photo model trained in the background on a 3 x 20-photo project, finished."""
    project = photo_project_at(tmp_path_factory.mktemp("studio") / "photos", imagenette)
    job = start_training(project, "photos")
    status = job.wait(timeout=WAIT_S)
    assert status["state"] == "completed", status["error"] or status["log"][-20:]
    return job


@pytest.fixture(scope="module")
def start_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Server]]:
    """``start_studio(PROJECT, *flags)``: ``cnnkit studio PROJECT --port P *flags`` on 127.0.0.1
    in its own process, returned once its page answers; every one still running is killed at the end."""
    started: list[Server] = []

    def start(project: Path, *flags: str) -> Server:
        server = start_cnnkit_server("studio", [str(project), *flags],
                                     tmp_path_factory.mktemp("studio-server") / "log.txt")  # fmt: skip
        started.append(server)
        return server

    yield start
    kill_all(started)

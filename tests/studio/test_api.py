"""The studio scripted through its named API endpoints (``gradio_client``), as the README lists
them: the same flow as the page, a second train request while one runs, a non-image upload."""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import pytest

from studio_data import PHOTO_CLASSES, PHOTOS_PER_CLASS, photos

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(start_studio, tmp_path_factory: pytest.TempPathFactory):
    from gradio_client import Client

    server = start_studio(tmp_path_factory.mktemp("api") / "project")
    return Client(server.url, verbose=False)


def test_every_action_of_the_page_is_a_named_endpoint(client) -> None:
    from cnnkit.studio.app import ENDPOINTS

    listed = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {f"/{name}" for name in ENDPOINTS} <= set(listed)


def test_collect_train_try_and_take_away_by_api(client, imagenette: Path, tmp_path: Path) -> None:
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    for name in PHOTO_CLASSES:
        assert client.predict(name, api_name="/add_class")["class"] == name
        files = [handle_file(str(p)) for p in photos(imagenette, "train", name, PHOTOS_PER_CLASS)]
        added = client.predict(name, files, api_name="/upload")
        assert len(added["added"]) == PHOTOS_PER_CLASS and not added["rejected"]

    notes = tmp_path / "notes.png"
    notes.write_text("these are notes, not an image\n" * 20)
    refused = client.predict(PHOTO_CLASSES[0], [handle_file(str(notes))], api_name="/upload")
    assert refused["rejected"] == [{"name": "notes.png", "reason": refused["rejected"][0]["reason"]}]
    assert "not an image" in refused["rejected"][0]["reason"]
    data = client.predict(api_name="/data")
    assert {c["name"]: c["count"] for c in data["classes"]} == dict.fromkeys(PHOTO_CLASSES, PHOTOS_PER_CLASS)
    assert not data["problems"]

    started = client.predict("photos", 0, 0, "", api_name="/train")
    assert started["state"] == "running"
    with pytest.raises(AppError, match="a training job is already running"):
        client.predict("photos", 0, 0, "", api_name="/train")  # one job at a time per project
    deadline = time.monotonic() + 600
    while (status := client.predict(api_name="/train_status"))["state"] == "running":
        assert time.monotonic() < deadline, status["log"][-5:]
        time.sleep(1)
    assert status["state"] == "completed", status

    results = client.predict("", api_name="/results")
    assert results["run"] == status["run"] and results["val_acc"] == status["best_val_acc"] > 1 / 3
    assert {"curves", "confusion"} <= set(results["figures"])
    assert results["command"].startswith("cnnkit train ")
    assert client.predict("", api_name="/command").splitlines()[-1] == results["command"]

    top, seen, cam = client.predict(handle_file(str(photos(imagenette, "val", "church", 1)[0])), "",
                                    api_name="/predict")  # fmt: skip
    assert top["label"] == "church" and seen and cam

    archive = client.predict("", api_name="/download")
    with zipfile.ZipFile(archive) as opened:
        names = opened.namelist()
    assert f"{status['run']}/checkpoints/best.pt" in names and f"{status['run']}/model.onnx" in names

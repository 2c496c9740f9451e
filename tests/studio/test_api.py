"""The studio scripted through its named API endpoints (``gradio_client``), as the README lists
them: the same flow as the page, a second train request while one runs, a non-image upload."""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import pytest

from polling import WAIT_S
from studio_data import PHOTO_CLASSES, PHOTOS_PER_CLASS, photos

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("api") / "project"


@pytest.fixture(scope="module")
def client(start_studio, project_dir: Path):
    from gradio_client import Client

    server = start_studio(project_dir)
    return Client(server.url, verbose=False)


def test_every_action_of_the_page_is_a_named_endpoint(client) -> None:
    from cnnkit.studio.app import ENDPOINTS

    listed = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {f"/{name}" for name in ENDPOINTS} <= set(listed)


def test_collect_train_try_and_take_away_by_api(client, project_dir: Path, imagenette: Path, tmp_path: Path) -> None:
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
    deadline = time.monotonic() + WAIT_S
    while (status := client.predict(api_name="/train_status"))["state"] == "running":
        assert time.monotonic() < deadline, status["log"][-5:]
        time.sleep(1)
    assert status["state"] == "completed", status

    results = client.predict("", api_name="/results")
    assert results["run"] == status["run"] and results["val_acc"] == status["best_val_acc"] > 1 / 3
    assert {"curves", "confusion"} <= set(results["figures"])
    # the run's report looked for label errors among its held-out (validation) photos
    report = project_dir / results["report"]  # a path in the project: answers never say where it is
    assert "Likely label errors</h2>\n<p>val split: from the run" in report.read_text()
    verdict = results["label_errors"]  # a dozen validation photos: too few to tell label errors from model errors
    assert verdict["split"] == "val" and verdict["listed"] == 0 and "too few" in verdict["reason"], verdict
    assert results["command"].startswith("cnnkit train ")
    assert client.predict("", api_name="/command").splitlines()[-1] == results["command"]

    top, seen, cam, _said = client.predict(handle_file(str(photos(imagenette, "val", "church", 1)[0])), "",
                                    api_name="/predict")  # fmt: skip
    assert top["label"] == "church" and seen and cam

    archive = client.predict("", api_name="/download")
    with zipfile.ZipFile(archive) as opened:
        names = opened.namelist()
    assert f"{status['run']}/checkpoints/best.pt" in names and f"{status['run']}/model.onnx" in names


def test_snapshots_drawings_deletions_stop_and_resume_by_api(start_studio, mnist_png, tmp_path: Path) -> None:
    from gradio_client import Client, handle_file

    client = Client(start_studio(tmp_path / "digits").url, verbose=False)
    imported = client.predict("embedded-mnist", 10, api_name="/import_data")
    assert {c["name"]: c["count"] for c in imported["classes"]} == {str(d): 10 for d in range(10)}
    assert client.predict(api_name="/kinds")["default"] == "digits"  # 28 px grey images

    digit, label = mnist_png
    frame = client.predict(label, handle_file(str(digit)), api_name="/add_snapshot")
    drawing = {"background": handle_file(str(digit)), "layers": [], "composite": handle_file(str(digit))}
    drawn = client.predict(label, drawing, api_name="/add_drawing")
    counts = {c["name"]: c["count"] for c in drawn["classes"]}
    assert len(frame["added"]) == len(drawn["added"]) == 1 and counts[label] == 12
    listed = client.predict(label, api_name="/images")
    assert listed["count"] == 12 and listed["files"][0] == drawn["added"][0].split("/")[-1]  # newest first
    after = client.predict(label, listed["files"][0], api_name="/delete_image")
    assert {c["name"]: c["count"] for c in after["classes"]}[label] == 11
    other = "9" if label != "9" else "8"
    assert other not in [c["name"] for c in client.predict(other, api_name="/delete_class")["classes"]]

    started = client.predict("digits", 200, 0, "", api_name="/train")  # far more epochs than the test waits for
    while (status := client.predict(api_name="/train_status"))["epoch"] < 1:
        assert status["state"] == "running", status["log"][-5:]
        time.sleep(0.5)
    client.predict(api_name="/stop")
    deadline = time.monotonic() + WAIT_S
    while (status := client.predict(api_name="/train_status"))["state"] == "running":
        assert time.monotonic() < deadline, status["log"][-5:]
        time.sleep(0.5)
    assert status["state"] == "stopped" and status["run"] == started["run"], status
    (run,) = client.predict(api_name="/runs")
    assert run["name"] == status["run"] and run["epochs_run"] < 200

    resumed = client.predict(status["run"], status["epoch"] + 1, api_name="/resume")  # one more epoch
    assert resumed["state"] == "running"
    while (status := client.predict(api_name="/train_status"))["state"] == "running":
        time.sleep(0.5)
    assert status["state"] == "completed", status["log"][-10:]
    (run,) = client.predict(api_name="/runs")
    assert run["epochs_run"] == run["epochs_planned"] == status["epoch"]

    top, seen, cam, _said = client.predict(drawing, "", api_name="/predict_drawing")
    assert top["label"] in {str(d) for d in range(10)} and seen

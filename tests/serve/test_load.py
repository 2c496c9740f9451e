"""`cnnkit serve` under load, for real: 16 concurrent gradio_client clients, the bad uploads
among them, and uploads over the size limit (the figures are in bench/serve_load.py)."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest
from PIL import Image

from cnnkit.data.datasets import load_source
from cnnkit.inference import Predictor
from polling import WAIT_S

pytestmark = pytest.mark.slow

CLIENTS = 16
DIGITS = 8  # fewer files than clients: clients often send the same file at once


@pytest.fixture(scope="module")
def server(digits_run: Path, start_server):
    return start_server(digits_run, "--examples", "0", "--device", "cpu")


@pytest.fixture(scope="module")
def digits(digits_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, float]]:
    """Real MNIST test digits as PNG files -> (label, probability) the Predictor gives in-process."""
    images, _ = load_source("embedded-mnist", None, False).test
    folder = tmp_path_factory.mktemp("digits")
    paths = []
    for index in range(DIGITS):
        paths.append(str(folder / f"digit-{index}.png"))
        Image.fromarray(images[index, 0].numpy()).save(paths[-1])
    predictions = Predictor.load(digits_run).predict(paths, topk=1)
    assert len({p.label for p in predictions}) >= 5  # varied answers, so a mix-up would show
    return {path: (p.label, p.confidence) for path, p in zip(paths, predictions, strict=True)}


def check_answer(result, expected: tuple[str, float]) -> None:
    """The label and probability the Predictor gives, and both output images whole."""
    top, seen, cam, _said = result
    assert top["label"] == expected[0]
    assert top["confidences"][0]["confidence"] == pytest.approx(expected[1], abs=1e-4)
    for path in (seen, cam):  # downloaded by the client as the page would
        with Image.open(path) as image:
            image.load()  # raises on a truncated or empty file
            assert image.size == (224, 224)


def test_sixteen_concurrent_clients_get_every_answer_right_among_bad_uploads(
    server, digits: dict[str, tuple[str, float]], bad_uploads: dict[str, tuple[Path, str]]
) -> None:
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    files = list(digits)
    clients = [Client(server.url, verbose=False) for _ in range(CLIENTS + 1)]
    failures: list[str] = []
    answered = [0]
    refused: dict[str, str] = {}
    start = threading.Barrier(CLIENTS + 1)

    def good(index: int) -> None:
        start.wait()
        for round_ in range(3):  # all the same file first: the same answer written and read at once
            path = files[0 if round_ == 0 else (index + round_) % DIGITS]
            try:
                check_answer(clients[index].predict(handle_file(path), api_name="/predict_image"), digits[path])
                answered[0] += 1
            except Exception as exc:  # collected: an assertion in a thread would be lost
                failures.append(f"client {index}, {Path(path).name}: {type(exc).__name__}: {exc}")

    def bad() -> None:
        start.wait()
        for name, (path, _) in bad_uploads.items():
            try:
                clients[CLIENTS].predict(handle_file(str(path)), api_name="/predict_image")
                refused[name] = "answered"
            except AppError as exc:
                refused[name] = str(exc)

    threads = [threading.Thread(target=good, args=(i,)) for i in range(CLIENTS)] + [threading.Thread(target=bad)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)

    assert not failures, "\n".join(failures[:5])
    assert answered[0] == 3 * CLIENTS
    for name, (_, says) in bad_uploads.items():
        assert f"cannot read {name}: " in refused[name] and says in refused[name], refused[name]
    assert "Traceback" not in server.output()  # refused as user errors, nothing crashed


def test_uploads_over_the_size_limit_are_refused_and_the_server_keeps_serving(
    server, digits: dict[str, tuple[str, float]], tmp_path: Path
) -> None:
    from gradio_client import Client, handle_file

    large = tmp_path / "large.png"
    large.write_bytes(bytes(11 * 1024 * 1024))  # 11 MB; the limit is 10 MB
    with large.open("rb") as body:  # a client that ignores the page's limit
        response = httpx.post(f"{server.url}gradio_api/upload", files={"files": ("large.png", body)}, timeout=WAIT_S)
    client = Client(server.url, verbose=False)

    assert response.status_code == 413 and "maximum allowed size" in response.text
    with pytest.raises(ValueError, match="exceeds the maximum file size"):  # gradio_client checks first
        client.predict(handle_file(str(large)), api_name="/predict_image")
    path = next(iter(digits))
    check_answer(client.predict(handle_file(path), api_name="/predict_image"), digits[path])

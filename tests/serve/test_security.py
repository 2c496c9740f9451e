"""`cnnkit serve` reads no file of the server for a client: every event of the page, through
raw HTTP and gradio_client, refuses a file reference that is not an upload of the request,
with one message whether the file exists or not; no answer names a server folder."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from PIL import Image

from cli_helpers import one_line_error, run_cli
from cnnkit.serve.app import NOT_UPLOADED
from page_probes import FILE_DATA, error_text, events, leaks, named_call, queue_call, references

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(digits_run: Path, start_server):
    """``cnnkit serve RUN`` with its examples (an event of their own) in its own process."""
    return start_server(digits_run, "--examples", "2", "--device", "cpu")


@pytest.fixture(scope="module")
def secret(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real image outside anything the server was given (the run, Gradio's uploads)."""
    path = tmp_path_factory.mktemp("server-files") / "secret.png"
    Image.new("L", (28, 28), 7).save(path)
    return path


def test_every_event_refuses_a_server_file_whether_it_exists_or_not(server, secret: Path) -> None:
    found = events(server.url)
    with_inputs = [e for e in found if e["inputs"]]
    assert {"predict_image", "predict_drawing", "load_example"} <= {e["api_name"] for e in with_inputs}

    for event in with_inputs:
        answers = {}
        for path in (secret, secret.parent / "missing.png", Path("/tmp/gradio/../..") / secret.relative_to("/")):
            for kind, reference in references(str(path)).items():
                answers[path, kind] = error_text(queue_call(server.url, event, [reference] * len(event["inputs"])))
        assert set(answers.values()) == {NOT_UPLOADED}, (event, answers)


def test_the_named_endpoints_refuse_server_files_by_http(server, secret: Path) -> None:
    for path in (secret, secret.parent / "missing.png"):
        for reference in ({"path": str(path)}, {"path": str(path), "meta": FILE_DATA}):
            kind, answer = named_call(server.url, "predict_image", [reference])
            assert (kind, answer["error"]) == ("error", NOT_UPLOADED)
            drawing = {"background": reference, "layers": [], "composite": reference}
            kind, answer = named_call(server.url, "predict_drawing", [drawing])
            assert (kind, answer["error"]) == ("error", NOT_UPLOADED)


def test_gradio_client_payloads_naming_server_files_are_refused(server, secret: Path) -> None:
    """An untagged ``{"path": ...}`` is not uploaded by gradio_client: it reaches the server as a
    path, and used to be read (an image predicted, a non-image said "not an image")."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(server.url, verbose=False)
    notes = secret.parent / "notes.txt"
    notes.write_text("not an image\n")
    for path in (secret, notes, secret.parent / "missing.png", Path("/etc/hostname")):
        with pytest.raises(AppError) as refused:
            client.predict({"path": str(path)}, api_name="/predict_image")
        assert str(refused.value) == NOT_UPLOADED
        with pytest.raises(AppError) as refused:
            client.predict({"background": {"path": str(path)}, "layers": [], "composite": {"path": str(path)}},
                           api_name="/predict_drawing")  # fmt: skip
        assert str(refused.value) == NOT_UPLOADED


def test_an_upload_is_predicted_and_no_answer_names_a_server_folder(server, digits_run: Path, secret: Path,
                                                                    bad_uploads) -> None:  # fmt: skip
    forbidden = [str(digits_run.parent), str(secret.parent), str(Path.cwd()), str(Path.home())]
    with httpx.Client(timeout=120) as http:
        config = http.get(server.url + "config").text
        files = [secret, bad_uploads["notes.png"][0]]
        uploaded = http.post(server.url + "gradio_api/upload",
                             files=[("files", (p.name, p.read_bytes())) for p in files]).json()  # fmt: skip
    assert not leaks(config, forbidden)

    kind, answer = named_call(server.url, "predict_image", [{"path": uploaded[0], "meta": FILE_DATA}])
    assert kind == "complete" and set(answer[0]["confidences"][0]) == {"label", "confidence"}
    assert not leaks(answer, forbidden)
    kind, answer = named_call(server.url, "predict_image", [{"path": uploaded[1], "meta": FILE_DATA}])
    assert (kind, answer["error"]) == ("error", "cannot read notes.png: not an image (no decoder recognises it)")


@pytest.mark.parametrize("port", ["99999", "0", "-1"])
def test_a_port_out_of_range_is_one_line(capsys, digits_run: Path, port: str) -> None:
    code, _, err = run_cli(capsys, "serve", str(digits_run), "--port", port)

    assert code == 2 and one_line_error(err) == f"cnnkit: error: --port must be in [1, 65535], got {port}"

"""`cnnkit studio` reads no file of the server for a client: every event of the page, through
raw HTTP and gradio_client, refuses a file reference that is not an upload of the request (one
message whether the file exists or not, nothing stored); no answer names a server folder;
folders are imported only on the loopback address or under ``--allow-import`` roots."""

from __future__ import annotations

import hashlib
import html
import os
import re
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from cli_helpers import one_line_error, run_cli
from cnnkit.commands.studio import import_roots
from cnnkit.errors import UsageError
from cnnkit.serve.app import NOT_UPLOADED
from cnnkit.studio.actions import Studio
from cnnkit.studio.project import Project
from page_probes import FILE_DATA, error_text, events, leaks, named_call, queue_call, references, texts

pytestmark = pytest.mark.slow

FILE_INPUTS = ("upload", "add_snapshot", "add_drawing", "predict", "predict_drawing")


def png(path: Path, value: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (28, 28), value).save(path)
    return path


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Server files no client was given: ``secret.png`` and ``photos/{cat,dog}/`` (5 images each)."""
    folder = tmp_path_factory.mktemp("server-files")
    png(folder / "secret.png", 7)
    for c, name in enumerate(("cat", "dog")):
        for i in range(5):
            png(folder / "photos" / name / f"{i}.png", 40 * c + 5 * i + 20)
    return folder


@pytest.fixture(scope="module")
def allowed(tmp_path_factory: pytest.TempPathFactory, outside: Path) -> Path:
    """An ``--allow-import`` root: ``photos/`` inside, ``escape`` (a link to a folder outside)
    and ``list.csv`` (rows naming files outside)."""
    root = tmp_path_factory.mktemp("allowed")
    for c, name in enumerate(("ant", "bee")):
        for i in range(5):
            png(root / "photos" / name / f"{i}.png", 40 * c + 5 * i + 120)
    (root / "escape").symlink_to(outside / "photos", target_is_directory=True)
    rows = [f"{outside / 'photos' / name / f'{i}.png'},{name}" for name in ("cat", "dog") for i in range(5)]
    (root / "list.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    return root


def digests(project: Path) -> set[str]:
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in (project / "data").rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def trained(start_studio, tmp_path_factory: pytest.TempPathFactory):
    """(a studio server on 127.0.0.1, its project): 10 embedded-MNIST digits a class and a
    one-epoch digits run, made through the API."""
    from gradio_client import Client

    project = tmp_path_factory.mktemp("secure") / "project"
    server = start_studio(project)
    client = Client(server.url, verbose=False)
    client.predict("embedded-mnist", 10, api_name="/import_data")
    client.predict("digits", 1, 0, "", api_name="/train")
    deadline = time.monotonic() + 600
    while (status := client.predict(api_name="/train_status"))["state"] == "running":
        assert time.monotonic() < deadline, status["log"][-5:]
        time.sleep(1)
    assert status["state"] == "completed", status["log"][-10:]
    return server, project


def test_every_event_refuses_a_server_file_whether_it_exists_or_not(trained, outside: Path) -> None:
    server, project = trained
    before = digests(project)
    found = events(server.url)
    with_inputs = [e for e in found if e["inputs"]]
    assert set(FILE_INPUTS) | {"import_data", "images", "results"} <= {e["api_name"] for e in with_inputs}
    assert any(e["kind"] == "stream" for e in with_inputs)  # the webcam burst, a private event

    secret = outside / "secret.png"
    for event in with_inputs:
        answers = {}
        for path in (secret, outside / "missing.png", Path("/tmp/gradio/../..") / secret.relative_to("/")):
            for kind, reference in references(str(path)).items():
                answers[path, kind] = error_text(queue_call(server.url, event, [reference] * len(event["inputs"])))
        assert set(answers.values()) == {NOT_UPLOADED}, (event, answers)
    assert digests(project) == before  # nothing stored, the secret's bytes least of all
    assert hashlib.sha256(secret.read_bytes()).hexdigest() not in before


def test_the_named_endpoints_refuse_server_files_by_http(trained, outside: Path) -> None:
    server, project = trained
    before = digests(project)
    for path in (outside / "secret.png", outside / "missing.png"):
        for reference in ({"path": str(path)}, {"path": str(path), "meta": FILE_DATA}):
            editor = {"background": reference, "layers": [], "composite": reference}
            for name, data in (("upload", ["0", [reference]]), ("add_snapshot", ["0", reference]),
                               ("add_drawing", ["0", editor]), ("predict", [reference, ""]),
                               ("predict_drawing", [editor, ""])):  # fmt: skip
                kind, answer = named_call(server.url, name, data)
                assert (kind, answer["error"]) == ("error", NOT_UPLOADED), name
    assert digests(project) == before


def test_gradio_client_payloads_naming_server_files_are_refused(trained, outside: Path) -> None:
    """Untagged ``{"path": ...}`` dicts are sent by gradio_client as they are: the issue's
    studio copied a server image into its project this way."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    server, project = trained
    client = Client(server.url, verbose=False)
    before = digests(project)
    for path in (outside / "secret.png", outside / "missing.png", Path("/usr/share/missing/logo.png")):
        reference = {"path": str(path)}
        editor = {"background": reference, "layers": [], "composite": reference}
        for name, args in (("upload", ["0", [reference]]), ("add_snapshot", ["0", reference]),
                           ("add_drawing", ["0", editor]), ("predict", [reference, ""]),
                           ("predict_drawing", [editor, ""])):  # fmt: skip
            with pytest.raises(AppError) as refused:
                client.predict(*args, api_name=f"/{name}")
            assert str(refused.value) == NOT_UPLOADED, name
    assert digests(project) == before


def test_no_answer_names_a_server_folder(trained, outside: Path, mnist_png) -> None:
    server, project = trained
    forbidden = [str(project), os.path.realpath(project), str(outside), str(Path.cwd()), str(Path.home()),
                 os.environ["CNNKIT_CACHE_DIR"]]  # the tests' cnnkit cache (conftest.py), the server's too
    with httpx.Client(timeout=120) as http:
        config = http.get(server.url + "config").json()
        digit = mnist_png[0]
        (path,) = http.post(server.url + "gradio_api/upload",
                            files=[("files", (digit.name, digit.read_bytes()))]).json()  # fmt: skip
    assert not leaks(config, forbidden)
    upload = {"path": path, "meta": FILE_DATA, "orig_name": "digit.png"}
    editor = {"background": None, "layers": [], "composite": upload}

    answers = {}
    for name, data in (("add_class", ["bird"]), ("upload", ["bird", [upload]]), ("add_snapshot", ["bird", upload]),
                       ("add_drawing", ["bird", editor]), ("images", ["bird"]), ("data", []), ("kinds", []),
                       ("train_status", []), ("runs", []), ("results", [""]), ("command", [""]), ("download", [""]),
                       ("predict", [upload, ""]), ("predict_drawing", [editor, ""]), ("stop", []),
                       ("import_data", ["embedded-mnist", 1]), ("images", ["no such class"]),
                       ("results", ["no-such-run"]), ("resume", ["no-such-run", 0]),
                       ("delete_class", ["bird"])):  # fmt: skip
        answers[name, str(data)] = named_call(server.url, name, data)
    failed = {key: answer for key, answer in answers.items() if answer[0] != "complete"}
    assert [key[0] for key in failed] == ["images", "results", "resume"], failed  # the three mistakes
    results = answers["results", "['']"][1][0]
    assert results["report"] and not Path(results["report"]).is_absolute()
    assert all(p.startswith("data/") for c in answers["data", "[]"][1][0]["classes"] for p in c["thumbnails"])
    # the page's own events (the page load shows every tab: gallery, figures, report link, command)
    for event in events(server.url):
        if not event["inputs"] and event["kind"] in ("load", "tick"):
            answers[event["fn_index"], "page"] = queue_call(server.url, event, [])
    assert not leaks(answers, forbidden), leaks(answers, forbidden)
    # the Look tab's link opens a copy of the run's report (served as a page, not a download)
    (link,) = {m for text in texts(answers) for m in re.findall(r'href="(gradio_api/file=[^"]+report.html)"', text)}
    opened = httpx.get(server.url + html.unescape(link), timeout=60)
    assert opened.status_code == 200 and "inline" in opened.headers["content-disposition"]
    assert opened.text == (project / results["report"]).read_text(encoding="utf-8")


def test_import_is_only_under_the_allowed_roots(start_studio, tmp_path: Path, allowed: Path, outside: Path) -> None:
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    project = tmp_path / "project"
    server = start_studio(project, "--allow-import", str(allowed))
    client = Client(server.url, verbose=False)

    imported = client.predict(str(allowed / "photos"), 0, api_name="/import_data")
    assert {c["name"]: c["count"] for c in imported["classes"]} == {"ant": 5, "bee": 5}
    refused = {}
    for source in (outside / "photos", outside / "missing", f"{allowed}/../{outside.name}/photos", allowed / "escape",
                   Path("/etc"), "photos"):  # fmt: skip
        with pytest.raises(AppError) as error:
            client.predict(str(source), 0, api_name="/import_data")
        refused[str(source)] = str(error.value).replace(str(source), "SOURCE")
    assert len(set(refused.values())) == 1, refused  # the same words, whether the folder exists or not
    assert f"only under {os.path.realpath(allowed)} (--allow-import)" in next(iter(refused.values()))

    listed = client.predict(str(allowed / "list.csv"), 0, api_name="/import_data")  # rows naming files outside
    assert len(listed["rejected"]) == 10 and not listed["added"]
    assert {r["reason"] for r in listed["rejected"]} == {"outside the folders this studio may import"}
    assert len(client.predict("embedded-mnist", 1, api_name="/import_data")["added"]) == 10  # a registered name
    assert {c["name"]: c["count"] for c in client.predict(api_name="/data")["classes"]} == {
        "ant": 5, "bee": 5, **{str(d): 1 for d in range(10)}}  # fmt: skip


def test_a_studio_open_to_the_network_imports_no_folder(tmp_path: Path, allowed: Path, outside: Path) -> None:
    assert import_roots("0.0.0.0", []) == () and import_roots("192.168.1.5", []) == ()
    assert import_roots("127.0.0.1", []) is None and import_roots("localhost", []) is None
    assert import_roots("::1", []) is None
    assert import_roots("0.0.0.0", [str(allowed)]) == (Path(os.path.realpath(allowed)),)

    studio = Studio(Project.open(tmp_path / "project"), import_roots=import_roots("0.0.0.0", []))
    messages = set()
    for source in (outside / "photos", outside / "missing", allowed / "photos"):
        with pytest.raises(UsageError) as refused:
            studio.import_data(str(source))
        messages.add(str(refused.value).replace(str(source), "SOURCE"))
    (message,) = messages
    assert "this studio is open to the network, so it imports no folder of the server" in message
    assert "--allow-import DIR" in message
    assert len(studio.import_data("embedded-mnist", 1)["added"]) == 10
    assert not any((tmp_path / "project" / "data").glob("ant"))


def test_the_page_open_to_the_network_offers_dataset_names_only(tmp_path: Path) -> None:
    from cnnkit.studio.app import build_studio

    page = build_studio(Project.open(tmp_path / "project"), import_roots=())
    source = next(b for b in page.blocks.values() if getattr(b, "elem_id", None) == "import-source")
    note = next(b for b in page.blocks.values() if getattr(b, "elem_id", None) == "import-note")
    assert source.label == "Dataset name" and "--allow-import DIR" in note.value and note.visible
    assert str(tmp_path) not in str(page.config)  # the page never says where the project is


def test_a_bad_port_or_import_root_is_one_line_and_creates_nothing(tmp_path: Path, capsys) -> None:
    project = tmp_path / "new-project"
    code, _, err = run_cli(capsys, "studio", str(project), "--port", "99999")
    assert code == 2 and one_line_error(err) == "cnnkit: error: --port must be in [1, 65535], got 99999"
    code, _, err = run_cli(capsys, "studio", str(project), "--allow-import", str(tmp_path / "missing"))
    assert code == 2 and one_line_error(err).endswith("missing: not a folder")
    assert not project.exists()

"""Uploads as the demo reads them (read_upload, DemoModel.upload), the one thread that runs its model,
and its output files, without a server."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_helpers import run_cli
from cnnkit.errors import UsageError
from cnnkit.inference import Predictor
from cnnkit.serve.app import DemoModel, OutputFiles, build_demo, launch, read_upload


@pytest.fixture(scope="module")
def predictor(digits_run: Path) -> Predictor:
    return Predictor.from_checkpoint(digits_run)


def test_each_bad_upload_is_refused_with_what_was_wrong(bad_uploads: dict[str, tuple[Path, str]]) -> None:
    for name, (path, says) in bad_uploads.items():
        with pytest.raises(UsageError) as refused:
            read_upload(path, "L", name=f"my-{name}")

        message = str(refused.value)
        assert f"cannot read my-{name}: " in message and says in message, message
        assert str(path.parent) not in message  # the name the user knows, not the server's path


def test_an_image_over_the_limit_is_refused_from_its_header(tmp_path: Path, blank_png) -> None:
    """8000x6000 is under PIL's own decompression-bomb limit: the demo's limit refuses it."""
    path = tmp_path / "big.png"
    blank_png(path, 8000, 6000)

    with pytest.raises(UsageError, match=r"big.png is 8000x6000 pixels \(48 MP\); this demo takes at most 40 MP"):
        read_upload(path, "RGB")
    assert read_upload(path, "RGB", max_pixels=50_000_000).size == (8000, 6000)


def test_an_upload_payload_is_read_by_cnnkit_and_predicted(
    predictor: Predictor, mnist_png: tuple[Path, str], bad_uploads: dict[str, tuple[Path, str]]
) -> None:
    path, label = mnist_png
    model = DemoModel(predictor, gradcam=False)

    top, seen, _, _ = model.upload({"path": str(path), "orig_name": "seven.png", "meta": {"_type": "gradio.FileData"}})
    assert list(top)[0] == label
    assert top == model.image(Image.open(path))[0] == model.upload(str(path))[0]
    assert seen.size == (224, 224)
    with pytest.raises(UsageError, match="cannot read notes from the phone.png: not an image"):
        model.upload({"path": str(bad_uploads["notes.png"][0]), "orig_name": "notes from the phone.png"})
    with pytest.raises(UsageError, match="upload an image first"):
        model.upload({"path": None})


def test_requests_from_many_threads_run_the_model_on_one(predictor: Predictor, mnist_png: tuple[Path, str]) -> None:
    """Grad-CAM hooks the model, so calls must not overlap; one thread also keeps torch's
    memory in one malloc arena (see DemoModel)."""
    import threading

    path, label = mnist_png
    model = DemoModel(predictor)
    ran_on: set[int] = set()
    hook = predictor.model.register_forward_hook(lambda *_: ran_on.add(threading.get_ident()))
    answers: list[str] = []
    callers = [threading.Thread(target=lambda: answers.append(list(model.upload(str(path))[0])[0])) for _ in range(8)]
    try:
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join()
    finally:
        hook.remove()

    assert answers == [label] * 8
    assert len(ran_on) == 1 and ran_on.isdisjoint(caller.ident for caller in callers)


def test_output_files_are_whole_and_written_once(tmp_path: Path) -> None:
    files = OutputFiles(tmp_path / "out")
    image = Image.fromarray(np.arange(224 * 224 * 3, dtype=np.uint32).astype(np.uint8).reshape(224, 224, 3))

    first = files(image)
    written = os.stat(first)
    again = files(image.copy())

    assert again == first and os.stat(again).st_ino == written.st_ino  # not rewritten in place
    with Image.open(first) as saved:
        assert np.array_equal(np.asarray(saved), np.asarray(image))
    assert files(None) is None
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [Path(first).name]  # no temporary left


def test_queue_settings_must_be_positive(predictor: Predictor, digits_run: Path, capsys) -> None:
    with pytest.raises(UsageError, match="--concurrency and --queue-size must be at least 1"):
        launch(build_demo(predictor), concurrency=0)

    code, _, err = run_cli(capsys, "serve", str(digits_run), "--queue-size", "0")
    assert code == 2 and "--queue-size must be >= 1, got 0" in err


def test_the_command_line_defaults_are_the_demos() -> None:
    from cnnkit.cli import build_parser
    from cnnkit.serve.app import CONCURRENCY, QUEUE_SIZE

    args = build_parser().parse_args(["serve", "RUN"])

    assert (args.concurrency, args.queue_size) == (CONCURRENCY, QUEUE_SIZE)

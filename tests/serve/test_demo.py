"""`cnnkit serve` for real: a server process, a digit drawn with the mouse in headless
Chromium, an uploaded MNIST digit, and the API through gradio_client."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
from PIL import Image
from studio_tour import SEVEN, draw  # the same mouse strokes as the studio's test

from polling import WAIT_MS, WAIT_S

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "serve-digit.png"  # refreshed with CNNKIT_UPDATE_DOCS=1


@pytest.fixture(scope="module")
def server(digits_run: Path, start_server):
    """``cnnkit serve RUN`` in its own process (see conftest.py), once its page answers."""
    return start_server(digits_run, "--examples", "4", "--device", "cpu")


def dismiss_toasts(page) -> None:
    """Close every message toast and wait until none is left.

    A toast also closes itself after a few seconds, so on a slow machine it can
    fade out (and leave the DOM) while the click is still waiting for it: that
    is not an error, only the end state (no toast) is asserted.
    """
    from playwright.sync_api import Error, expect

    for close in page.locator("[data-testid=toast-close]").all():
        try:
            close.click(timeout=5_000)
        except Error:  # gone by itself meanwhile
            pass
    expect(page.locator("[data-testid=toast-body]")).to_have_count(0, timeout=WAIT_MS)


def test_a_digit_drawn_with_the_mouse_is_recognised(
    server, browser, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    page = browser.new_page()
    page.goto(server.url)
    page.wait_for_selector("#sketchpad canvas", timeout=WAIT_MS)
    # a "7": the bar from left to right, then the stem down to the lower left
    draw(page, "#sketchpad", SEVEN)
    page.click("#predict-drawing")

    expect(page.locator("#prediction [data-testid=label-output-value]")).to_have_text(
        "7", timeout=WAIT_MS
    )
    probability = float(
        page.locator("#prediction [data-testid='7-confidence-set'] meter").get_attribute("value")
    )
    print(f"drawn 7: p = {probability:.4f}")
    assert probability > 0.9
    # the model's input and the Grad-CAM overlay are shown too (two 224x224 images)
    shown = (
        "[...document.querySelectorAll('img')].filter(i => i.complete && i.naturalWidth === 224)"
    )
    page.wait_for_function(f"{shown}.length >= 2", timeout=WAIT_MS)
    shot = tmp_path / "serve-digit.png"
    page.screenshot(path=str(shot))
    if os.environ.get("CNNKIT_UPDATE_DOCS") == "1":
        shutil.copyfile(shot, SCREENSHOT)
    page.close()


def test_an_uploaded_digit_and_an_example_are_recognised(
    server, browser, mnist_png: tuple[Path, str]
) -> None:
    from playwright.sync_api import expect

    path, label = mnist_png
    page = browser.new_page()
    page.goto(server.url)
    page.get_by_role("tab", name="Upload").click()
    page.set_input_files("#upload input[type=file]", str(path))  # predicts on upload
    prediction = page.locator("#prediction [data-testid=label-output-value]")

    expect(prediction).to_have_text(label, timeout=WAIT_MS)
    # the validation examples (--examples 4: one each of 0-3) predict when clicked
    rows = page.locator("tbody tr")
    assert [rows.nth(i).inner_text().strip() for i in range(rows.count())] == ["0", "1", "2", "3"]
    rows.nth(3).click()
    expect(prediction).to_have_text("3", timeout=WAIT_MS)
    page.close()


def test_a_photo_of_none_of_the_classes_says_so_in_the_page(
    server, browser, digits_run: Path, imagenette: Path, mnist_png: tuple[Path, str],
) -> None:  # fmt: skip
    """The digits model's open set turns a photo away: the page says "not sure: none of
    these?" above the classes, and says nothing of the kind for a digit."""
    from playwright.sync_api import expect

    from cnnkit.inference import Predictor

    photos = [str(p) for p in sorted((imagenette / "val").glob("*/*.JPEG"))[:40]]
    results = list(Predictor.from_checkpoint(digits_run).predict_files(photos, workers=0))
    unknown = next(r.source for r in results if r.looks_known is False)  # most photos are: one is enough
    page = browser.new_page()
    page.goto(server.url)
    page.get_by_role("tab", name="Upload").click()
    page.set_input_files("#upload input[type=file]", unknown)
    expect(page.locator("#verdict")).to_contain_text("not sure: none of these?", timeout=WAIT_MS)
    page.close()
    page = browser.new_page()
    page.goto(server.url)
    page.get_by_role("tab", name="Upload").click()
    page.set_input_files("#upload input[type=file]", str(mnist_png[0]))
    expect(page.locator("#prediction [data-testid=label-output-value]")).to_have_text(mnist_png[1], timeout=WAIT_MS)
    expect(page.locator("#verdict")).not_to_contain_text("none of these", timeout=WAIT_MS)
    page.close()


def test_the_api_through_gradio_client(
    server, mnist_png: tuple[Path, str], tmp_path: Path
) -> None:
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    path, label = mnist_png
    client = Client(server.url, verbose=False)

    top, seen, cam, _said = client.predict(handle_file(str(path)), api_name="/predict_image")
    assert top["label"] == label and top["confidences"][0]["confidence"] > 0.5
    with Image.open(seen) as shown:
        assert shown.size == (224, 224)
    assert cam is not None
    blank = tmp_path / "blank.png"
    Image.new("RGBA", (280, 280), (255, 255, 255, 0)).save(blank)
    with pytest.raises(AppError, match="draw a digit first"):
        client.predict(
            {"background": None, "layers": [], "composite": handle_file(str(blank))},
            api_name="/predict_drawing",
        )


def test_bad_and_oversized_uploads_show_a_message_in_the_page(
    server, browser, bad_uploads: dict[str, tuple[Path, str]], mnist_png: tuple[Path, str], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    large = tmp_path / "large.png"
    large.write_bytes(bytes(11 * 1024 * 1024))  # the limit is 10 MB
    page = browser.new_page()
    page.goto(server.url)
    page.get_by_role("tab", name="Upload").click()
    clear = page.locator("#upload button[aria-label=Clear]")
    shown = {**{name: says for name, (_, says) in bad_uploads.items()}, "large.png": "exceed the maximum allowed size"}
    for name, says in shown.items():
        path = large if name == "large.png" else bad_uploads[name][0]
        page.set_input_files("#upload input[type=file]", str(path))  # predicts on upload
        toast = page.locator("[data-testid=toast-body]").last
        expect(toast).to_contain_text(says, timeout=WAIT_MS)
        if name != "large.png":
            expect(toast).to_contain_text(f"cannot read {name}: ")
        dismiss_toasts(page)
        if clear.count():
            clear.first.click()

    page.set_input_files("#upload input[type=file]", str(mnist_png[0]))  # and it still serves
    expect(page.locator("#prediction [data-testid=label-output-value]")).to_have_text(mnist_png[1], timeout=WAIT_MS)
    page.close()


def test_ctrl_c_stops_the_server(server) -> None:
    server.process.send_signal(signal.SIGINT)

    assert server.process.wait(timeout=WAIT_S) == 0, server.output()  # at most 5 s of grace after closing
    assert f"on {server.url}" in server.output()

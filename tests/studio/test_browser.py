"""The studio in real Chromium (Playwright): collect photos, train, look, try, take away, and
find everything again after a restart; draw a digit for a digits model trained in the studio.

The page steps are scripts/studio_tour.py's, the script that takes the README's screenshots.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from cli_helpers import run_cli
from polling import WAIT_MS
from studio_data import PHOTO_CLASSES, PHOTOS_PER_CLASS, photos

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tour(chromium: str):
    import studio_tour  # scripts/ is on sys.path once the chromium fixture ran

    return studio_tour


def test_collect_train_try_take_away_and_reopen_a_photo_project(
    start_studio, browser, tour, imagenette: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from playwright.sync_api import expect

    project = tmp_path / "project"
    server = start_studio(project)
    page = browser.new_page()
    page.goto(server.url)
    for name in PHOTO_CLASSES:
        tour.add_class(page, name, photos(imagenette, "train", name, PHOTOS_PER_CLASS))
    assert tour.class_counts(page) == dict.fromkeys(PHOTO_CLASSES, PHOTOS_PER_CLASS)
    expect(page.locator("#data-check")).to_contain_text("no problems found")

    accuracy = tour.train(page)  # the default kind: photos (a frozen pretrained backbone)
    print(f"page: validation accuracy {accuracy:.2f} %")
    assert accuracy > 100 / len(PHOTO_CLASSES)  # above chance (it is about 100 % on 12 images)

    held_out = photos(imagenette, "val", "church", 1)[0]
    assert tour.try_photo(page, held_out) == "church"

    # a photo of a class the project does not have: the page says so (the run's open set
    # decides which of ten parachutes it turns away; the page must show that decision)
    from cnnkit.inference import Predictor

    (trained,) = project.glob("runs/*/checkpoints/best.pt")
    parachutes = [str(p) for p in photos(imagenette, "val", "parachute", 10)]
    judged = list(Predictor.from_checkpoint(trained).predict_files(parachutes, workers=0))
    unseen = next((r.source for r in judged if r.looks_known is False), None)
    assert unseen is not None, [r.known_score for r in judged]
    tour.try_photo(page, Path(unseen))
    expect(page.locator("#verdict")).to_contain_text("not sure: none of these?", timeout=WAIT_MS)

    archive = tour.download_zip(page, tmp_path)
    with zipfile.ZipFile(archive) as opened:
        opened.extractall(tmp_path / "unpacked")
    (best,) = (tmp_path / "unpacked").glob("*/checkpoints/best.pt")
    code, out, err = run_cli(capsys, "eval", str(best))
    assert code == 0, err
    top1 = float(re.search(r"top-1: ([0-9.]+)%", out).group(1))
    assert top1 == pytest.approx(accuracy, abs=0.01), out  # the page's figure is the run's own
    run_name = best.parents[1].name

    assert server.stop() == 0, server.output()  # Ctrl-C; a new server on the same folder...
    server = start_studio(project)
    page.goto(server.url)
    expect(page.locator("#class-counts")).to_contain_text(PHOTO_CLASSES[-1], timeout=WAIT_MS)
    assert tour.class_counts(page) == dict.fromkeys(PHOTO_CLASSES, PHOTOS_PER_CLASS)
    assert run_name in page.locator("#run").inner_text() or run_name in page.locator("#run input").input_value()
    assert tour.shown_accuracy(page) == accuracy  # ...shows the same classes, images and run
    page.close()


def test_a_digit_drawn_in_the_browser_is_recognised_by_a_digits_model_trained_in_the_studio(
    start_studio, browser, tour, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    server = start_studio(tmp_path / "digits")
    page = browser.new_page()
    page.goto(server.url)
    tour.open_tab(page, "Collect")
    page.get_by_role("tab", name="Import").first.click()
    page.fill("#import-source textarea, #import-source input", "embedded-mnist")
    page.fill("#import-limit input", "100")
    page.click("#import")
    expect(page.locator("#collect-message")).to_contain_text("imported embedded-mnist", timeout=WAIT_MS)
    assert tour.class_counts(page) == {str(d): 100 for d in range(10)}

    accuracy = tour.train(page, kind="digits")
    print(f"digits: validation accuracy {accuracy:.2f} %")
    assert accuracy > 80
    assert tour.try_drawing(page) == "7"
    page.close()


def test_webcam_snapshot_and_burst_drawing_and_deletions_in_the_collect_tab(
    start_studio, browser, tour, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    project = tmp_path / "cam"
    server = start_studio(project)
    page = browser.new_page()
    page.goto(server.url)
    tour.add_class(page, "cam", [])
    page.get_by_role("tab", name="Webcam").first.click()
    tour.start_webcam(page, "#webcam")  # Chromium's fake camera
    page.click("#webcam button[aria-label='capture photo']")
    page.wait_for_function("document.querySelector('#webcam img[src]:not(.hide)')", timeout=tour.STEP_TIMEOUT_MS)
    page.click("#add-snapshot")
    expect(page.locator("#collect-message")).to_contain_text("cam: added webcam-", timeout=tour.STEP_TIMEOUT_MS)
    assert tour.class_counts(page) == {"cam": 1}

    tour.start_webcam(page, "#burst")
    page.locator("#burst button[aria-label='capture photo']").click()  # Record
    page.wait_for_function("document.querySelectorAll('#gallery img').length >= 4", timeout=tour.STEP_TIMEOUT_MS)
    page.locator("#burst button[aria-label='capture photo']", has_text="Stop").click()
    page.wait_for_timeout(2_000)  # a frame already sent may still land
    stored = sorted((project / "data" / "cam").iterdir())
    page.wait_for_timeout(2_000)
    assert sorted((project / "data" / "cam").iterdir()) == stored, "the burst went on after Stop"
    assert len(stored) >= 4 and len({Image.open(f).size for f in stored}) == 1  # frames of one camera

    page.get_by_role("tab", name="Draw").first.click()
    tour.draw(page, "#sketch-collect", tour.SEVEN)
    page.click("#add-drawing")
    expect(page.locator("#collect-message")).to_contain_text("cam: added sketch-", timeout=tour.STEP_TIMEOUT_MS)
    (drawing,) = (project / "data" / "cam").glob("sketch-*.png")
    assert Image.open(drawing).size == (28, 28)  # stored as an MNIST-style digit

    page.locator("#gallery img").first.click()  # the newest: the drawing
    expect(page.locator("#picked textarea, #picked input")).to_have_value(drawing.name)
    page.click("#delete-image")
    expect(page.locator("#collect-message")).to_contain_text(f"deleted {drawing.name}", timeout=tour.STEP_TIMEOUT_MS)
    assert not drawing.exists() and tour.class_counts(page) == {"cam": len(stored)}

    page.click("#delete-class")
    expect(page.locator("#collect-message")).to_contain_text("deleted class cam", timeout=tour.STEP_TIMEOUT_MS)
    expect(page.locator("#class-counts")).to_contain_text("No classes yet")
    assert not (project / "data" / "cam").exists()
    page.close()

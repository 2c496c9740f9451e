"""Drive the studio page in headless Chromium: collect photos, train, try, take away.

Usage (the README's screenshots of the three stages)::

    python scripts/studio_tour.py --data ../shared/data/imagenette-2k --out docs/images

It makes a new project of three Imagenette classes x 20 photos in a temporary folder,
starts ``cnnkit studio`` on it, and, in the page, uploads the photos, trains the default
photo model and tries a held-out photo; ``studio-collect.png``, ``studio-train.png`` and
``studio-try.png`` are written to ``--out``. The steps are functions the browser test
(tests/studio/test_browser.py) calls too, so the screenshots show what the test checks.
Needs ``playwright`` (the Python package only: the browser is the system's Chromium).
"""

from __future__ import annotations

import argparse
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

from local_server import start_cnnkit_server
from screenshot_report import CHROMIUM_FLAGS, chromium_path

TRAIN_TIMEOUT_MS = 600_000  # the photo model trains in seconds; a loaded CI machine is slower
STEP_TIMEOUT_MS = 60_000
CLASSES = ("cassette_player", "chain_saw", "church")
PHOTOS = 20
VIEWPORT = {"width": 1280, "height": 900}


def open_tab(page, name: str) -> None:
    """Show one of the page's tabs by its label (``Collect``, ``Train``, ``Try``...)."""
    page.get_by_role("tab", name=re.compile(rf"^\d? ?{name}$")).first.click()


def add_class(page, name: str, files: Sequence[Path]) -> None:
    """Add a class by name, then upload ``files`` into it (if any), and wait for its count."""
    from playwright.sync_api import expect

    open_tab(page, "Collect")
    page.fill("#new-class textarea, #new-class input", name)
    page.click("#add-class")
    expect(page.locator("#collect-message")).to_contain_text(f"added class {name}", timeout=STEP_TIMEOUT_MS)
    if not files:
        return
    page.get_by_role("tab", name="Upload").first.click()
    page.set_input_files("#upload-files input[type=file]", [str(f) for f in files])
    # the file component lists each file once it is uploaded (its stem and suffix apart)
    expect(page.locator("#upload-files tr")).to_have_count(len(files), timeout=STEP_TIMEOUT_MS)
    page.click("#add-files")
    expect(page.locator("#collect-message")).to_contain_text(f"{name}: added {len(files)}", timeout=STEP_TIMEOUT_MS)


def start_webcam(page, root: str) -> None:
    """Grant the webcam component under ``root`` its camera (the first click of a visit)."""
    page.locator(root).get_by_text("Click to Access Webcam").click()
    page.locator(f"{root} button[aria-label='capture photo']").wait_for(timeout=STEP_TIMEOUT_MS)
    # frames come once the video plays (a capture before that takes nothing)
    page.wait_for_function(f"document.querySelector(\"{root} video\")?.readyState >= 2", timeout=STEP_TIMEOUT_MS)


def class_counts(page) -> dict[str, int]:
    """The per-class table the page shows: class -> images."""
    rows = page.locator("#class-counts tr").all_inner_texts()
    counts = {}
    for row in rows:
        cells = [c.strip() for c in row.split("\t")]
        if len(cells) == 2 and cells[1].isdigit() and not cells[0].endswith("classes"):
            counts[cells[0]] = int(cells[1])
    return counts


def train(page, kind: str | None = None) -> float:
    """Press Train (with ``kind``'s radio, if given), wait for the job to finish; the
    validation accuracy (in %) the page then shows."""
    from playwright.sync_api import expect

    open_tab(page, "Train")
    if kind:
        page.locator("#kind label").filter(has_text=kind).first.click()
    page.click("#train")
    expect(page.locator("#train-status")).to_contain_text("finished", timeout=TRAIN_TIMEOUT_MS)
    return shown_accuracy(page)


def shown_accuracy(page) -> float:
    """The best validation accuracy (%) the Look tab shows for the selected run."""
    from playwright.sync_api import expect

    open_tab(page, "Look")
    results = page.locator("#results")
    expect(results).to_contain_text("Validation accuracy", timeout=STEP_TIMEOUT_MS)
    found = re.search(r"Validation accuracy: ([\d.]+) %", results.inner_text())
    assert found, results.inner_text()
    return float(found.group(1))


def try_photo(page, photo: Path) -> str:
    """Upload ``photo`` in the Try tab and press Predict; the top label shown."""
    from playwright.sync_api import expect

    open_tab(page, "Try")
    page.get_by_role("tab", name="Photo").first.click()
    page.set_input_files("#try-image input[type=file]", str(photo))
    page.wait_for_selector("#try-image img", timeout=STEP_TIMEOUT_MS)
    page.click("#predict-image")
    label = page.locator("#prediction [data-testid=label-output-value]")
    expect(label).not_to_be_empty(timeout=STEP_TIMEOUT_MS)
    page.wait_for_function("document.querySelectorAll('#gradcam img').length > 0", timeout=STEP_TIMEOUT_MS)
    return label.inner_text().strip()


def draw(page, root: str, strokes: list[list[tuple[float, float]]]) -> None:
    """Mouse strokes on the sketchpad under CSS selector ``root``; points are offsets in
    CSS pixels from the canvas centre."""
    page.click(f"{root} button[aria-label=Brush]")  # no tool is active until one is chosen
    box = page.locator(f"{root} canvas").first.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    for points in strokes:
        page.mouse.move(cx + points[0][0], cy + points[0][1])
        page.mouse.down()
        for x, y in points[1:]:
            page.mouse.move(cx + x, cy + y, steps=15)
        page.mouse.up()


SEVEN = [[(-70, -95), (75, -95), (-5, 105)]]  # the bar from left to right, then the stem to the lower left


def try_drawing(page, strokes: list[list[tuple[float, float]]] = SEVEN) -> str:
    """Draw ``strokes`` in the Try tab's sketchpad and press Predict; the top label shown."""
    from playwright.sync_api import expect

    open_tab(page, "Try")
    page.get_by_role("tab", name="Draw").last.click()
    page.wait_for_selector("#sketch-try canvas", timeout=STEP_TIMEOUT_MS)
    draw(page, "#sketch-try", strokes)
    page.click("#predict-drawing")
    label = page.locator("#prediction [data-testid=label-output-value]")
    expect(label).not_to_be_empty(timeout=STEP_TIMEOUT_MS)
    return label.inner_text().strip()


def download_zip(page, folder: Path) -> Path:
    """Make the take-away zip in the page and download it into ``folder``."""
    open_tab(page, "Take away")
    page.click("#make-zip")
    link = page.locator("#zip a[download], #zip a").first
    link.wait_for(timeout=TRAIN_TIMEOUT_MS)  # the ONNX export and its check take seconds
    with page.expect_download(timeout=STEP_TIMEOUT_MS) as download:
        link.click()
    path = folder / download.value.suggested_filename
    download.value.save_as(path)
    return path


def screenshot(page, path: Path) -> None:
    """The page from its top, once every thumbnail and figure on it has loaded."""
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_function("[...document.images].every(img => img.complete)", timeout=STEP_TIMEOUT_MS)
    page.screenshot(path=str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the imagenette-2k folder (train/, val/)")
    parser.add_argument("--out", type=Path, default=Path("docs/images"), help="folder for the three PNGs")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work, sync_playwright() as pw:
        work = Path(work)
        studio = start_cnnkit_server("studio", [str(work / "project")], work / "studio.log")
        try:
            browser = pw.chromium.launch_persistent_context(
                str(work / "profile"), executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS,
                viewport=VIEWPORT,
            )  # fmt: skip
            page = browser.new_page()
            page.goto(studio.url)
            for name in CLASSES:
                add_class(page, name, sorted((args.data / "train" / name).glob("*.JPEG"))[:PHOTOS])
            screenshot(page, args.out / "studio-collect.png")
            accuracy = train(page)
            open_tab(page, "Train")
            screenshot(page, args.out / "studio-train.png")
            photo = sorted((args.data / "val" / CLASSES[2]).glob("*.JPEG"))[0]
            label = try_photo(page, photo)
            screenshot(page, args.out / "studio-try.png")
            print(f"validation accuracy {accuracy:.2f} %; {photo.name} ({CLASSES[2]}) -> {label}")
            browser.close()
        finally:
            studio.stop()


if __name__ == "__main__":
    main()

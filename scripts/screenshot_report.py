"""Screenshot a cnnkit ``report.html`` in headless Chromium (Debian's ``chromium``).

Usage::

    python scripts/screenshot_report.py runs/NAME/report/report.html docs/report-mnist.png
    python scripts/screenshot_report.py label-issues/DATA/label_issues.html docs/images/label-issues.jpg 1600

A ``.jpg`` target is written as JPEG (a page of photo thumbnails is several MB as PNG); a
third argument keeps only the top that many pixels of the page.

Also imported by the report test, which checks in a real browser that every image of
the report loads. Needs ``playwright`` (Python package only: the browser is the system's).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run",
]  # fmt: skip


def chromium_path() -> str | None:
    """The system Chromium, if installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def open_report(html: Path, screenshot: Path | None = None, width: int = 1200, max_height: int | None = None) -> dict:
    """Load ``html`` offline in headless Chromium; return what the page shows.

    Returns:
        ``{"images": [(alt, natural width)], "headings": [...], "title": ...}``; with
        ``screenshot``, also writes a full-page PNG there.
    """
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            profile, executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": width, "height": 900}, offline=True,
        )  # fmt: skip
        page = browser.new_page()
        page.goto(Path(html).resolve().as_uri())
        page.wait_for_load_state("load")
        images = page.eval_on_selector_all("img", "els => els.map(e => [e.alt, e.complete ? e.naturalWidth : 0])")
        headings = page.eval_on_selector_all("h2", "els => els.map(e => e.textContent)")
        title = page.title()
        if screenshot is not None:
            clip = {"x": 0, "y": 0, "width": width, "height": max_height} if max_height else None
            page.screenshot(path=str(screenshot), full_page=True, clip=clip)
        browser.close()
    return {"images": [tuple(i) for i in images], "headings": headings, "title": title}


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    shown = open_report(Path(sys.argv[1]), Path(sys.argv[2]), max_height=int(sys.argv[3]) if sys.argv[3:] else None)
    broken = [alt for alt, width in shown["images"] if not width]
    print(f"{len(shown['images'])} images, {len(broken)} broken; sections: {', '.join(shown['headings'])}")
    sys.exit(1 if broken else 0)

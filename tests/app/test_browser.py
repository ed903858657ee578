"""The structured tab in a real browser: Debian's chromium driven by Playwright runs it on the embedded default
model, waits for the four images (stock, structured, Attend-and-Excite, SynGen) and checks every heat map. With
ATTNCTL_UPDATE_SCREENSHOT=1 it also saves the page as docs/images/ui-structured.png (the README's screenshot);
otherwise the screenshot stays in tmp_path, so a test run never changes the working tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags chromium's own connections are refused on a closed network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "ui-structured.png"
PROMPT = "a red circle and a blue square"
TOKENS = ["a", "red", "circle", "and", "a (2)", "blue", "square"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"Debian's chromium is not installed at {CHROMIUM} "
        "(`make browser-deps` or `apt-get install chromium` installs it)",
    ),
]


def _wait_until_decoded(page, count: int) -> None:
    """Wait (bounded) until the tab shows ``count`` result and heat-map images, each decoded (images decode
    asynchronously after they are attached)."""
    page.wait_for_function(
        "([selector, count]) => { const images = [...document.querySelectorAll(selector)];"
        " return images.length === count && images.every(i => i.complete && i.naturalWidth > 0); }",
        arg=["#structured-tab .result img, #structured-tab .heatmaps img", count],
        timeout=30_000,
    )


def test_structured_tab_generates_and_shows_heat_maps(default_model_app, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(default_model_app.local_url)
            tab = page.locator("#structured-tab")
            tab.get_by_label("Prompt", exact=True).fill(PROMPT)
            steps = tab.get_by_label("number input for Steps")
            steps.fill("20")
            steps.press("Enter")
            tab.get_by_role("button", name="Generate", exact=True).click()

            # stock and structured first, then the binding methods (Attend-and-Excite, SynGen): four images,
            # each with its gallery of per-token maps
            results, heatmaps = tab.locator(".result img"), tab.locator(".heatmaps")
            expect(results).to_have_count(4, timeout=180_000)
            expect(heatmaps.locator("img")).to_have_count(4 * len(TOKENS), timeout=30_000)
            for gallery in range(4):
                for token in TOKENS:
                    expect(heatmaps.nth(gallery).get_by_text(token, exact=True)).to_be_visible()
            expect(tab.get_by_label("Phrases")).to_have_value("a red circle\na blue square")
            _wait_until_decoded(page, 4 + 4 * len(TOKENS))
            rendered = tab.locator(".result img, .heatmaps img").evaluate_all(
                "images => images.map(image => image.complete && image.naturalWidth > 0)"
            )
            assert rendered == [True] * (4 + 4 * len(TOKENS))

            update = os.environ.get("ATTNCTL_UPDATE_SCREENSHOT") == "1"
            screenshot = SCREENSHOT if update else tmp_path / SCREENSHOT.name
            page.screenshot(path=str(screenshot), full_page=True)
            assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        finally:
            browser.close()

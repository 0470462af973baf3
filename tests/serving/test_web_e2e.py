"""End to end: the browser play page (serving/web/) in headless Chromium against the live serving app.

The ``live_server`` fixture (conftest.py) serves the real app on a tiny random-weights model; the page
creates a session, streams frames over the play socket, steers with W and sends an instruction.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium browser at {CHROMIUM}"),
]

WAIT_MS = 30_000  # a block takes ~0.5–2 s on CPU; several blocks fit in this with room to spare
INSTRUCTION = "open the wooden door"


@pytest.fixture
def page(live_server: Any) -> Iterator[Any]:
    """A fresh page on the app's root, failing the test on any uncaught JavaScript error."""
    errors: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(WAIT_MS)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(live_server.url)
            yield page
        finally:
            browser.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def state(page: Any) -> dict[str, Any]:
    return page.evaluate("() => structuredClone(window.worldloop)")


def wait_for(page: Any, condition: str) -> dict[str, Any]:
    """Waits until ``condition`` (JS, over ``s = window.worldloop``) holds; returns the state then."""
    page.wait_for_function(f"() => {{ const s = window.worldloop; return {condition}; }}", timeout=WAIT_MS)
    return state(page)


def canvas(page: Any) -> tuple[int | None, str]:
    """The frame index the canvas claims (``data-frame-index``) and its pixels, read at one instant."""
    index, pixels = page.evaluate(
        "() => { const c = document.getElementById('screen'); return [c.dataset.frameIndex, c.toDataURL()]; }"
    )
    return (None if index is None else int(index)), pixels


def test_play_page_streams_steers_and_instructs(page: Any) -> None:
    expect = sync_api.expect
    expect(page.get_by_label("Scene prompt")).to_have_value("a stone courtyard with a wooden door")
    page.get_by_role("button", name="Start session").click()

    # Two generated blocks of frames, drawn at the served resolution.
    before = wait_for(
        page,
        "s.blocks >= 2 && s.framesReceived >= 2 * s.session.frames_per_block && s.lastFrameIndex > 0",
    )
    assert before["status"] == "playing", before["statusText"]
    session = before["session"]
    screen = page.locator("#screen")
    assert (screen.get_attribute("width"), screen.get_attribute("height")) == (
        str(session["width"]),
        str(session["height"]),
    )
    shown, pixels = canvas(page)
    assert shown is not None and shown >= before["lastFrameIndex"]

    # Hold W on the focused view: the steps carry it, and a few more blocks play.
    page.locator("#stage").focus()
    page.keyboard.down("w")
    try:
        held = wait_for(page, "s.lastStep && s.lastStep.keys.includes('w')")
        expect(page.locator("#stat-keys")).to_have_text("w")
        # two blocks generated with W held, and playback past the snapshot
        after = wait_for(
            page, f"s.blocks >= {held['blocks'] + 2} && s.lastFrameIndex > {before['lastFrameIndex']}"
        )
    finally:
        page.keyboard.up("w")
    assert after["framesReceived"] > before["framesReceived"]
    assert after["lastFrameIndex"] > before["lastFrameIndex"]
    shown_after, pixels_after = canvas(page)
    assert shown_after is not None and shown_after > shown
    assert pixels_after != pixels, "the canvas did not change while frames streamed"

    # An instruction rides on the next step and triggers exactly one recache.
    page.get_by_role("textbox", name="Instruction").fill(INSTRUCTION)
    page.get_by_role("button", name="Send instruction").click()
    instructed = wait_for(page, "s.recaches >= 1")
    assert instructed["recaches"] == 1
    assert instructed["instruction"] == INSTRUCTION
    expect(page.locator("#stat-recaches")).to_have_text("1")
    expect(page.locator("#stat-instruction")).to_have_text(INSTRUCTION)
    assert instructed["status"] == "playing", instructed["statusText"]

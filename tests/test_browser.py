"""End to end in a real browser: Debian's headless Chromium driven by Playwright against the launched app."""

import random
import shutil
from pathlib import Path

import pytest
from apphelpers import free_port, make_service

from poclip.settings import REPO_DIR
from poclip.world import synth

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO_DIR / "test-artifacts"

pytestmark = pytest.mark.slow


def test_upload_write_vote_and_the_counter_rises(tmp_path, bundled):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed (apt-get install chromium); .ci/run installs it")
    from playwright.sync_api import expect, sync_playwright

    from poclip.app.ui import build_demo, launch_kwargs

    service = make_service(tmp_path / "data", bundled)
    demo = build_demo(service)
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                        **launch_kwargs())
    picture = tmp_path / "star.png"
    synth.draw_scene(synth.sample_scene(random.Random(4), shape="star"), 224).save(picture)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM, headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                      "--disable-sync", "--no-first-run", "--disable-quic"],
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
            expect(page.get_by_text("Live model:")).to_be_visible(timeout=30_000)
            page.locator("input[type=file]").first.set_input_files(str(picture))
            page.get_by_label("Text to write on the image").fill("circle")
            page.locator("#predict-btn").click()
            expect(page.locator("#left-answer")).to_contain_text("circle", timeout=60_000)
            page.locator("#vote-left").click()
            expect(page.locator("#vote-counter")).to_contain_text("You have labelled 1 items", timeout=60_000)
            page.get_by_label("Text to write on the image").fill("heart")
            page.locator("#predict-btn").click()
            expect(page.locator("#left-answer")).to_contain_text("heart", timeout=60_000)
            page.locator("#vote-right").click()
            expect(page.locator("#vote-counter")).to_contain_text("You have labelled 2 items", timeout=60_000)
            page.screenshot(path=str(ARTIFACTS / "compare_vote.png"), full_page=True)

            # Annotate with the keyboard: number keys answer, U undoes.
            page.get_by_role("tab", name="Annotate").click()
            page.locator("#next-btn").click()
            expect(page.locator("#label-btn-1")).to_be_visible(timeout=60_000)
            # The two Compare votes count too: the browser keeps the same anonymous annotator id.
            expect(page.locator("#item-counter")).to_contain_text("2 labelled by you", timeout=60_000)
            page.locator("body").click(position={"x": 5, "y": 5})
            page.keyboard.press("3")
            expect(page.locator("#item-counter")).to_contain_text("3 labelled by you", timeout=60_000)
            page.keyboard.press("5")
            expect(page.locator("#item-counter")).to_contain_text("4 labelled by you", timeout=60_000)
            page.keyboard.press("u")
            expect(page.locator("#item-counter")).to_contain_text("3 labelled by you", timeout=60_000)
            expect(page.get_by_text("Undone: answer this one again.")).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "annotate_keyboard.png"), full_page=True)
            browser.close()
    finally:
        demo.close()
        service.close()
    assert service.repo.stats().judgments >= 2 + service.repo.stats().gold_items

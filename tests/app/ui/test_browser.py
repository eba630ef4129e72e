"""End to end in a real browser: Debian's headless Chromium driven by Playwright against the launched app.

One app serves the module; each test opens its own page (so its own session and anonymous id). Screenshots
at 1280x900 (desktop) and 390x844 (phone) are kept in ``test-artifacts/``.

Waits are on conditions, never on fixed sleeps, with generous timeouts: on a loaded machine a response can
take seconds. Changing a control fires change events that mark the answers stale; they are sent at once but
may be answered after a later Predict, so before pressing Predict the tests wait until no such request is in
flight (:func:`settle`).
"""

import random
import time

import pytest
from apphelpers import ADMIN_TOKEN, ONE_PERSON, footprint, free_port, make_service, make_trainer, truth_by_attack

from poclip.settings import REPO_DIR
from poclip.world import synth

ARTIFACTS = REPO_DIR / "test-artifacts"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
TIMEOUT = 60_000

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def app(tmp_path_factory, bundled, chromium):
    from playwright.sync_api import sync_playwright

    from poclip.app.ui import build_demo, launch_kwargs

    data = tmp_path_factory.mktemp("browser")
    # The Train tab's run learns from one simulated person's labels (test_the_training_chart_...).
    service = make_service(data / "data", bundled, seed_items=40, **ONE_PERSON)
    trainer = make_trainer(service)  # the Train tab's retrain runs in the trainer thread beside the app
    trainer.start()
    demo = build_demo(service)
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                        **launch_kwargs())
    star = data / "star.png"
    synth.draw_scene(synth.sample_scene(random.Random(4), shape="star"), 224).save(star)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"],
        )
        try:
            yield {"service": service, "url": f"http://127.0.0.1:{port}/", "browser": browser, "star": star,
                   "dir": data}
        finally:
            browser.close()
            demo.close()
            trainer.stop()
            service.close()


def open_page(app, viewport=DESKTOP):
    """A new page, loaded, with its server-signed anonymous id stored (votes before that would be refused)."""
    from playwright.sync_api import expect

    page = app["browser"].new_page(viewport=viewport)
    in_flight = set()
    page.on("request", lambda r: in_flight.add(r) if r.method == "POST" and "/gradio_api/" in r.url else None)
    page.on("requestfinished", lambda r: in_flight.discard(r))
    page.on("requestfailed", lambda r: in_flight.discard(r))
    page.poclip_in_flight = in_flight
    page.goto(app["url"], wait_until="domcontentloaded")
    expect(page.get_by_text("Live model:")).to_be_visible(timeout=TIMEOUT)
    page.wait_for_function("() => (localStorage.getItem('poclip-annotator') || '').length > 8", timeout=TIMEOUT)
    return page


def settle(page, quiet_s=0.6, timeout_s=TIMEOUT / 1000):
    """Wait until the page has had no Gradio request in flight for ``quiet_s`` (the change events a control
    fired have been answered), at most ``timeout_s``: the page's 3 s timers also post, so on a machine so
    loaded that they never pause, go on after ``timeout_s`` and let the test's own expectations judge."""
    deadline = time.monotonic() + timeout_s
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        page.wait_for_timeout(100)  # lets Playwright deliver the request events
        if page.poclip_in_flight:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return


def upload_and_predict(page, picture, word, *, share=True):
    from playwright.sync_api import expect

    if share:
        page.locator("#share input[type=checkbox]").check()
    page.locator("#upload input[type=file]").set_input_files(str(picture))
    expect(page.locator("#preview img")).to_be_visible(timeout=TIMEOUT)
    page.locator("#attack-text textarea").fill(word)
    settle(page)
    page.locator("#predict-btn").click()
    expect(page.locator("#vote-left")).to_be_enabled(timeout=TIMEOUT)


def choose(page, dropdown_id, option):
    page.locator(f"#{dropdown_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def test_upload_write_vote_and_the_counter_rises(app):
    """Upload, write a word, Predict, vote twice; the Annotate tab counts the same person's labels and the
    keyboard answers and undoes. Desktop screenshots of both tabs."""
    from playwright.sync_api import expect

    page = open_page(app)
    upload_and_predict(page, app["star"], "circle")
    expect(page.locator("#left-answer")).to_contain_text("circle", timeout=TIMEOUT)
    page.locator("#vote-left").click()
    expect(page.locator("#vote-counter")).to_contain_text("You have given 1 label.", timeout=TIMEOUT)
    expect(page.locator("#vote-left")).to_be_disabled(timeout=TIMEOUT)  # the comparison on screen was judged
    page.locator("#attack-text textarea").fill("heart")
    settle(page)
    page.locator("#predict-btn").click()
    expect(page.locator("#left-answer")).to_contain_text("heart", timeout=TIMEOUT)
    page.locator("#vote-right").click()
    expect(page.locator("#vote-counter")).to_contain_text("You have given 2 labels.", timeout=TIMEOUT)
    page.screenshot(path=str(ARTIFACTS / "compare-1280x900.png"))
    expect(page.get_by_text("Runs", exact=True)).to_have_count(0)  # Gradio's browser run history is off

    page.get_by_role("tab", name="Annotate").click()
    page.locator("#next-btn").click()
    expect(page.locator("#label-btn-1")).to_be_visible(timeout=TIMEOUT)
    expect(page.locator("#item-counter")).to_contain_text("2 labels from you", timeout=TIMEOUT)
    page.locator("body").click(position={"x": 5, "y": 5})
    page.keyboard.press("3")
    expect(page.locator("#item-counter")).to_contain_text("3 labels from you", timeout=TIMEOUT)
    page.keyboard.press("u")
    expect(page.locator("#item-counter")).to_contain_text("2 labels from you", timeout=TIMEOUT)
    expect(page.get_by_text("Undone: answer this one again.")).to_be_visible(timeout=TIMEOUT)
    page.screenshot(path=str(ARTIFACTS / "annotate-1280x900.png"))
    page.close()


def test_neither_without_choosing_a_label_is_refused_and_nothing_is_stored(app):
    from playwright.sync_api import expect

    page = open_page(app)
    upload_and_predict(page, app["star"], "square")
    before = footprint(app["service"])
    page.locator("#vote-neither").click()
    expect(page.get_by_text("Neither side was right? Pick the right label from the list first.")).to_be_visible(
        timeout=TIMEOUT)
    expect(page.locator("#vote-message")).not_to_contain_text("Stored", timeout=TIMEOUT)
    assert footprint(app["service"]) == before
    page.close()


def test_changing_the_word_after_predict_disables_voting_until_predict(app):
    from playwright.sync_api import expect

    page = open_page(app)
    upload_and_predict(page, app["star"], "circle")
    page.locator("#attack-text textarea").fill("heart")
    for verdict in ("left", "right", "both", "neither"):
        expect(page.locator(f"#vote-{verdict}")).to_be_disabled(timeout=TIMEOUT)
    expect(page.locator("#stale-note")).to_contain_text("press Predict", timeout=TIMEOUT)
    settle(page)
    page.locator("#predict-btn").click()
    expect(page.locator("#vote-left")).to_be_enabled(timeout=TIMEOUT)
    page.locator("#random-btn").click()  # a random attack (new word, colours, place) is a change too
    expect(page.locator("#vote-left")).to_be_disabled(timeout=TIMEOUT)
    settle(page)  # the random style's change events are answered before typing again
    page.locator("#attack-text textarea").fill("heart")
    settle(page)
    page.locator("#predict-btn").click()
    expect(page.locator("#vote-left")).to_be_enabled(timeout=TIMEOUT)
    expect(page.locator("#stale-note")).not_to_contain_text("press Predict", timeout=TIMEOUT)
    page.close()


def test_random_attack_after_predict_marks_the_answers_out_of_date(app):
    """Random attack changes the controls as typing does: the note shows and voting stops until Predict."""
    from playwright.sync_api import expect

    page = open_page(app)
    upload_and_predict(page, app["star"], "circle")
    settle(page)
    page.locator("#random-btn").click()
    expect(page.locator("#stale-note")).to_contain_text("press Predict", timeout=TIMEOUT)
    for verdict in ("left", "right", "both", "neither"):
        expect(page.locator(f"#vote-{verdict}")).to_be_disabled(timeout=TIMEOUT)
    settle(page)  # every change event the new values fired has been answered: the note is still there
    expect(page.locator("#stale-note")).to_contain_text("press Predict", timeout=TIMEOUT)
    expect(page.locator("#vote-left")).to_be_disabled(timeout=TIMEOUT)
    page.close()


def test_at_1280x900_predict_and_the_vote_buttons_fit_on_one_screen(app):
    """With the Compare tab scrolled to its top, Predict and every vote button are on screen at once, none cut
    off at the side, and the page never scrolls sideways. Screenshot: compare-layout-1280x900.png."""
    page = open_page(app)
    upload_and_predict(page, app["star"], "circle")
    page.evaluate("document.getElementById('compare-tab').scrollIntoView({block: 'start'})")
    page.wait_for_timeout(300)
    page.screenshot(path=str(ARTIFACTS / "compare-layout-1280x900.png"))
    for element in ("predict-btn", "vote-left", "vote-right", "vote-both", "vote-neither"):
        box = page.locator(f"#{element}").bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= DESKTOP["width"], (element, box)
        assert box["y"] >= 0 and box["y"] + box["height"] <= DESKTOP["height"], (element, box)
    assert page.evaluate("document.documentElement.scrollWidth") <= DESKTOP["width"]
    page.close()


def test_custom_labels_and_neither_store_the_chosen_custom_label(app):
    from playwright.sync_api import expect

    from poclip.world.attacks import TextAttack
    from poclip.world.images import open_image

    service = app["service"]
    labels = ["starfish", "doughnut", "kite"]
    # Which label the models answer is deterministic; pick one they did not answer.
    answered = service.comparisons.compare(open_image(app["star"]), labels, TextAttack("kite")).base.label
    truth = next(label for label in labels if label != answered)
    page = open_page(app)
    choose(page, "preset", "Custom (type below)")
    page.locator("#custom-labels textarea").fill(", ".join(labels))
    upload_and_predict(page, app["star"], "kite")
    choose(page, "neither-label", truth)
    page.locator("#vote-neither").click()
    expect(page.locator("#vote-message")).to_contain_text(f"{truth} is right", timeout=TIMEOUT)
    latest = service.repo.recent_judgments(1)[0]
    assert latest.chosen == truth and latest.rejected == answered
    assert service.repo.get_sample(latest.sample_id).labels == tuple(labels)
    page.close()


def test_a_file_that_is_not_a_picture_gets_the_apps_message(app):
    from playwright.sync_api import expect

    page = open_page(app)
    fake = app["dir"] / "table.png"
    fake.write_text("shape,colour\nstar,red\n")
    before = footprint(app["service"])
    page.locator("#upload input[type=file]").set_input_files(str(fake))
    expect(page.locator("#upload-note")).to_contain_text(
        "This file cannot be used. This file contains text, not a picture, whatever its name says.", timeout=TIMEOUT)
    expect(page.locator("#preview")).not_to_contain_text("Error", timeout=TIMEOUT)  # no bare red "Error"
    page.screenshot(path=str(ARTIFACTS / "bad-upload-1280x900.png"))
    page.locator("#predict-btn").click()
    expect(page.get_by_text("Upload a picture, pick an example or draw a synthetic object first.")).to_be_visible(
        timeout=TIMEOUT)
    assert footprint(app["service"]) == before
    page.close()


def test_the_training_chart_shows_a_legend_and_a_numeric_step_axis(app):
    """Sign in once, retrain from the Train tab, watch the chart; the Data tab's admin tables need no second
    sign-in, and the public sees no names."""
    from playwright.sync_api import expect

    from poclip.world.attacks import TextAttack

    service = app["service"]
    truth = truth_by_attack(40)
    for _ in range(30):  # enough pairs for a run: honest answers on the seeded items (uploads: the first label)
        item = service.annotation.next_item("trainer-feed")
        key = TextAttack.from_dict(item.sample.attack).to_json() if item.sample.attack else None
        service.annotation.answer_item("trainer-feed", item.sample.id, truth.get(key, item.labels[0]))
    page = open_page(app)
    page.get_by_role("tab", name="Data").click()
    expect(page.locator("#data-summary")).to_contain_text("admins only", timeout=TIMEOUT)
    expect(page.locator("#people")).to_be_hidden()
    page.get_by_text("Admin sign-in").click()
    page.locator("#admin-token input").fill(ADMIN_TOKEN)
    page.locator("#sign-in-btn").click()
    expect(page.locator("#sign-in-message")).to_contain_text("Signed in", timeout=TIMEOUT)
    expect(page.locator("#people")).to_contain_text("trainer-feed", timeout=TIMEOUT)
    page.get_by_role("tab", name="Train").click()
    page.locator("#retrain-btn").click()
    chart = page.locator("#train-chart")
    expect(chart).to_be_visible(timeout=120_000)
    for legend in ("loss", "reward margin", "KL on clean pictures", "reward accuracy"):
        expect(chart.get_by_text(legend, exact=True)).to_be_visible(timeout=TIMEOUT)
    expect(chart.get_by_text("optimizer step", exact=True)).to_be_visible(timeout=TIMEOUT)

    def step_ticks():
        return sorted(int(t) for t in chart.locator("text").all_text_contents() if t.strip().isdigit())

    # The chart is redrawn every 3 s as the run goes on; the first drawing may show only the first steps.
    deadline = time.monotonic() + 120
    while not ((ticks := step_ticks()) and len(ticks) >= 3 and ticks[-1] >= 10) and time.monotonic() < deadline:
        page.wait_for_timeout(500)
    assert len(ticks) >= 3 and ticks[-1] >= 10, ticks
    expect(page.locator("#train-progress")).to_contain_text("step", timeout=120_000)
    expect(page.locator("#train-progress")).not_to_contain_text("epoch")
    chart.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "train-1280x900.png"))
    page.close()


def test_on_a_phone_the_picture_and_every_label_button_fit_without_scrolling(app):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect

    page = open_page(app, PHONE)
    upload_and_predict(page, app["star"], "circle", share=False)
    page.locator("#left-answer").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "compare-390x844.png"))
    page.evaluate("window.scrollTo(0, 0)")
    page.get_by_role("tab", name="Annotate").click()
    page.locator("#handle input").fill("phone-user")
    page.locator("#next-btn").click()
    expect(page.locator("#label-btn-1")).to_be_visible(timeout=TIMEOUT)
    for _ in range(10):  # the worst case: an item with ten labels (uploads in other tests have fewer)
        if page.locator("#label-btn-10").is_visible():
            break
        shown = page.locator("#item-image img").get_attribute("src")
        page.locator("#skip-btn").click()
        try:  # the next item is on screen (skipping may, rarely, give the same item back: then skip again)
            page.wait_for_function(
                "([src]) => { const img = document.querySelector('#item-image img');"
                " const ten = document.querySelector('#label-btn-10');"
                " return (img && img.getAttribute('src') !== src) || (ten && ten.offsetParent !== null); }",
                arg=[shown], timeout=20_000)
        except PlaywrightTimeout:
            pass
    expect(page.locator("#label-btn-10")).to_be_visible(timeout=TIMEOUT)
    page.evaluate("document.getElementById('item-image').scrollIntoView({block: 'start'})")
    top = page.locator("#item-image").bounding_box()
    buttons = [page.locator(f"#label-btn-{k}").bounding_box() for k in range(1, 11)]
    bottom = max(b["y"] + b["height"] for b in buttons)
    assert top["y"] >= 0 and bottom <= PHONE["height"], (top, bottom)
    assert all(b["x"] >= 0 and b["x"] + b["width"] <= PHONE["width"] for b in buttons)
    page.screenshot(path=str(ARTIFACTS / "annotate-390x844.png"))
    page.close()

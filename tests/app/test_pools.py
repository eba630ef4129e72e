"""Pools every visitor shares, each client (network address) holding a bounded share: kept comparisons, the decode
budget, the prediction rate; and uploads that lie about their size."""

import io
import random
import threading
import time

import pytest
from apphelpers import make_service
from PIL import Image
from upload_corpus import lying_png

from poclip.app.comparisons import Answer, Comparison, ComparisonExpired, ComparisonStore
from poclip.app.limits import ClientLimited, Rate, RateLimiter, RequestOrigin, request_origin
from poclip.world import images, synth
from poclip.world.attacks import TextAttack
from poclip.world.decode_budget import ClientBusy, DecodeBudget

FLOODER, VICTIM = RequestOrigin("203.0.113.66"), RequestOrigin("198.51.100.7")


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


# ----- kept comparisons ------------------------------------------------------------------------------------------


def comparison(i: int, side: int = 32) -> Comparison:
    pic = Image.new("RGB", (side, side))
    answer = Answer("base", {"a": 0.6, "b": 0.4})
    return Comparison(f"c{i}", pic, pic, None, ("a", "b"), "{}", answer, answer, "base", "base model", 1.0)


def test_one_client_holds_at_most_its_share_of_the_records_and_evicts_its_own_first():
    store = ComparisonStore(max_records=16, max_bytes=10**9, client_share=0.25)
    store.put(comparison(0), "198.51.100.7")
    for i in range(1, 200):  # a flood from one address
        store.put(comparison(i), "203.0.113.66")
    assert store.held_by("203.0.113.66") == 4 and len(store) == 5
    assert store.get("c0").id == "c0"  # the victim's comparison is still there
    assert [store.get(f"c{i}").id for i in range(196, 200)] == ["c196", "c197", "c198", "c199"]  # the newest 4
    with pytest.raises(ComparisonExpired, match="press Predict again"):
        store.get("c195")


def test_the_byte_share_bounds_a_client_of_large_pictures():
    big = comparison(0, side=512)
    store = ComparisonStore(max_records=100, max_bytes=8 * big.n_bytes, client_share=0.25)
    store.put(comparison(1000), "198.51.100.7")
    for i in range(50):
        store.put(comparison(i, side=512), "203.0.113.66")
    assert store.held_by("203.0.113.66") == 2 and store.n_bytes <= 2 * big.n_bytes + comparison(0).n_bytes
    assert store.get("c1000")


def test_a_full_pool_evicts_the_newcomers_own_then_the_heaviest_clients_records():
    store = ComparisonStore(max_records=8, max_bytes=10**9, client_share=0.5)
    for i in range(4):
        store.put(comparison(i), "a")  # a holds its whole share, 4
    for i in range(4, 7):
        store.put(comparison(i), "b")
    store.put(comparison(7), "c")  # the pool is full: 8
    store.put(comparison(8), "c")  # c's own oldest goes, not anyone else's
    assert (store.held_by("a"), store.held_by("b"), store.held_by("c")) == (4, 3, 1)
    store.put(comparison(9), "d")  # d holds nothing else: the heaviest, a, gives up its least recently used
    assert (store.held_by("a"), store.held_by("d")) == (3, 1)
    with pytest.raises(ComparisonExpired):
        store.get("c0")
    # Calls from Python itself (no address) have no share limit.
    unshared = ComparisonStore(max_records=8, max_bytes=10**9, client_share=0.125)
    for i in range(8):
        unshared.put(comparison(i))
    assert unshared.held_by(None) == 8


def test_a_prediction_flood_from_one_address_leaves_another_visitors_vote_standing(tmp_path, bundled):
    svc = make_service(tmp_path, bundled, client_predictions="off")
    try:
        # The service's store, with the default share of an eighth, made small so that a short flood fills it.
        svc.comparisons.records = ComparisonStore(max_records=16, client_share=svc.settings.client_record_share)
        picture = synth.draw_scene(synth.sample_scene(random.Random(4), shape="star"), 224)
        with request_origin(VICTIM):
            mine = svc.comparisons.predict(picture, list(synth.SHAPES), TextAttack("kite", size=0.15),
                                           source="synthetic")
        with request_origin(FLOODER):
            for i in range(40):
                svc.comparisons.predict(picture, list(synth.SHAPES), TextAttack(f"w{i}", size=0.15),
                                        source="synthetic")
        assert svc.comparisons.records.held_by(FLOODER.host) == 2  # an eighth of 16
        with request_origin(VICTIM):
            stored = svc.comparisons.vote(svc.identity.issue(), mine.id, "left")
        assert stored["comparison_id"] == mine.id and stored["judgment_id"]
    finally:
        svc.close()


def test_a_kept_comparison_holds_the_picture_but_not_the_copy_with_the_text(tmp_path, bundled):
    svc = make_service(tmp_path, bundled)
    try:
        picture = synth.draw_scene(synth.sample_scene(random.Random(6)), 224)
        shown = svc.comparisons.predict(picture, list(synth.SHAPES), TextAttack("kite"), source="synthetic")
        assert shown.seen is not None and shown.seen.size == picture.size  # the page shows what the models saw
        kept = svc.comparisons.comparison(shown.id)
        assert kept.seen is None and kept.n_bytes == 4 * 224 * 224 == svc.comparisons.records.n_bytes
        assert svc.status()["comparisons"] == {"kept": 1, "mb": 0.2}
        stored = svc.comparisons.vote(svc.identity.issue(), shown.id, "left")  # the vote needs no more
        assert stored["comparison_id"] == shown.id
    finally:
        svc.close()


# ----- the prediction rate ---------------------------------------------------------------------------------------


def test_the_prediction_rate_is_per_address_and_refused_predictions_keep_nothing(tmp_path, bundled):
    from poclip.app.ui.api import PublicApi

    svc = make_service(tmp_path, bundled, client_predictions="3/60")
    try:
        picture = synth.draw_scene(synth.sample_scene(random.Random(5)), 224)
        with request_origin(FLOODER):
            for i in range(3):
                svc.comparisons.predict(picture, list(synth.SHAPES), TextAttack(f"w{i}"), source="synthetic")
            kept = len(svc.comparisons.records)
            with pytest.raises(ClientLimited, match=r"Too many predictions from your network address \(at most 3 "
                                                    r"per 60 s\); try again in \d+ s\."):
                svc.comparisons.predict(picture, list(synth.SHAPES), TextAttack("w3"), source="synthetic")
            assert len(svc.comparisons.records) == kept
            # Through /predict the address is refused before its upload is read: this path names no file, and
            # the refusal is about the rate, not the missing file.
            with pytest.raises(ClientLimited, match="Too many predictions"):
                PublicApi(svc).predict({"path": str(tmp_path / "never-read.png")})
        with request_origin(VICTIM):
            assert svc.comparisons.predict(picture, list(synth.SHAPES), source="synthetic").id
        assert svc.comparisons.predict(picture, list(synth.SHAPES), source="synthetic").id  # Python: no limit
    finally:
        svc.close()


def test_the_default_prediction_rate_never_stops_one_press_a_second():
    from poclip.settings import Settings

    clock = [0.0]
    limiter = RateLimiter(Rate.parse(Settings.client_predictions, "x"), clock=lambda: clock[0])
    for _ in range(600):  # ten minutes of one Predict a second
        assert limiter.hit("198.51.100.7") == 0.0
        clock[0] += 1.0
    assert sum(limiter.hit("203.0.113.66") == 0.0 for _ in range(100)) == 60  # a burst of 60, then refused


# ----- the decode budget -----------------------------------------------------------------------------------------


def test_a_decode_flood_from_one_address_is_told_to_wait_while_another_visitors_uploads_open():
    budget = DecodeBudget(megapixels=2, wait_s=60, client_share=0.5)  # an address may hold 1 megapixel
    flood, upload = png(900, 900), png(800, 800)  # 0.81 and 0.64 megapixels decoded
    refused, errors, opened = [], [], []
    stop = threading.Event()

    def flooder():
        while not stop.is_set():
            try:
                images.open_image(flood, budget=budget, client="203.0.113.66")
            except ClientBusy as exc:
                refused.append(str(exc))
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

    threads = [threading.Thread(target=flooder) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        for _ in range(4):
            opened.append(images.open_image(upload, budget=budget, client="198.51.100.7").size)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == [] and opened == [(800, 800)] * 4  # every one of the other visitor's uploads opened
    assert refused and set(refused) == {
        "Your network address is already opening 1 megapixels of pictures (at most 1 at once per address, so "
        "that other visitors' uploads are not held up); wait until they are open, then try again."}
    assert budget.peak <= 810_000 + 640_000  # the flooder never held two pictures at once
    assert budget.in_flight == 0 and budget.held_by("203.0.113.66") == 0


def test_waiting_uploads_are_served_lightest_address_first():
    budget = DecodeBudget(megapixels=1, wait_s=60, client_share=0.7)  # 0.7 megapixels an address
    order, done = [], threading.Event()

    def upload(client):
        with budget.reserve(400_000, client):
            order.append(client)
            done.wait(60)

    heavy_address, light_address = "203.0.113.66", "198.51.100.7"
    with budget.reserve(300_000, heavy_address):
        with budget.reserve(700_000, "192.0.2.5"):  # the budget is full
            heavy = threading.Thread(target=upload, args=(heavy_address,))
            heavy.start()
            while budget.waiting < 1:
                time.sleep(0.001)
            light = threading.Thread(target=upload, args=(light_address,))  # arrives later, decodes nothing
            light.start()
            while budget.waiting < 2:
                time.sleep(0.001)
        # Room for one of the two now: the address decoding nothing goes first, though it came second.
        while not order:
            time.sleep(0.001)
        assert order == [light_address] and budget.waiting == 1
        done.set()
        light.join(timeout=60)
        heavy.join(timeout=60)
    assert order == [light_address, heavy_address] and budget.in_flight == 0


def test_a_client_holding_nothing_may_open_a_picture_larger_than_its_share():
    budget = DecodeBudget(megapixels=20, wait_s=0, client_share=0.25)  # 5 megapixels a client
    assert images.open_image(png(3000, 3000), budget=budget, client="198.51.100.7").size == (1024, 1024)
    assert budget.peak == 9_000_000


def test_a_busy_address_is_told_its_file_is_fine():
    from poclip.app.ui.compare import upload_refusal

    message, note = upload_refusal(ClientBusy("Your network address is already opening 9 megapixels; wait."))
    assert note == f"**Not opened yet.** {message}"


# ----- uploads that lie about their size -------------------------------------------------------------------------


def test_a_tiny_png_declaring_36_megapixels_is_refused_before_anything_is_decoded():
    budget = DecodeBudget(megapixels=100, wait_s=0)
    data = lying_png(6000, 6000)
    assert len(data) < 200
    started = time.perf_counter()
    with pytest.raises(images.ImageError, match=r"The file says it holds a 6000x6000 picture \(36 megapixels\), "
                                                r"but 150 bytes cannot hold that many pixels"):
        images.open_image(data, budget=budget)
    assert time.perf_counter() - started < 0.5  # it took 2.7 s to decode all 36 megapixels of nothing
    assert budget.peak == 0  # nothing was reserved, so nothing was allocated
    # A PNG that really holds that many pixels, however uniform, is as small as deflate allows, and opens.
    honest = png(6000, 4000)
    assert len(honest) * images.DEFLATE_MAX_RATIO >= 6000 * 4000 * 3
    assert images.open_image(honest, budget=budget).size == (1024, 683)


def test_a_large_jpeg_is_decoded_at_a_reduced_scale():
    budget = DecodeBudget(megapixels=100, wait_s=0)
    out = io.BytesIO()
    Image.new("RGB", (6000, 4000), "green").save(out, format="JPEG")
    assert images.open_image(out.getvalue(), budget=budget).size == (1024, 683)
    assert budget.peak == 3000 * 2000  # half scale: still twice the 1024 px it is shrunk to


@pytest.mark.slow
def test_memory_returns_to_its_idle_level_after_an_upload_burst():
    import json
    import subprocess
    import sys

    from poclip.settings import REPO_DIR

    out = subprocess.run([sys.executable, "bench/uploads.py", "--uploads", "16", "--threads", "16"], cwd=REPO_DIR,
                         capture_output=True, text=True, check=True, timeout=600).stdout
    burst = json.loads(out)
    assert burst["peak_rss_mb"] > burst["idle_rss_mb"] + 100  # the burst did decode large pictures
    assert burst["rss_mb_over_idle_after_uploads"] <= 300, burst

"""Bounds across requests: decoded pixels in flight, labels and new annotators per client address, and what the
page's configuration gives away."""

import io
import json
import random
import threading
import urllib.request

import pytest
from apphelpers import ADMIN_TOKEN, footprint, free_port, make_service
from PIL import Image

from poclip.app.identity import server_secret
from poclip.app.limits import ClientLimits, Rate, RateLimiter, RequestOrigin, client_address, request_origin
from poclip.errors import UserError
from poclip.world import images, synth
from poclip.world.attacks import TextAttack
from poclip.world.decode_budget import DECODE_BUDGET, DecodeBudget, ServerBusy


def png(width: int, height: int) -> bytes:
    """A PNG that is small on disk and large decoded (one colour compresses to almost nothing)."""
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


# ----- decoded pixels in flight ---------------------------------------------------------------------------------


def test_concurrent_decodes_share_the_pixel_budget_and_it_returns_to_zero():
    budget = DecodeBudget(megapixels=20, wait_s=120)
    data = png(3000, 3000)  # 9 megapixels each: at most two decode at once
    results, errors = [], []

    def decode():
        try:
            results.append(images.open_image(data, budget=budget).size)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=decode) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and results == [(1024, 1024)] * 6
    assert 9_000_000 <= budget.peak <= 20_000_000  # never more than the budget decoded at once
    assert budget.in_flight == 0


def test_a_decode_waits_for_room_then_runs():
    budget = DecodeBudget(megapixels=10, wait_s=120)
    data = png(2000, 2000)  # 4 megapixels
    done = []
    with budget.reserve(8_000_000):  # others hold 8 of the 10
        waiting = threading.Thread(target=lambda: done.append(images.open_image(data, budget=budget).size))
        waiting.start()
        waiting.join(timeout=0.5)
        assert waiting.is_alive() and done == []  # queued, not decoding
    waiting.join()
    assert done == [(1024, 1024)] and budget.in_flight == 0


def test_a_decode_that_finds_no_room_in_time_is_refused_as_busy():
    budget = DecodeBudget(megapixels=10, wait_s=0.05)
    with budget.reserve(8_000_000):
        with pytest.raises(ServerBusy, match="busy .* try again in a few seconds"):
            images.open_image(png(2000, 2000), budget=budget)
        assert budget.in_flight == 8_000_000  # the refused request took nothing
    assert budget.in_flight == 0
    assert images.open_image(png(2000, 2000), budget=budget).size == (1024, 1024)  # room again


def test_the_budget_is_returned_when_decoding_fails(monkeypatch):
    budget = DecodeBudget(megapixels=10, wait_s=0)

    def broken(image, max_side=images.MAX_SIDE):
        raise MemoryError("out of memory while converting")

    monkeypatch.setattr(images, "normalize_image", broken)
    for _ in range(3):  # would be refused as busy on the second try if the first kept its share
        with pytest.raises(MemoryError):
            images.open_image(png(3000, 3000), budget=budget)
    assert budget.in_flight == 0


def test_a_picture_larger_than_the_whole_budget_runs_alone():
    budget = DecodeBudget(megapixels=1, wait_s=0)
    assert images.open_image(png(2000, 2000), budget=budget).size == (1024, 1024)
    assert budget.peak == 1_000_000 and budget.in_flight == 0


@pytest.fixture
def process_budget():
    """The process-wide budget, put back as it was after the test."""
    before = DECODE_BUDGET.capacity, DECODE_BUDGET.wait_s
    yield DECODE_BUDGET
    DECODE_BUDGET.configure(before[0] / 1e6, before[1])


def test_the_app_sets_the_process_budget_and_a_busy_upload_gets_a_clear_message(tmp_path, bundled, process_budget):
    import gradio as gr

    from poclip.app.ui.boundary import user_errors
    from poclip.app.ui.compare import upload_handler, upload_refusal

    svc = make_service(tmp_path / "data", bundled, decode_budget_mp=30, decode_wait_s=0.05)
    try:
        assert (process_budget.capacity, process_budget.wait_s) == (30_000_000, 0.05)
        path = tmp_path / "big.png"
        path.write_bytes(png(6000, 4000))  # 24 megapixels in a few kilobytes
        with process_budget.reserve(20_000_000):  # other uploads are being decoded
            with pytest.raises(gr.Error, match="The server is busy opening other large pictures"):
                user_errors(upload_handler)(str(path))
            # The Compare tab's note says the file is fine and can be sent again, not that it is unusable.
            with pytest.raises(ServerBusy) as busy:
                upload_handler(str(path))
            message, note = upload_refusal(busy.value)
            assert note.startswith("**Not opened yet.**") and "try again" in note and message in note
        assert user_errors(upload_handler)(str(path)).image.size == (1024, 683)
        broken = tmp_path / "broken.png"
        broken.write_bytes(b"not a picture")
        with pytest.raises(images.ImageError) as bad:
            upload_handler(str(broken))
        assert upload_refusal(bad.value)[1].startswith("**This file cannot be used.**")
        assert process_budget.in_flight == 0
    finally:
        svc.close()


# ----- per-client limits: the pieces -----------------------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_the_rate_limiter_allows_a_burst_then_one_per_interval():
    clock = FakeClock()
    limiter = RateLimiter(Rate(3, 60), clock=clock)
    assert [limiter.hit("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.hit("a") == pytest.approx(20.0)  # one more in 20 s (60 s / 3)
    assert limiter.hit("b") == 0.0  # another client is not affected
    clock.t += 20
    assert limiter.hit("a") == 0.0 and limiter.hit("a") > 0


def test_the_rate_limiter_forgets_idle_clients_and_never_holds_more_than_its_bound():
    clock = FakeClock()
    limiter = RateLimiter(Rate(5, 10), clock=clock, max_keys=1000)
    for i in range(5000):  # a flood of distinct addresses
        limiter.hit(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter) == 1000
    clock.t += 11  # all idle for longer than the window: nothing of theirs constrains anything any more
    limiter.hit("192.0.2.1")
    assert len(limiter) == 1


@pytest.mark.parametrize("origin, hops, key", [
    (RequestOrigin("203.0.113.7", "198.51.100.1"), 0, "203.0.113.7"),  # no trusted proxy: the header is ignored
    (RequestOrigin("10.16.3.80", "198.51.100.1"), 1, "198.51.100.1"),
    # A client may send its own X-Forwarded-For; the proxy appends what it saw, and that is what counts.
    (RequestOrigin("10.16.3.80", "192.0.2.99, 198.51.100.1"), 1, "198.51.100.1"),
    (RequestOrigin("10.16.3.80", "192.0.2.99, 198.51.100.1, 10.0.0.5"), 2, "198.51.100.1"),
    (RequestOrigin("10.16.3.80", "198.51.100.1"), 3, "198.51.100.1"),  # fewer entries than hops: the first
    (RequestOrigin("10.16.3.80", None), 1, "10.16.3.80"),  # no header: the peer
    (RequestOrigin("2001:db8:1:2:aaaa::1"), 0, "2001:db8:1:2::/64"),  # one IPv6 subscriber: its /64
    (RequestOrigin("::ffff:198.51.100.4"), 0, "198.51.100.4"),
    (RequestOrigin(None), 0, None),
])
def test_the_client_address(origin, hops, key):
    assert client_address(origin, hops) == key


# ----- per-client limits through the service ---------------------------------------------------------------------


def test_rotating_handles_from_one_address_hit_the_client_limit_and_refused_votes_write_nothing(tmp_path, bundled):
    svc = make_service(tmp_path, bundled, client_rate_limit="12/60", client_new_annotators="off")
    try:
        picture = synth.draw_scene(synth.sample_scene(random.Random(4), shape="star"), 224)
        handles = [f"rotating-{i}" for i in range(10)]
        accepted = refused = 0
        messages = set()
        with request_origin(RequestOrigin("203.0.113.7")):
            for round_ in range(3):
                for handle in handles:
                    shown = svc.comparisons.predict(picture, list(synth.SHAPES), TextAttack(f"w{round_}", size=0.15),
                                        source="synthetic")
                    before = footprint(svc)
                    try:
                        svc.comparisons.vote(handle, shown.id, "left")
                        accepted += 1
                    except UserError as exc:
                        refused += 1
                        messages.add(str(exc).split(";")[0])
                        assert footprint(svc) == before  # nothing written
        assert (accepted, refused) == (12, 18), messages
        assert messages == {"Too many labels from your network address (at most 12 per 60 s)"}
        # Another address, and calls from Python itself (no request), are not held back by this one.
        with request_origin(RequestOrigin("198.51.100.20")):
            item = svc.annotation.next_item("someone-else")
            svc.annotation.answer_item("someone-else", item.sample.id, item.labels[0])
        item = svc.annotation.next_item("a-script")
        svc.annotation.answer_item("a-script", item.sample.id, item.labels[0])
    finally:
        svc.close()


def test_one_address_creates_a_bounded_number_of_annotators(tmp_path, bundled):
    svc = make_service(tmp_path, bundled, client_new_annotators="5/3600")
    try:
        tokens = [svc.identity.issue() for _ in range(8)]  # issuing a token writes nothing
        with request_origin(RequestOrigin("203.0.113.8")):
            before = svc.repo.counts()["annotators"]
            for token in tokens[:5]:
                svc.annotation.next_item(token)
            for token in [*tokens[5:], "typed-name"]:
                with pytest.raises(UserError, match="Too many new annotator names or anonymous ids from your "
                                                    "network address \\(at most 5 per 3600 s\\)"):
                    svc.annotation.next_item(token)
            assert svc.repo.counts()["annotators"] == before + 5
            item = svc.annotation.next_item(tokens[0])  # the five already known carry on
            svc.annotation.answer_item(tokens[0], item.sample.id, item.labels[0])
        with request_origin(RequestOrigin("198.51.100.9")):
            svc.annotation.next_item(tokens[5])
    finally:
        svc.close()


def test_the_abuse_defaults_are_on_and_a_space_trusts_its_proxy(tmp_path):
    from poclip.app.service import repository_config
    from poclip.settings import Settings

    here = Settings.from_env({"POCLIP_DATA_DIR": str(tmp_path)})
    assert (here.proxy_hops, here.client_rate_limit, here.client_new_annotators) == (0, "300/60", "20/3600")
    config = repository_config(here)
    assert (config.min_gold_seen, config.max_annotator_share) == (3, 0.25)
    assert Settings.from_env({"POCLIP_DATA_DIR": str(tmp_path), "SPACE_ID": "someone/po-clip"}).proxy_hops == 1
    assert Settings.from_env({"SPACE_ID": "a/b", "POCLIP_PROXY_HOPS": "2", "POCLIP_DATA_DIR": str(tmp_path)}
                             ).proxy_hops == 2
    with pytest.raises(ValueError, match="POCLIP_MAX_ANNOTATOR_SHARE"):
        Settings(data_dir=tmp_path, max_annotator_share=0)


def test_limit_settings_are_checked(tmp_path):
    from poclip.app.service import repository_config
    from poclip.settings import Settings

    with pytest.raises(ValueError, match="POCLIP_CLIENT_RATE_LIMIT must look like 300/60"):
        Rate.parse("lots", "POCLIP_CLIENT_RATE_LIMIT")
    assert Rate.parse("off", "x") is None and Rate.parse("300/60", "x") == Rate(300, 60.0)
    # The per-annotator limit reads the same format: a negative count is refused with the variable's name.
    for bad in ("-5/60", "lots", "10/0"):
        with pytest.raises(ValueError, match="POCLIP_RATE_LIMIT must look like"):
            repository_config(Settings(data_dir=tmp_path, rate_limit=bad))
    config = repository_config(Settings(data_dir=tmp_path, rate_limit="30/10"))
    assert (config.rate_limit_count, config.rate_limit_window_s) == (30, 10.0)
    assert repository_config(Settings(data_dir=tmp_path, rate_limit="off")).rate_limit_count is None
    with pytest.raises(ValueError, match="proxy_hops"):
        ClientLimits(None, None, proxy_hops=-1)


# ----- through HTTP: a launched app ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def launched(tmp_path_factory, bundled):
    from poclip.app.ui import build_demo, launch_kwargs

    data = tmp_path_factory.mktemp("limits") / "data"
    service = make_service(data, bundled, client_rate_limit="6/60", client_new_annotators="3/3600", proxy_hops=1)
    demo = build_demo(service)
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                        **launch_kwargs())
    try:
        yield {"service": service, "url": f"http://127.0.0.1:{port}/", "data": data}
    finally:
        demo.close()
        service.close()


@pytest.mark.slow
def test_rotating_handles_over_http_hit_the_per_address_limit(launched):
    from gradio_client import Client

    service = launched["service"]
    # Behind the trusted proxy: the address is the last X-Forwarded-For entry, whatever the client put before it.
    clients = [Client(launched["url"], verbose=False,
                      headers={"X-Forwarded-For": f"192.0.2.{i}, 203.0.113.77"}) for i in range(3)]
    accepted, errors, ids = 0, [], [""] * len(clients)  # each client keeps the signed id the server issued it
    for _ in range(3):
        for i, client in enumerate(clients):
            handle = f"rotating-{i}"
            _, item_id, labels, _, _, ids[i] = client.predict(handle=handle, anonymous_id=ids[i], api_name="/next_item")
            try:
                client.predict(sample_id=int(item_id), label=labels[0], handle=handle, anonymous_id=ids[i],
                               api_name="/answer")
                accepted += 1
            except Exception as exc:
                errors.append(str(exc))
    assert accepted == 6 and len(errors) == 3
    assert all("Too many labels from your network address (at most 6 per 60 s)" in e for e in errors), errors
    assert service.admin.people_counts()["judgments"] == 6
    # A fourth identity from the same address is one new annotator too many (three were created above).
    with pytest.raises(Exception, match="Too many new annotator names"):
        clients[0].predict(handle="rotating-3", api_name="/next_item")
    other = Client(launched["url"], verbose=False, headers={"X-Forwarded-For": "198.51.100.30"})
    _, item_id, labels, _, _, me = other.predict(handle="elsewhere", api_name="/next_item")
    other.predict(sample_id=int(item_id), label=labels[0], handle="elsewhere", anonymous_id=me, api_name="/answer")


@pytest.mark.slow
def test_the_page_configuration_holds_no_deployment_secret(launched):
    with urllib.request.urlopen(launched["url"] + "config", timeout=30) as response:
        config = response.read().decode()
    json.loads(config)
    secret = server_secret(launched["data"])
    service = launched["service"]
    never = {
        "server secret": secret.hex(),
        "admin token": ADMIN_TOKEN,
        "pseudonym key": service.repo.config.pseudonym_secret,
        "a signature": service.identity.token_for("anon-000000000000").rpartition(".")[2],
    }
    for what, value in never.items():
        assert value and value not in config, f"the {what} is in /config"
    # The browser-storage key is in /config by design (the browser encrypts with it): it is a fixed public
    # value, independent of the server secret, and the anonymous id it stores is valid only with the server's
    # HMAC signature.
    from poclip.app.ui.identity import browser_storage_key

    assert browser_storage_key(service) in config

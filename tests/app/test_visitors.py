"""Who a request acts for and what it costs its address: failed requests keep the new-name budget, and a proxy
setting without a proxy in front is called out."""

import logging
import random

import pytest
from apphelpers import make_service

from poclip.app.limits import RequestOrigin, client_address, request_origin
from poclip.errors import UserError
from poclip.world import synth
from poclip.world.attacks import TextAttack

OVER_BUDGET = "Too many new annotator names or anonymous ids from your network address"


def test_failed_first_requests_do_not_use_up_the_addresss_new_names(tmp_path, bundled):
    svc = make_service(tmp_path, bundled, client_new_annotators="3/3600", client_rate_limit="4/3600")
    try:
        picture = synth.draw_scene(synth.sample_scene(random.Random(4), shape="star"), 224)
        with request_origin(RequestOrigin("203.0.113.9")):
            someone = svc.identity.issue()
            item = svc.annotation.next_item(someone)  # one new name used
            svc.annotation.answer_item(someone, item.sample.id, item.labels[0])  # one label of four
            # Four newcomers whose first request fails after the address was counted: two answers for an item
            # never served to them (no annotator is made for that), then, once the address's labels are used up,
            # two votes.
            for _ in range(2):
                with pytest.raises(UserError, match="sign in first"):
                    svc.annotation.answer_item(svc.identity.issue(), item.sample.id, item.labels[0])
            shown = svc.comparisons.predict(picture, list(synth.SHAPES), TextAttack("circle", size=0.15),
                                            source="synthetic")
            svc.comparisons.vote(someone, shown.id, "left")  # the fourth label
            for _ in range(2):
                with pytest.raises(UserError, match="Too many labels from your network address"):
                    svc.comparisons.vote(svc.identity.issue(), shown.id, "right")
            people = svc.repo.counts()["annotators"]
            # The two names left are still there for the people who come next; a third is one too many.
            for _ in range(2):
                svc.annotation.next_item(svc.identity.issue())
            with pytest.raises(UserError, match=OVER_BUDGET):
                svc.annotation.next_item(svc.identity.issue())
            assert svc.repo.counts()["annotators"] == people + 2
    finally:
        svc.close()


def test_proxy_hops_without_a_proxy_let_a_client_pick_its_address_and_the_app_says_so(tmp_path, bundled, caplog):
    # What POCLIP_PROXY_HOPS=1 does with no proxy in front: the client's own X-Forwarded-For is believed, so
    # rotating it rotates the address the limits count.
    assert {client_address(RequestOrigin("203.0.113.5", f"198.51.100.{i}"), 1) for i in range(3)} == {
        "198.51.100.0", "198.51.100.1", "198.51.100.2"}
    assert client_address(RequestOrigin("203.0.113.5", "198.51.100.1"), 0) == "203.0.113.5"

    svc = make_service(tmp_path, bundled, proxy_hops=1)
    try:
        with caplog.at_level(logging.WARNING, logger="poclip.app.visitors"):
            with request_origin(RequestOrigin("198.51.100.7", "203.0.113.1")):  # through a proxy: nothing to say
                svc.annotation.next_item(svc.identity.issue())
            assert not caplog.records
            for _ in range(2):  # straight to the app: said once
                with request_origin(RequestOrigin("198.51.100.7")):
                    svc.annotation.next_item(svc.identity.issue())
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 1 and "POCLIP_PROXY_HOPS is 1, but a request from 198.51.100.7 came without " \
                                      "X-Forwarded-For" in warnings[0] and "set POCLIP_PROXY_HOPS=0" in warnings[0]
    finally:
        svc.close()

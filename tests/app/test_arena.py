"""Peer defenses on the Compare tab: built in the background, offered once ready, pitted blind against PO-CLIP, and
ranked by the votes on the Data tab's leaderboard."""

from __future__ import annotations

import random
import shutil
import time

import pytest
from apphelpers import make_service

from poclip.app.peers import PeerDefenses
from poclip.app.ui.api import PublicApi
from poclip.app.ui.data import leaderboard_view
from poclip.errors import UserError
from poclip.world import synth
from poclip.world.attacks import TextAttack


@pytest.fixture(scope="module")
def built_prompts(tmp_path_factory, bundled):
    """The prompts peer built once, as the app builds it (a child process), into a cache folder tests copy."""
    cache = tmp_path_factory.mktemp("defenses")
    peers = PeerDefenses(bundled, cache, ["prompts"])
    peers.start()
    peers.wait(300)
    assert peers.states() == {"prompts": "ready"}, peers.states()
    return cache


def wait_ready(service, name: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while name not in service.peers.ready():
        assert time.monotonic() < deadline, service.peers.states()
        time.sleep(0.2)


@pytest.fixture
def service(tmp_path, bundled, built_prompts):
    shutil.copytree(built_prompts, tmp_path / "defenses")
    svc = make_service(tmp_path, bundled, peers=("prompts",), starter_head=True)
    wait_ready(svc, "prompts")  # loaded from the copied cache: no build
    yield svc
    svc.close()


def star(seed: int = 0):
    return synth.draw_scene(synth.sample_scene(random.Random(seed), shape="star"), 224)


def test_a_side_shows_a_peer_and_the_vote_records_which_models_were_shown(service):
    record = service.comparisons.predict(star(), list(synth.SHAPES), TextAttack("kite"), left="prompts",
                                         right="aligned", source="synthetic")
    assert (record.shown_left, record.right_model, record.blind) == ("prompts", "aligned", False)
    assert record.left.model == "prompts" and sum(record.left.probs.values()) == pytest.approx(1, abs=1e-3)
    assert record.right is record.aligned
    me = service.identity.issue()
    stored = service.comparisons.vote(me, record.id, "left")
    assert (stored["shown_left"], stored["shown_right"], stored["blind"]) == ("prompts", "aligned", False)
    [judgment] = service.repo.judgments_of(service.visitors.who(me))
    assert judgment.shown_left is None  # that column names base or aligned only; the battle names the peer
    [named] = service.repo.battle_counts(blind=False)
    assert (named.left, named.right, named.verdict, named.count) == ("prompts", "aligned", "left", 1)
    assert service.repo.battle_counts(blind=True) == [] and service.comparisons.leaderboard() == []


def test_sides_must_be_two_different_models_the_app_shows(service):
    picture, labels = star(), list(synth.SHAPES)
    for left, right, why in (("aligned", "aligned", "Both sides show PO-CLIP"),
                             ("paint", "aligned", "'paint' is not a model this app shows"),
                             ("base", "gpt", "'gpt' is not a model")):
        with pytest.raises(UserError, match=why):
            service.comparisons.predict(picture, labels, left=left, right=right, source="synthetic")
    assert service.comparisons.records.held_by(None) == 0  # nothing kept


def test_a_peer_being_built_is_not_offered_and_says_so(tmp_path, bundled):
    svc = make_service(tmp_path, bundled, peers=("prefix",))
    try:
        assert svc.comparisons.models() == ["base", "aligned"]  # prefix trains for a while first
        with pytest.raises(UserError, match="The Defense-Prefix defense is not ready yet"):
            svc.comparisons.predict(star(), list(synth.SHAPES), left="prefix", source="synthetic")
    finally:
        svc.close()  # kills the build in flight
    assert not list((tmp_path / "defenses").rglob("*.safetensors"))  # nothing half-written is left to load


def test_a_peer_whose_build_fails_says_why(tmp_path, bundled):
    (tmp_path / "defenses").write_text("a file where the cache folder should be")
    peers = PeerDefenses(bundled, tmp_path / "defenses", ["prompts"])
    peers.start()
    peers.wait(300)
    assert peers.ready() == [] and peers.states()["prompts"].startswith("failed: ")
    with pytest.raises(UserError, match="Prompt wording defense is not ready: "):
        peers.require("prompts")


def test_an_unknown_peer_in_the_settings_is_refused(tmp_path, bundled):
    with pytest.raises(UserError, match="POCLIP_PEERS names 'gpt': choose from prompts, ablation, prefix, ocr_mask, "
                                        "paint, or off"):
        PeerDefenses(bundled, tmp_path, ["prompts", "gpt"])


def test_arena_votes_pit_po_clip_against_drawn_opponents_and_rank_them(service):
    picture = star(3)
    opponents, sides = set(), set()
    for k in range(24):
        record = service.comparisons.predict(picture, list(synth.SHAPES), TextAttack(f"w{k}"), arena=True,
                                             source="synthetic", rng=random.Random(k))
        assert record.blind and "aligned" in (record.shown_left, record.right_model)
        opponent = record.right_model if record.shown_left == "aligned" else record.shown_left
        opponents.add(opponent)
        sides.add(record.shown_left)
        # A person who trusts PO-CLIP's side: it wins every blind vote.
        service.comparisons.vote(service.identity.issue(), record.id,
                                 "left" if record.shown_left == "aligned" else "right")
    assert opponents == {"base", "prompts"} and sides == {"aligned", "base", "prompts"}
    service.comparisons._board = None  # computed before these votes (the Data tab caches it for a few seconds)
    board = service.comparisons.leaderboard()
    assert board[0].model == "aligned" and board[0].votes == 24 and board[0].win_rate == 1.0
    assert {r.model for r in board} == {"aligned", "base", "prompts"}
    assert board[0].low > max(r.high for r in board[1:])  # 24 straight wins: clearly ahead
    note, table = leaderboard_view(service)
    assert list(table["defense"])[0] == "PO-CLIP" and list(table["blind votes"])[0] == 24
    assert "Prompt wording ready" in note
    rows = PublicApi(service).leaderboard().leaderboard
    assert [r["model"] for r in rows] == [r.model for r in board] and rows[0]["title"] == "PO-CLIP"


def test_the_leaderboard_is_counted_at_most_once_per_few_seconds_however_many_pages_ask(service, monkeypatch):
    counted = []
    real = service.repo.battle_counts
    monkeypatch.setattr(service.repo, "battle_counts", lambda **kw: counted.append(1) or real(**kw))
    for _ in range(20):  # twenty open Data tabs refreshing
        service.comparisons.leaderboard()
    assert len(counted) == 1

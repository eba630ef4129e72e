"""Typed names are display names: the signed identity acts, and look-alike or blank names are refused."""

from __future__ import annotations

import pytest
from apphelpers import make_service

from poclip.app.seeding import GOLD_HANDLE
from poclip.app.ui.annotate import answer_handler, next_item_handler, undo_handler
from poclip.errors import UserError


@pytest.fixture
def service(tmp_path, bundled):
    svc = make_service(tmp_path, bundled, seed_items=60)
    yield svc
    svc.close()


def gold_answers(service) -> dict[int, str]:
    return {j.sample_id: j.chosen for j in service.repo.judgments_of(GOLD_HANDLE)}


@pytest.mark.parametrize("typed, why", [
    ("poclip-gold\u200b", "reserved"),  # zero-width space
    ("pocl\u0456p-gold", "reserved"),  # Cyrillic i
    ("\uff41\uff44\uff4d\uff49\uff4e", "reserved"),  # full-width admin
    ("\u200b\u00ad\u200d", "blank"),  # nothing visible
])
def test_look_alikes_of_reserved_names_and_blank_names_are_refused(service, typed, why):
    me = service.identity.issue()
    with pytest.raises(UserError, match=why):
        next_item_handler(service, typed, me)
    assert service.repo.counts()["annotators"] == 1  # the gold pseudo-annotator alone: nothing was created


def test_an_empty_box_is_anonymous(service):
    me = service.identity.issue()
    shown = next_item_handler(service, "   ", me)
    assert shown.sample_id is not None and "from you ·" in shown.counter
    assert service.visitors.display_name(me) is None


def test_names_that_differ_by_case_or_confusables_are_one_name(service):
    first, second = service.identity.issue(), service.identity.issue()
    next_item_handler(service, "Alice", first)
    for look_alike in ("alice", "ALICE", "\u0430lice", "Alic\u0435\u200b", "\uff21lice"):
        with pytest.raises(UserError, match="already someone else's"):
            next_item_handler(service, look_alike, second)
    assert service.visitors.display_name(first) == "Alice" and service.visitors.display_name(second) is None
    next_item_handler(service, "alice", first)  # the owner may retype their own name in another case
    assert service.visitors.display_name(first) == "alice"


def test_typing_someone_elses_name_changes_nothing_of_theirs(service):
    a, b = service.identity.issue(), service.identity.issue()
    shown = next_item_handler(service, "alice", a)
    answered = answer_handler(service, shown.sample_id, shown.labels[0], "alice", a)
    assert "1** label from you (alice)" in answered.counter
    a_handle = service.visitors.who(a)
    before = service.repo.get_annotator(a_handle)

    # B types A's name with B's own signed id: refused before anything happens, so nothing of A's moves.
    for act in (lambda: undo_handler(service, "alice", b), lambda: next_item_handler(service, "alice", b)):
        with pytest.raises(UserError, match="already someone else's"):
            act()
    # The typed name in place of the signed id acts as nobody.
    with pytest.raises(UserError, match="not issued by this server"):
        undo_handler(service, "", "alice")

    # B under their own name answers every gold item wrongly and undoes their last label.
    gold = gold_answers(service)
    shown = next_item_handler(service, "bob", b)
    wrong = 0
    while shown.sample_id is not None:
        label = next(x for x in shown.labels if x != gold.get(shown.sample_id))
        wrong += shown.sample_id in gold
        shown = answer_handler(service, shown.sample_id, label, "bob", b)
    undone = undo_handler(service, "bob", b)
    assert "Undone" in undone.prompt

    after = service.repo.get_annotator(a_handle)
    assert wrong >= 3
    assert (after.trust, after.gold_seen) == (before.trust, before.gold_seen)
    assert len(service.repo.judgments_of(a_handle)) == 1  # A's label is still there
    b_row = service.repo.get_annotator(service.visitors.who(b))
    assert b_row.gold_seen >= wrong - 1 and b_row.trust < before.trust  # B's answers moved B's trust only
    assert (after.display_name, b_row.display_name) == ("alice", "bob")

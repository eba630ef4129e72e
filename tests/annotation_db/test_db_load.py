"""Annotators at once on PostgreSQL, with gold items (trust moves) and status reads: no deadlock, no false
error, nothing lost; and the request-path reads stay O(1)."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError

from annotation_db import RepositoryConfig
from annotation_db.models import Annotator, Judgment

ANNOTATORS = 16
ITEMS = 24


def test_16_concurrent_annotators_on_postgresql_no_deadlocks_no_false_errors_none_lost(make_repo, png, db_url):
    if not db_url.startswith("postgresql"):
        pytest.skip("the deadlock came from PostgreSQL's row locks; SQLite has one writer at a time")
    repo = make_repo(RepositoryConfig(rate_limit_count=None), real_clock=True)
    repo.ensure_label_set("animals", ["cat", "dog", "bird"])
    samples = [repo.add_sample(repo.store_image(png(i)).sha256, "animals", {"text": "dog"}).id for i in range(ITEMS)]
    repo.ensure_annotator("gold-writer")
    for sample_id in samples[::3]:  # a third are gold items: answering them moves the annotator's trust
        repo.record_judgment(sample_id, "gold-writer", "cat", "dog", kind="gold")
    handles = [repo.ensure_annotator(f"person-{i}").handle for i in range(ANNOTATORS)]
    acknowledged: list[int] = []
    errors: list[str] = []
    barrier = threading.Barrier(ANNOTATORS)

    def annotate(i: int, handle: str) -> None:
        barrier.wait()
        for n in range(ITEMS):
            try:
                sample = repo.next_sample(handle)
                if sample is None:
                    return
                chosen, rejected = ("cat", "dog") if (i + n) % 4 else ("dog", "cat")
                judgment = repo.record_judgment(sample.id, handle, chosen, rejected, require_served=True)
                acknowledged.append(judgment.id)
                if n % 7 == 3:  # undo and redo: trust moves back and forth on the write path
                    undone = repo.undo_last_judgment(handle)
                    acknowledged.remove(undone.id)
                    again = repo.record_judgment(sample.id, handle, chosen, rejected, require_served=True)
                    acknowledged.append(again.id)
                repo.counts()  # the status read every open tab makes
                if n % 8 == 0:
                    repo.stats()  # and the dashboard
            except DBAPIError as exc:
                errors.append(f"{type(exc.orig).__name__}: {exc.orig}")
            except Exception as exc:  # every error is a false error: each request here is valid
                errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=annotate, args=(i, h)) for i, h in enumerate(handles)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    deadlocks = [e for e in errors if "Deadlock" in e or "deadlock" in e]
    assert deadlocks == [] and errors == []
    with repo.db.reading() as s:
        stored = set(s.scalars(select(Judgment.id).where(Judgment.kind == "human", Judgment.undone_at.is_(None))))
        per_person = s.execute(select(Annotator.handle, Annotator.gold_seen, Annotator.trust)
                               .where(Annotator.handle.like("person-%"))).all()
    assert stored == set(acknowledged) and len(acknowledged) == ANNOTATORS * ITEMS
    # The maintained figures agree with a full recount.
    assert repo.counts()["judgments"] == len(acknowledged) + len(samples[::3])
    maintained = {h: (seen, round(t, 9)) for h, seen, t in per_person}
    repo.refresh_trust()
    with repo.db.reading() as s:
        recounted = {h: (seen, round(t, 9)) for h, seen, t in s.execute(
            select(Annotator.handle, Annotator.gold_seen, Annotator.trust).where(Annotator.handle.like("person-%")))}
    assert maintained == recounted
    assert all(seen == len(samples[::3]) for seen, _ in maintained.values())


def test_trust_follows_each_write_and_reads_write_nothing(repo, world):
    handle, sample = world.annotators[0], world.samples[0]
    repo.ensure_annotator("maintainer")
    repo.record_judgment(sample, "maintainer", "cat", "dog", kind="gold")
    repo.record_judgment(sample, handle, "dog", "cat")  # wrong on a gold item
    assert repo.get_annotator(handle).trust == pytest.approx(2 / 3)
    repo.undo_last_judgment(handle)
    assert repo.get_annotator(handle).trust == pytest.approx(1.0)
    repo.record_judgment(world.samples[1], handle, "cat", "dog")
    repo.record_judgment(world.samples[1], "maintainer", "cat", "dog", kind="gold")  # gold answer after the vote
    assert (repo.get_annotator(handle).gold_seen, repo.get_annotator(handle).trust) == (1, 1.0)
    before = repo.counts()
    repo.stats()
    repo.training_pairs()
    with repo.db.reading() as s:
        assert s.scalar(select(func.count()).select_from(Judgment)) == 4  # one of them undone
    assert repo.counts() == before == {"annotators": 9, "images": 6, "judgments": 3, "samples": 6, "undone": 1}


def test_a_new_annotators_votes_count_only_after_k_gold_items_and_one_annotator_is_capped(make_repo, world_factory):
    repo = make_repo(RepositoryConfig(rate_limit_count=None, min_gold_seen=1, max_annotator_share=0.5))
    world = world_factory(repo, n_samples=6)
    repo.ensure_annotator("maintainer")
    repo.record_judgment(world.samples[0], "maintainer", "cat", "dog", kind="gold")
    newcomer, regular = world.annotators[:2]
    for sample in world.samples[1:]:
        repo.record_judgment(sample, newcomer, "bird", "dog")
    assert [p.sample_id for p in repo.training_pairs().pairs] == [world.samples[0]]  # only the gold pair
    repo.record_judgment(world.samples[0], newcomer, "cat", "dog")  # their first gold item
    pairs = repo.training_pairs().pairs
    # Five samples carry only the newcomer's votes; the share cap lets them decide half of the six.
    assert len(pairs) == 1 + 3
    for sample in world.samples[1:]:
        repo.record_judgment(sample, regular, "bird", "dog")
    repo.record_judgment(world.samples[0], regular, "cat", "dog")
    assert len(repo.training_pairs().pairs) == 4  # each of the two decides at most three samples: 1, 2, 3
    uncapped = make_repo(RepositoryConfig(rate_limit_count=None, min_gold_seen=1, max_annotator_share=1.0))
    assert len(uncapped.training_pairs().pairs) == 6

"""Which sample an annotator sees next."""

from __future__ import annotations

import pytest

from annotation_db import NotFoundError, RepositoryConfig


def test_never_serves_a_sample_already_judged_and_ends_with_none(repo, world):
    seen = []
    while (sample := repo.next_sample("annotator-a")) is not None:
        assert sample.id not in seen
        seen.append(sample.id)
        repo.record_judgment(sample.id, "annotator-a", "cat", "dog")
    assert sorted(seen) == sorted(world.samples)


def test_items_short_of_k_votes_come_first(make_repo, world_factory):
    repo = make_repo(RepositoryConfig(target_votes=2))
    world = world_factory(repo, n_samples=4)
    full, one_vote, *fresh = world.samples
    for who in ("annotator-b", "annotator-c"):
        repo.record_judgment(full, who, "cat", "dog")
    repo.record_judgment(one_vote, "annotator-d", "cat", "dog")
    # Short of k, closest to k first (so it completes), then untouched ones, then the full item.
    order = []
    while (sample := repo.next_sample("annotator-a")) is not None:
        order.append(sample.id)
        repo.record_judgment(sample.id, "annotator-a", "cat", "dog")
    assert order[0] == one_vote
    assert sorted(order[1:3]) == sorted(fresh)
    assert order[3] == full


def test_gold_only_left_is_still_served(make_repo, world_factory):
    repo = make_repo()
    world = world_factory(repo, n_samples=1)
    repo.ensure_annotator("maintainer")
    repo.record_judgment(world.samples[0], "maintainer", "cat", "dog", kind="gold")
    assert repo.next_sample("annotator-a").id == world.samples[0]
    assert repo.next_sample("maintainer") is None


def test_label_set_filter_and_sample_contents(repo, world, world_factory, png):
    image = repo.store_image(png(99))
    repo.ensure_label_set("digits", ["zero", "one"], "a picture of the digit {}")
    other = repo.add_sample(image.sha256, "digits", {"text": "one"})
    sample = repo.next_sample("annotator-a", label_set="digits")
    assert sample == other
    assert sample.labels == ("zero", "one") and sample.prompt_template == "a picture of the digit {}"
    assert sample.image_path.read_bytes() == png(99) and sample.attack == {"text": "one"}
    assert repo.next_sample("annotator-a", label_set="animals").label_set == "animals"


def test_unknown_annotator(repo, world):
    with pytest.raises(NotFoundError):
        repo.next_sample("ghost")


def test_skipped_items_rotate_instead_of_repeating(repo, world, clock):
    # Not answering must not pin the same item: each unanswered item comes back once per round.
    served = []
    for _ in range(2 * len(world.samples)):
        served.append(repo.next_sample("annotator-a").id)
        clock.advance(1)
    n = len(world.samples)
    assert sorted(served[:n]) == sorted(world.samples) and sorted(served[n:]) == sorted(world.samples)


def add_samples(repo, n: int, png) -> None:
    """``n`` more samples of one picture in one bulk insert (setup: not what is measured)."""
    from datetime import UTC, datetime

    from sqlalchemy import func, insert, select

    from annotation_db.models import LabelSet, Sample
    from annotation_db.validation import json_key

    sha = repo.store_image(png(7)).sha256
    with repo.db.writing() as s:
        label_set_id = s.scalar(select(LabelSet.id).where(LabelSet.name == "animals"))
        start = s.scalar(select(func.count()).select_from(Sample))
        s.execute(insert(Sample), [{"image_sha256": sha, "label_set_id": label_set_id, "attack": {"text": f"w{i}"},
                                    "attack_key": json_key({"text": f"w{i}"}), "created_at": datetime.now(UTC)}
                                   for i in range(start, start + n)])


def sqlite_steps(repo):
    """A counter of the SQLite virtual machine's steps (hundreds) on every connection of ``repo``: the work its
    statements do, whatever the speed of the machine."""
    from sqlalchemy import event

    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    event.listen(repo.db.engine, "connect", lambda dbapi, _: dbapi.set_progress_handler(count, 100))
    repo.db.engine.dispose()  # the connections made from now on count
    return steps


def test_choosing_the_next_item_does_not_read_every_sample(repo, world, db_url, png):
    if not db_url.startswith("sqlite"):
        pytest.skip("counts SQLite's virtual-machine steps; PostgreSQL runs the same indexed statements")
    steps = sqlite_steps(repo)
    for voter in world.annotators[1:4]:  # other people's votes: items short of k and at k
        for sample in world.samples[: world.annotators.index(voter) + 1]:
            repo.record_judgment(sample, voter, "cat", "dog")

    def cost(n_samples: int, handle: str) -> float:
        add_samples(repo, n_samples - repo.counts()["samples"], png)
        repo.ensure_annotator(handle)
        steps[0] = 0
        for _ in range(20):
            sample = repo.next_sample(handle)
            repo.record_judgment(sample.id, handle, "cat", "dog")
        return steps[0] / 20

    small, large = cost(1_000, "annotator-a"), cost(20_000, "annotator-h")
    assert large < 1.5 * small, (small, large)  # 20 times the samples, about the same work

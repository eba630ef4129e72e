"""Training pairs: majority vote, agreement, trust from gold items, undone and low-trust votes left out."""

from __future__ import annotations

import pytest

from annotation_db import CrowdGrowth, NotFoundError, RepositoryConfig


def vote(repo, sample_id, votes):
    for who, chosen, rejected in votes:
        repo.record_judgment(sample_id, who, chosen, rejected)


def test_majority_per_sample_with_agreement_and_what_the_trainer_needs(repo, world):
    s1, s2, s3 = world.samples[:3]
    vote(
        repo,
        s1,
        [("annotator-a", "cat", "dog"), ("annotator-b", "cat", "dog"), ("annotator-c", "dog", "cat")],
    )
    vote(repo, s2, [("annotator-a", "bird", "fish")])
    vote(repo, s3, [("annotator-a", "cat", "dog"), ("annotator-b", "dog", "cat")])  # tie: no pair

    batch = repo.training_pairs()
    by_sample = {p.sample_id: p for p in batch.pairs}
    assert set(by_sample) == {s1, s2}
    assert batch.skipped == 1
    p1 = by_sample[s1]
    assert (p1.chosen, p1.rejected, p1.votes, p1.is_gold) == ("cat", "dog", 3, False)
    assert p1.agreement == pytest.approx(2 / 3)
    assert by_sample[s2].agreement == 1.0 and by_sample[s2].votes == 1

    sample = repo.get_sample(s2)
    p2 = by_sample[s2]
    assert p2.image_path == sample.image_path and p2.image_path.is_file()
    assert (p2.image_sha256, p2.attack, p2.labels, p2.prompt_template) == (
        sample.image_sha256,
        sample.attack,
        ("cat", "dog", "bird", "fish"),
        "a photo of a {}.",
    )
    assert batch.watermark == max(j.id for h in world.annotators for j in repo.judgments_of(h))


def test_rejected_is_the_most_common_among_the_majority(repo, world):
    s = world.samples[0]
    vote(
        repo,
        s,
        [("annotator-a", "cat", "dog"), ("annotator-b", "cat", "bird"), ("annotator-c", "cat", "bird")],
    )
    [pair] = repo.training_pairs().pairs
    assert (pair.chosen, pair.rejected, pair.agreement) == ("cat", "bird", 1.0)


def test_undone_judgments_do_not_count(repo, world, clock):
    s = world.samples[0]
    vote(repo, s, [("annotator-a", "cat", "dog"), ("annotator-b", "dog", "cat")])
    clock.advance(1)
    repo.record_judgment(s, "annotator-c", "dog", "cat")
    repo.undo_last_judgment("annotator-c")
    assert repo.training_pairs().pairs == []  # 1-1 tie once c's vote is undone


def test_gold_accuracy_sets_trust_and_low_trust_votes_are_excluded(make_repo, world_factory):
    repo = make_repo(RepositoryConfig(min_trust=0.5, trust_prior_correct=2, trust_prior_seen=2, min_gold_seen=0,
                                      max_annotator_share=1.0))  # trust alone
    world = world_factory(repo, n_samples=6)
    gold, regular = world.samples[:4], world.samples[4]
    repo.ensure_annotator("maintainer")
    for sample_id in gold:
        repo.record_judgment(sample_id, "maintainer", "cat", "dog", kind="gold")
    for sample_id in gold:
        repo.record_judgment(sample_id, "annotator-a", "cat", "dog")  # 4/4 right
        repo.record_judgment(sample_id, "annotator-b", "dog", "cat")  # 0/4 right
    for sample_id in gold[:2]:
        repo.record_judgment(sample_id, "annotator-c", "cat", "dog")  # 2/3 right
    repo.record_judgment(gold[2], "annotator-c", "fish", "cat")
    # On the regular item the spammer b outvotes nobody once excluded: a's view stands.
    vote(
        repo,
        regular,
        [("annotator-a", "bird", "fish"), ("annotator-b", "fish", "bird"), ("annotator-d", "fish", "bird")],
    )

    trust = repo.refresh_trust()
    assert trust["annotator-a"] == pytest.approx((4 + 2) / (4 + 2))
    assert trust["annotator-b"] == pytest.approx((0 + 2) / (4 + 2))
    assert trust["annotator-c"] == pytest.approx((2 + 2) / (3 + 2))
    assert trust["annotator-d"] == 1.0  # no gold seen yet: the prior
    info = repo.get_annotator("annotator-c")
    assert (info.gold_seen, info.gold_correct) == (3, 2)

    batch = repo.training_pairs()
    assert batch.excluded_annotators == ["annotator-b"]
    pairs = {p.sample_id: p for p in batch.pairs}
    # Gold items give the gold pair; agreement is among trusted votes (a and c).
    assert all(pairs[g].is_gold and (pairs[g].chosen, pairs[g].rejected) == ("cat", "dog") for g in gold)
    assert pairs[gold[2]].agreement == pytest.approx(1 / 2) and pairs[gold[2]].votes == 2
    assert pairs[gold[3]].agreement == 1.0 and pairs[gold[3]].votes == 1
    # Regular item: a (bird) vs d (fish) after b is dropped -> tie -> skipped.
    assert regular not in pairs


def test_pairs_since_a_model_version(repo, world, clock):
    s1, s2, s3 = world.samples[:3]
    vote(repo, s1, [("annotator-a", "cat", "dog")])
    vote(repo, s2, [("annotator-a", "dog", "cat")])
    first = repo.training_pairs()
    version = repo.register_version(
        "bundled", "heads/v1.safetensors", {"acc": 0.5}, judgment_watermark=first.watermark
    )
    assert repo.training_pairs(since_version=version.id).pairs == []

    clock.advance(5)
    vote(repo, s2, [("annotator-b", "dog", "cat")])
    vote(repo, s3, [("annotator-b", "fish", "cat")])
    since = repo.training_pairs(since_version=version.id)
    assert sorted(p.sample_id for p in since.pairs) == [s2, s3]
    # The majority of a touched sample still uses its older votes too.
    assert next(p for p in since.pairs if p.sample_id == s2).votes == 2
    assert len(repo.training_pairs().pairs) == 3

    with pytest.raises(NotFoundError):
        repo.training_pairs(since_version=999)


def test_synthetic_judgments_are_pairs_too(repo, world):
    repo.ensure_annotator("synthetic")
    repo.record_judgment(world.samples[1], "synthetic", "cat", "bird", kind="synthetic")
    [pair] = repo.training_pairs().pairs
    assert (pair.chosen, pair.rejected, pair.attack) == (
        "cat",
        "bird",
        repo.get_sample(world.samples[1]).attack,
    )


def test_empty_store_gives_no_pairs(repo):
    batch = repo.training_pairs()
    assert (batch.pairs, batch.watermark, batch.skipped) == ([], None, 0)


def test_by_default_a_newcomer_counts_after_three_gold_items_and_decides_at_most_a_quarter(make_repo, world_factory):
    repo = make_repo(RepositoryConfig(rate_limit_count=None))  # the store's defaults
    world = world_factory(repo, n_samples=12)
    gold, regular = world.samples[:3], world.samples[3:]
    repo.ensure_annotator("maintainer")
    for sample_id in gold:
        repo.record_judgment(sample_id, "maintainer", "cat", "dog", kind="gold")
    newcomer = world.annotators[0]
    for sample_id in gold[:2]:
        repo.record_judgment(sample_id, newcomer, "cat", "dog")
    for sample_id in regular:
        repo.record_judgment(sample_id, newcomer, "bird", "dog")
    # Two gold items answered: the nine labels on regular items count for nothing yet.
    assert sorted(p.sample_id for p in repo.training_pairs().pairs) == gold
    repo.record_judgment(gold[2], newcomer, "cat", "dog")
    # Three: now they count, on at most a quarter of the twelve items with votes (3), the earliest first; the
    # answers on gold items (decided by the gold answer) do not use up that share.
    pairs = repo.training_pairs().pairs
    assert sorted(p.sample_id for p in pairs) == [*gold, *regular[:3]]
    assert all(p.chosen == "bird" for p in pairs if p.sample_id in regular)


def test_held_out_items_go_apart_from_the_training_pairs_and_gold_is_never_held_out(repo, world):
    s1, s2, s3 = world.samples[:3]
    vote(repo, s1, [("annotator-a", "cat", "dog"), ("annotator-b", "cat", "dog"), ("annotator-c", "dog", "cat")])
    vote(repo, s2, [("annotator-a", "bird", "fish")])
    repo.ensure_annotator("maintainer")
    repo.record_judgment(s3, "maintainer", "cat", "dog", kind="gold")
    everything = repo.training_pairs()

    def hold_out(pair):  # the app keys this by a hash of the item; here: every item
        return True

    batch = repo.training_pairs(held_out=hold_out)
    assert [p.sample_id for p in batch.pairs] == [s3]  # the gold item stays: it scores the annotators
    held = {p.sample_id: p for p in batch.held_out}
    assert set(held) == {s1, s2} and (held[s1].chosen, held[s1].rejected, held[s1].votes) == ("cat", "dog", 3)
    assert batch.watermark == everything.watermark and batch.skipped == everything.skipped
    assert repo.training_pairs(held_out=lambda pair: False).pairs == everything.pairs


def test_crowd_growth_counts_the_pairs_people_made_or_unmade_after_a_watermark(repo, world):
    s1, s2, s3 = world.samples[:3]
    vote(repo, s1, [("annotator-a", "cat", "dog")])
    watermark = repo.training_pairs().watermark
    assert repo.crowd_growth(watermark, 100) == CrowdGrowth(0, True)
    vote(repo, s2, [("annotator-a", "bird", "fish")])  # a new pair
    vote(repo, s1, [("annotator-b", "dog", "cat")])  # a tie now: a pair lost
    vote(repo, s3, [("annotator-a", "cat", "dog"), ("annotator-b", "cat", "dog")])  # a new pair, from two labels
    assert repo.crowd_growth(watermark, 100) == CrowdGrowth(1, True)
    assert repo.crowd_growth(0, 100).pairs == 2 == sum(p.from_people for p in repo.training_pairs().pairs)
    # Reading the first two labels after the watermark only (s2's pair, s1's tie): a lower bound, said so.
    assert repo.crowd_growth(watermark, 2) == CrowdGrowth(0, False)


def test_gold_answers_and_synthetic_votes_alone_are_no_crowd_pairs(repo, world):
    s1, s2, s3 = world.samples[:3]
    repo.ensure_annotator("gold-keeper")
    repo.record_judgment(s1, "gold-keeper", "cat", "dog", kind="gold")
    vote(repo, s1, [("annotator-a", "cat", "dog")])
    repo.ensure_annotator("generator")
    repo.record_judgment(s2, "generator", "bird", "fish", kind="synthetic")
    vote(repo, s3, [("annotator-a", "dog", "cat")])
    pairs = {p.sample_id: p for p in repo.training_pairs().pairs}
    assert [(p.is_gold, p.people, p.from_people) for p in (pairs[s1], pairs[s2], pairs[s3])] == [
        (True, 1, False), (False, 0, False), (False, 1, True)]
    assert repo.crowd_growth(0, 100) == CrowdGrowth(1, True)

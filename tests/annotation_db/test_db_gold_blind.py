"""Gold items cannot be told from regular ones by how they are served.

The attack from the issue: call next_sample hundreds of times without answering and count how often (and how
early) each item comes back. Gold items used to come back 1-3 times against 126-149 for regular ones. The
measure is the AUC of the best one-feature classifier (either direction): 0.5 is chance, 1.0 a perfect split.
"""

from __future__ import annotations

from collections import Counter

from annotation_db import RepositoryConfig

N_ITEMS = 60
CALLS = 300


def separation(gold: list[float], regular: list[float]) -> float:
    """max(AUC, 1 - AUC), AUC = P(g > r) + P(g = r) / 2 over all gold/regular pairs (Mann-Whitney)."""
    wins = sum((g > r) + 0.5 * (g == r) for g in gold for r in regular)
    auc = wins / (len(gold) * len(regular))
    return max(auc, 1 - auc)


def gold_world(make_repo, world_factory):
    repo = make_repo(RepositoryConfig(rate_limit_count=None, target_votes=3))
    world = world_factory(repo, n_samples=N_ITEMS, n_annotators=4)
    repo.ensure_annotator("maintainer")
    # Votes 0..3 from other people, the same in gold and regular items; every fifth block of four is gold.
    gold = {s for i, s in enumerate(world.samples) if (i // 4) % 5 == 0}
    for i, sample_id in enumerate(world.samples):
        for who in world.annotators[: i % 4]:
            repo.record_judgment(sample_id, who, "cat", "dog")
        if sample_id in gold:
            repo.record_judgment(sample_id, "maintainer", "cat", "dog", kind="gold")
    return repo, world, gold


def split(values: dict[int, float], gold: set[int]) -> tuple[list[float], list[float]]:
    return [v for s, v in values.items() if s in gold], [v for s, v in values.items() if s not in gold]


def test_an_annotator_who_never_answers_cannot_pick_out_gold_items(make_repo, world_factory, clock):
    repo, world, gold = gold_world(make_repo, world_factory)
    counts_auc, first_gold, first_regular = [], [], []
    for attacker in range(6):
        handle = f"attacker-{attacker}"
        repo.ensure_annotator(handle)
        times: Counter[int] = Counter()
        first: dict[int, float] = {}
        for call in range(CALLS):
            sample_id = repo.next_sample(handle).id
            times[sample_id] += 1
            first.setdefault(sample_id, call)
            clock.advance(1)
        assert set(times) == set(world.samples)  # every item comes back, gold or not
        counts_auc.append(separation(*split(dict(times), gold)))
        g, r = split(first, gold)
        first_gold += g
        first_regular += r
    assert max(counts_auc) <= 0.6, counts_auc
    assert separation(first_gold, first_regular) <= 0.6


def test_annotators_who_answer_everything_meet_gold_items_anywhere(make_repo, world_factory):
    repo, world, gold = gold_world(make_repo, world_factory)
    position_gold, position_regular = [], []
    for person in range(6):
        handle = f"honest-{person}"
        repo.ensure_annotator(handle)
        order = []
        while (sample := repo.next_sample(handle)) is not None:
            order.append(sample.id)
            repo.record_judgment(sample.id, handle, "cat", "dog", require_served=True)
        assert sorted(order) == sorted(world.samples)  # each item once, gold included
        g, r = split({s: i for i, s in enumerate(order)}, gold)
        position_gold += g
        position_regular += r
    assert separation(position_gold, position_regular) <= 0.6

"""Stats and Krippendorff's alpha."""

from __future__ import annotations

import pytest

from annotation_db import krippendorff_alpha_nominal


def test_alpha_on_a_hand_computed_example():
    # Units: [a, a], [a, b], [b, b]. Coincidences: o_aa = 2 + 1*0... by hand:
    #   unit 1 gives the ordered pair (a,a) twice with weight 1/(2-1): o_aa += 2
    #   unit 2 gives (a,b) and (b,a):                                 o_ab += 1, o_ba += 1
    #   unit 3 gives (b,b) twice:                                     o_bb += 2
    # n_a = 3, n_b = 3, n = 6; D_o = (o_ab + o_ba) / n = 2/6; D_e = 2 * n_a * n_b / (n (n-1)) = 18/30
    # alpha = 1 - D_o / D_e = 1 - (1/3) / (3/5) = 4/9
    assert krippendorff_alpha_nominal([["a", "a"], ["a", "b"], ["b", "b"]]) == pytest.approx(4 / 9)


def test_alpha_matches_krippendorffs_published_example():
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability", 4 observers x 12 units with
    # missing values, nominal alpha = 0.743.
    observers = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
        [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
    ]
    units = [[v for v in unit if v is not None] for unit in zip(*observers, strict=True)]
    assert krippendorff_alpha_nominal(units) == pytest.approx(0.743, abs=5e-4)


def test_alpha_edge_cases():
    assert krippendorff_alpha_nominal([]) is None
    assert krippendorff_alpha_nominal([["a"], ["b"]]) is None  # nothing pairable
    assert krippendorff_alpha_nominal([["a", "a"], ["a", "a"]]) is None  # no variation: undefined
    assert krippendorff_alpha_nominal([["a", "a"], ["b", "b"]]) == 1.0
    assert krippendorff_alpha_nominal([["a", "b"], ["b", "a"]]) < 0


def test_stats_counts_per_annotator_and_agreement(repo, world, clock):
    s1, s2, s3 = world.samples[:3]
    repo.record_judgment(s1, "annotator-a", "cat", "dog")
    repo.record_judgment(s1, "annotator-b", "cat", "dog")
    repo.record_judgment(s2, "annotator-a", "cat", "dog")
    repo.record_judgment(s2, "annotator-b", "dog", "cat")
    repo.record_judgment(s3, "annotator-a", "dog", "cat")
    repo.record_judgment(s3, "annotator-b", "dog", "cat")
    clock.advance(1)
    repo.record_judgment(world.samples[3], "annotator-c", "fish", "cat")
    repo.undo_last_judgment("annotator-c")

    stats = repo.stats()
    assert (stats.images, stats.samples, stats.annotators) == (6, 6, 8)
    assert (stats.judgments, stats.undone, stats.gold_items) == (6, 1, 0)
    assert stats.pairs == 2  # s2 is a tie
    assert stats.alpha_units == 3
    assert stats.alpha == pytest.approx(4 / 9)  # same structure as the hand-computed example
    per = {a.handle: a for a in stats.per_annotator}
    assert (per["annotator-a"].judgments, per["annotator-c"].judgments, per["annotator-c"].undone) == (
        3,
        0,
        1,
    )
    assert per["annotator-h"].judgments == 0 and per["annotator-h"].trust == 1.0


def test_stats_on_an_empty_store(repo):
    stats = repo.stats()
    assert (stats.images, stats.judgments, stats.pairs, stats.alpha, stats.per_annotator) == (
        0,
        0,
        0,
        None,
        [],
    )

"""The defense leaderboard ranks models by blind votes alone, with intervals that hold the truth."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from annotation_db import BattleCount
from poclip.app.leaderboard import bradley_terry

# True Elo-scale ratings; a vote between i and j goes to i with P = 1 / (1 + 10 ** ((r_j - r_i) / 400)).
TRUTH = {"base": 1000.0, "prompts": 1120.0, "prefix": 1200.0, "aligned": 1350.0}


def simulated_votes(n: int, seed: int, ties: float = 0.0) -> list[BattleCount]:
    """``n`` blind votes as arena mode makes them: PO-CLIP against a random opponent, sides shuffled; plus a
    quarter of peer-against-peer votes. A share ``ties`` says "both" or "neither" whoever played (which pulls the
    fitted ratings together: a tie counts half a win)."""
    rng = random.Random(seed)
    cells: Counter[tuple[str, str, str]] = Counter()
    others = [m for m in TRUTH if m != "aligned"]
    for k in range(n):
        pair = ["aligned", rng.choice(others)] if k % 4 else rng.sample(others, 2)
        rng.shuffle(pair)
        left, right = pair
        if rng.random() < ties:
            verdict = rng.choice(("both", "neither"))
        else:
            p_left = 1 / (1 + 10 ** ((TRUTH[right] - TRUTH[left]) / 400))
            verdict = "left" if rng.random() < p_left else "right"
        cells[(left, right, verdict)] += 1
    return [BattleCount(left, right, verdict, count) for (left, right, verdict), count in cells.items()]


def test_the_ranking_follows_the_true_order_and_the_intervals_hold_the_true_ratings():
    ratings = bradley_terry(simulated_votes(4000, seed=0))
    assert [r.model for r in ratings] == ["aligned", "prefix", "prompts", "base"]
    by_model = {r.model: r for r in ratings}
    assert by_model["base"].rating == 1000.0  # the anchor
    for model, truth in TRUTH.items():
        r = by_model[model]
        assert r.low <= truth <= r.high, (model, truth, r)
        assert r.low <= r.rating <= r.high
    # The interval of the anchor's gap to PO-CLIP is narrow enough to tell them apart.
    assert by_model["aligned"].low > by_model["prefix"].high
    assert sum(r.votes for r in ratings) == 2 * 4000  # each vote counts for both of its models
    assert by_model["aligned"].win_rate > 0.5 > by_model["base"].win_rate


def test_the_95_percent_intervals_hold_the_truth_about_95_percent_of_the_time():
    held = [r.low <= TRUTH[r.model] <= r.high for seed in range(10, 30)
            for r in bradley_terry(simulated_votes(1000, seed=seed), bootstrap=100, seed=seed) if r.model != "base"]
    assert 0.85 <= sum(held) / len(held) <= 1.0, sum(held) / len(held)


def test_four_times_the_votes_halve_the_intervals_roughly():
    few = {r.model: r.high - r.low for r in bradley_terry(simulated_votes(500, seed=2))}
    many = {r.model: r.high - r.low for r in bradley_terry(simulated_votes(2000, seed=2))}
    for model in TRUTH:
        if model == "base":
            continue  # the anchor's interval is zero by construction
        assert 0.35 < many[model] / few[model] < 0.7, (model, few[model], many[model])


def test_ties_blind_to_strength_pull_the_ratings_together_but_keep_the_order():
    plain = {r.model: r.rating for r in bradley_terry(simulated_votes(4000, seed=3))}
    tied = bradley_terry(simulated_votes(4000, seed=3, ties=0.3))
    assert [r.model for r in tied] == ["aligned", "prefix", "prompts", "base"]
    assert {r.model: r.rating for r in tied}["aligned"] < plain["aligned"]


def test_ties_count_half_and_a_model_that_never_won_stays_finite():
    ties_only = bradley_terry([BattleCount("aligned", "base", "both", 30), BattleCount("base", "aligned", "neither",
                                                                                        30)])
    assert {r.model: r.rating for r in ties_only} == pytest.approx({"aligned": 1000.0, "base": 1000.0}, abs=0.5)
    assert all(r.win_rate == 0.5 for r in ties_only)

    swept = bradley_terry([BattleCount("aligned", "paint", "left", 20), BattleCount("paint", "aligned", "right", 20)])
    assert [r.model for r in swept] == ["aligned", "paint"]
    assert swept[1].win_rate == 0.0 and swept[0].rating - swept[1].rating < 1500  # finite, by the prior
    assert bradley_terry([]) == []

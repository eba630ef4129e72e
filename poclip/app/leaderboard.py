"""The defense leaderboard: Bradley-Terry ratings from blind arena votes, with bootstrap confidence intervals.

As chatbot arenas rank models: every blind vote is a battle between the model shown left and the one shown right.
The verdict says which side was right; ``left`` or ``right`` is a win for that side, ``both`` (both right) and
``neither`` (both wrong) are a tie, counted as half a win each. The Bradley-Terry model gives each model a
strength ``p`` with ``P(i beats j) = p_i / (p_i + p_j)``, fitted by Hunter's minorization-maximization
iterations (Ann. Statist. 2004). Each model also draws one tie against a virtual opponent of strength 1, a weak
prior that keeps a model with no wins (or no losses) finite. Ratings are on the Elo scale,
``1000 + 400 log10(p / p_anchor)``, with the base model as the anchor when it has played.

Intervals: the votes are resampled with replacement (:data:`BOOTSTRAP` times) and refitted; a model's interval is
the 2.5th and 97.5th percentiles of its rating. The figures come from the votes alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from annotation_db import BattleCount

BOOTSTRAP = 200
ANCHOR = "base"
ITERATIONS = 200


@dataclass(frozen=True)
class Rating:
    """One model's place: ``rating`` (Elo scale) with its 95% interval ``low``-``high``, the blind votes it was in,
    and its share of them won (ties count half)."""

    model: str
    rating: float
    low: float
    high: float
    votes: int
    win_rate: float


def _outcomes(counts: Sequence[BattleCount]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The models, and per cell (a left/right/verdict count): the two model indices and the left side's score
    (1 win, 0 loss, 0.5 tie)."""
    models = sorted({c.left for c in counts} | {c.right for c in counts})
    index = {m: k for k, m in enumerate(models)}
    pairs = np.array([(index[c.left], index[c.right]) for c in counts], dtype=int).reshape(-1, 2)
    score = np.array([{"left": 1.0, "right": 0.0}.get(c.verdict, 0.5) for c in counts])
    return models, pairs, score


def _fit(n_models: int, pairs: np.ndarray, score: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Bradley-Terry strengths (log scale) ``[B, models]`` for ``B`` weightings of the cells (``weight``
    ``[B, cells]``: vote counts, or a bootstrap's resampled counts), each with the virtual-tie prior; all ``B``
    fitted together."""
    batch = weight.shape[0]
    wins = np.full((batch, n_models), 0.5)  # the prior's half win for each model
    games = np.zeros((batch, n_models, n_models))
    for k, (i, j) in enumerate(pairs):
        wins[:, i] += weight[:, k] * score[k]
        wins[:, j] += weight[:, k] * (1 - score[k])
        games[:, i, j] += weight[:, k]
        games[:, j, i] += weight[:, k]
    p = np.ones((batch, n_models))
    for _ in range(ITERATIONS):
        # + the virtual opponent of strength 1, met once by every model
        denominator = (games / (p[:, :, None] + p[:, None, :])).sum(2) + 1.0 / (p + 1.0)
        updated = wins / denominator
        converged = np.allclose(updated, p, rtol=1e-9, atol=0)
        p = updated
        if converged:
            break
    return np.log(p)


def bradley_terry(counts: Sequence[BattleCount], *, bootstrap: int = BOOTSTRAP, seed: int = 0) -> list[Rating]:
    """Every model that played, best first (see the module's docstring). ``counts``: blind vote counts
    (:meth:`annotation_db.Repository.battle_counts`); no votes, no rows."""
    counts = [c for c in counts if c.count > 0 and c.left != c.right]
    if not counts:
        return []
    models, pairs, score = _outcomes(counts)
    weight = np.array([c.count for c in counts], dtype=float)

    def elo(log_p: np.ndarray) -> np.ndarray:
        anchor = log_p[:, [models.index(ANCHOR)]] if ANCHOR in models else log_p.mean(1, keepdims=True)
        return 1000 + 400 * (log_p - anchor) / np.log(10)

    point = elo(_fit(len(models), pairs, score, weight[None]))[0]
    rng = np.random.default_rng(seed)
    total = int(weight.sum())
    resampled = rng.multinomial(total, weight / total, size=bootstrap).astype(float)
    draws = elo(_fit(len(models), pairs, score, resampled)) if bootstrap else point[None]
    low, high = np.percentile(draws, [2.5, 97.5], axis=0)
    votes = np.zeros(len(models))
    won = np.zeros(len(models))
    np.add.at(votes, pairs[:, 0], weight)
    np.add.at(votes, pairs[:, 1], weight)
    np.add.at(won, pairs[:, 0], weight * score)
    np.add.at(won, pairs[:, 1], weight * (1 - score))
    rows = [Rating(m, round(float(point[k]), 1), round(float(low[k]), 1), round(float(high[k]), 1), int(votes[k]),
                   round(float(won[k] / votes[k]), 3)) for k, m in enumerate(models)]
    return sorted(rows, key=lambda r: -r.rating)

"""When the trainer queues a run: enough new crowd pairs, or the timer with at least a few, never during backoff.

New information is what calls for a run: the crowd pairs (people's consensus pairs, see
:mod:`poclip.app.pair_counts`) must have grown since the newest run that produced a version by

    threshold = max(POCLIP_RETRAIN_EVERY_PAIRS, ceil(20% of the crowd pairs that run used)) * 2**min(r, 3)

where r counts the rejected runs in a row since the last promotion: each rejection doubles the wait for new
data, up to 8 times, and a promotion resets it. The threshold and the counts derive from the runs table, so every
replica and every restart agrees. A failed run moves nothing: after it, scheduling waits out a backoff that
doubles with every failure in a row up to a cap (kept by each trainer), then tries the same data again.
"""

from __future__ import annotations

import math
from fractions import Fraction

from poclip.app.retrain.data import MIN_PAIRS

BACKOFF_S = (60.0, 3600.0)  # after a failed run, wait this long before scheduling again, doubling to the cap
# The crowd pairs must grow by this share of the last run's (or POCLIP_RETRAIN_EVERY_PAIRS); exact, so that a fifth
# of 15 is 3, not the 3.0000000000000004 of 0.2 * 15.
GROWTH_SHARE = Fraction(1, 5)
MAX_DOUBLINGS = 3  # rejections in a row double the threshold at most this often: 8 times at most


def crowd_threshold(every_pairs: int, last_crowd_pairs: int, rejections: int) -> int | None:
    """New crowd pairs a scheduled run needs (the formula in the module's docstring).

    Args:
        every_pairs: ``POCLIP_RETRAIN_EVERY_PAIRS``; 0 = never by count (returns None).
        last_crowd_pairs: the crowd pairs the newest run that produced a version used.
        rejections: rejected runs in a row since the last promotion.
    """
    if not every_pairs:
        return None
    return max(every_pairs, math.ceil(GROWTH_SHARE * last_crowd_pairs)) * 2 ** min(rejections, MAX_DOUBLINGS)


class Schedule:
    """The timer and the failure backoff. Times are the caller's clock.

    Args:
        every_pairs: ``POCLIP_RETRAIN_EVERY_PAIRS`` (0 = never by count).
        every_minutes: queue when this many minutes passed and at least :data:`MIN_PAIRS` new crowd pairs
            exist (``POCLIP_RETRAIN_EVERY_MINUTES``; 0 = no timer).
        now: the clock's time at start (the timer counts from it).
    """

    def __init__(self, every_pairs: int, every_minutes: float, now: float) -> None:
        self.every_pairs, self.every_minutes = every_pairs, every_minutes
        self.last_queued = now
        self.not_before = 0.0  # no scheduling before this time (backoff after failures)
        self.backoff = BACKOFF_S[0]

    @property
    def enabled(self) -> bool:
        return bool(self.every_pairs or self.every_minutes)

    def waiting(self, now: float) -> bool:
        """True during a failure backoff."""
        return now < self.not_before

    def due(self, now: float, fresh: int, threshold: int | None) -> bool:
        """Whether ``fresh`` new crowd pairs at ``now`` call for a run, given the count ``threshold``
        (:func:`crowd_threshold`; None: not by count); a run that is due counts as queued now."""
        timer = self.every_minutes and now - self.last_queued >= self.every_minutes * 60
        if (threshold is not None and fresh >= threshold) or (timer and fresh >= MIN_PAIRS):
            self.last_queued = now
            return True
        return False

    def failed(self, now: float) -> None:
        """A run failed: wait out the backoff, and double it for the next failure."""
        self.not_before = now + self.backoff
        self.backoff = min(self.backoff * 2, BACKOFF_S[1])

    def succeeded(self) -> None:
        """A run finished: the next failure waits the shortest backoff again."""
        self.backoff = BACKOFF_S[0]

"""When the trainer queues a run: enough new judgments, or the timer with at least a few, never during backoff.

New judgments are counted after the newest one any run (rejected and failed ones included) trained on, so a
rejected candidate is not retrained on the same data; after a failed run scheduling waits, doubling the wait
with every failure in a row up to a cap.
"""

from __future__ import annotations

from poclip.app.retrain.data import MIN_PAIRS

BACKOFF_S = (60.0, 3600.0)  # after a failed run, wait this long before scheduling again, doubling to the cap


class Schedule:
    """The schedule's state: when the last run was queued and the failure backoff. Times are the caller's clock.

    Args:
        every_pairs: queue once this many new judgments arrived (``POCLIP_RETRAIN_EVERY_PAIRS``; 0 = never by count).
        every_minutes: queue when this many minutes passed and at least :data:`MIN_PAIRS` judgments arrived
            (``POCLIP_RETRAIN_EVERY_MINUTES``; 0 = no timer).
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

    def due(self, now: float, fresh: int) -> bool:
        """Whether ``fresh`` new judgments at ``now`` call for a run; a run that is due counts as queued now."""
        timer = self.every_minutes and now - self.last_queued >= self.every_minutes * 60
        if (self.every_pairs and fresh >= self.every_pairs) or (timer and fresh >= MIN_PAIRS):
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

"""What every part of the repository shares: the database, the data dir, the knobs, and the clock."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from annotation_db.engine import Database


@dataclass(frozen=True)
class RepositoryConfig:
    """Policies of the preference store; the defaults suit a public Space.

    Attributes:
        rate_limit_count: most human judgments one annotator may record per window; None disables the limit.
        rate_limit_window_s: the window of the rate limit, in seconds.
        undo_window_s: how long after recording a judgment its annotator may still undo it.
        target_votes: k, the number of votes an item should collect; items short of k are served first.
        min_trust: annotators whose trust is below this are left out of training pairs.
        trust_prior_correct, trust_prior_seen: trust = (correct + prior_correct) / (seen + prior_seen) over
            gold items; the prior keeps one early slip from silencing a new annotator (trust starts at 1.0).
        min_agreement: a sample yields a pair only when at least this share of its votes agree.
        stale_heartbeat_s: a running training run whose last heartbeat is older than this is marked failed.
        max_image_bytes: largest PNG accepted by :meth:`store_image`.
        pseudonym_secret: the per-deployment secret that salts exported pseudonyms (empty: a public salt).
        max_annotator_share: the most of a training batch's items (those with votes) one annotator's votes may
            count on; beyond it, that annotator's later votes are left out (1.0 disables the cap). Votes on gold
            items do not use it up (the gold answer decides those).
        min_gold_seen: a human's votes count towards pairs only after they answered this many gold items (a
            new or throwaway name counts for nothing until then; 0 disables).
    """

    rate_limit_count: int | None = 120
    rate_limit_window_s: float = 60.0
    undo_window_s: float = 120.0
    target_votes: int = 3
    min_trust: float = 0.5
    trust_prior_correct: float = 2.0
    trust_prior_seen: float = 2.0
    min_agreement: float = 0.5
    stale_heartbeat_s: float = 300.0
    max_image_bytes: int = 32 * 1024 * 1024
    pseudonym_secret: str = ""
    max_annotator_share: float = 0.25
    min_gold_seen: int = 3


def utc_now() -> datetime:
    return datetime.now(UTC)


class StoreBase:
    """State shared by the repository's parts. Holds no session: each method opens its own unit of work."""

    def __init__(
        self,
        db: Database,
        data_dir: Path,
        config: RepositoryConfig | None = None,
        *,
        clock: Callable[[], datetime] = utc_now,
        rng: random.Random | None = None,
    ) -> None:
        """Args:
        db: engine and sessions (see :class:`annotation_db.engine.Database`).
        data_dir: where ``images/`` lives; image paths in the DB are relative to it.
        config: policies; defaults when None.
        clock: returns the current aware UTC time (tests pass a controllable one).
        rng: draws whether the next sample is a gold item.
        """
        self.db = db
        self.data_dir = Path(data_dir)
        self.config = config or RepositoryConfig()
        self._clock = clock
        self._rng = rng or random.Random()

    def now(self) -> datetime:
        """Current time from the repository's clock (aware, UTC)."""
        return self._clock()

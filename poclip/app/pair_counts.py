"""The data figures every page shows alike, and the trainer schedules on: labels, crowd pairs, replay pairs, and
how many more crowd pairs the next scheduled retrain needs. Annotate, Data and ``/status`` all read
:func:`count_pairs`.

- **labels**: people's labels, not undone (the gold pseudo-annotator's reference answers are no one's labels).
- **crowd pairs**: items whose counted votes from people agree, by the rules training uses (trusted annotators,
  a clear majority; :attr:`annotation_db.TrainingPair.from_people`). Gold items (their pair is the reference
  answer) and synthetic votes are not the crowd's, nor are augmented or replayed pairs. Held-out items count:
  a run uses their pairs too, to gate the candidate, while it trains on the others.
- **replay pairs**: the synthetic pairs the newest run that produced a version mixed in.

Crowd pairs now = the crowd pairs that run used (its record) + what people's labels since its watermark added
(:meth:`annotation_db.Repository.crowd_growth`). The threshold is :func:`~poclip.app.retrain.schedule.crowd_threshold`
of that run's figure and the rejections in a row before it.

Cost per call, whatever the size of the store: the newest trained runs (one indexed read of a few rows), the
counter rows, and the labels since the last run, read up to :data:`READ_PER_THRESHOLD` times the threshold and
at least :data:`READ_LABELS` (beyond that the figures are lower bounds, ``complete`` False; a scheduled run,
due by then, resets them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from annotation_db import Repository
from poclip.app.retrain.schedule import MAX_DOUBLINGS, crowd_threshold

READ_LABELS = 2000  # labels since the last run read at the least
READ_PER_THRESHOLD = 4  # and this many per crowd pair the threshold asks for (an item may take several votes)


@dataclass(frozen=True)
class PairCounts:
    """The figures (see the module's docstring).

    Attributes:
        labels: people's labels, not undone.
        crowd_pairs: crowd pairs now.
        replay_pairs: synthetic pairs the newest trained run replayed (0 before any).
        last_run_crowd_pairs: crowd pairs the newest run that produced a version used (0 before any).
        new_crowd_pairs: crowd pairs added since that run (negative when items lost their majority).
        threshold: new crowd pairs a scheduled retrain needs; None when retrains are not scheduled by count.
        rejections: rejected runs in a row since the last promotion (counted up to the doubling cap).
        complete: False when more labels arrived since the last run than were read: the crowd figures are then
            lower bounds.
    """

    labels: int
    crowd_pairs: int
    replay_pairs: int
    last_run_crowd_pairs: int
    new_crowd_pairs: int
    threshold: int | None
    rejections: int
    complete: bool = True

    @property
    def more_needed(self) -> int | None:
        """Crowd pairs still to come before a scheduled retrain (0: due); None when not scheduled by count."""
        return None if self.threshold is None else max(0, self.threshold - self.new_crowd_pairs)


def crowd_pairs_used(record: dict[str, Any] | None) -> int:
    """The crowd pairs a run's record says it used (:func:`~poclip.app.retrain.registration.run_record`).

    Records written before crowd pairs were counted apart from augmentation (they lack ``judged_pairs``) counted
    it into ``crowd_pairs``: they say nothing, 0.
    """
    if not record or "judged_pairs" not in record:
        return 0
    return int(record.get("crowd_pairs") or 0)


def count_pairs(repo: Repository, every_pairs: int, gold_items: int = 0) -> PairCounts:
    """Labels, crowd pairs, replay pairs and the retrain threshold, from the store alone (so every replica, and a
    restarted one, says the same).

    Args:
        repo: the store.
        every_pairs: ``POCLIP_RETRAIN_EVERY_PAIRS`` (0: retrains are not scheduled by count).
        gold_items: gold reference answers seeded, left out of ``labels`` (the seeding knows how many; the
            trainer, which reads only the pair figures, passes none).
    """
    trained = repo.trained_runs(MAX_DOUBLINGS)
    rejections = next((k for k, done in enumerate(trained) if not done.rejected), len(trained))
    last = trained[0].run if trained else None
    # A run without a watermark (registered by hand) gives no point to count from: count from the start.
    watermark = (last.judgment_watermark or 0) if last else 0
    used = crowd_pairs_used(last.metrics) if watermark else 0
    threshold = crowd_threshold(every_pairs, used, rejections)
    growth = repo.crowd_growth(watermark, max(READ_LABELS, READ_PER_THRESHOLD * (threshold or 0)))
    return PairCounts(
        labels=repo.counts()["judgments"] - gold_items,
        crowd_pairs=max(0, used + growth.pairs),
        replay_pairs=int((last.metrics or {}).get("replay_pairs") or 0) if last else 0,
        last_run_crowd_pairs=used,
        new_crowd_pairs=growth.pairs,
        threshold=threshold,
        rejections=rejections,
        complete=growth.complete,
    )

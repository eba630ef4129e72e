"""Counts and agreement for the maintainer's dashboard."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import and_, case, func, select

from annotation_db.agreement import krippendorff_alpha_nominal
from annotation_db.counters import read_counters
from annotation_db.models import Annotator, Image, Judgment, JudgmentKind, Sample
from annotation_db.pairs import PairsMixin


@dataclass(frozen=True)
class AnnotatorStats:
    handle: str
    judgments: int  # not undone
    undone: int
    gold_seen: int
    gold_correct: int
    trust: float


@dataclass(frozen=True)
class Stats:
    """What the store holds. ``alpha`` is Krippendorff's alpha (nominal) of the chosen labels over samples
    with at least two human votes; None while it is undefined (too few votes, or no variation at all)."""

    images: int
    samples: int
    gold_items: int
    judgments: int  # not undone, all kinds
    undone: int
    annotators: int
    pairs: int  # samples that currently yield a training pair
    alpha: float | None
    alpha_units: int  # samples that entered alpha
    per_annotator: list[AnnotatorStats]


class StatsMixin(PairsMixin):
    def counts(self) -> dict[str, int]:
        """The maintained totals: ``judgments`` (not undone), ``undone``, ``annotators``, ``images``,
        ``samples``. O(1) in the database size: five counter rows, see :mod:`annotation_db.counters`."""
        with self.db.reading() as s:
            return read_counters(s)

    def stats(self) -> Stats:
        """Counts, per-annotator figures and agreement between people, for the maintainer's dashboard.

        Reads everything: O(judgments). Request paths use :meth:`counts` instead.
        """
        with self.db.reading() as s:
            images = s.scalar(select(func.count()).select_from(Image)) or 0
            samples = s.scalar(select(func.count()).select_from(Sample)) or 0
            active, undone = s.execute(
                select(
                    func.count(Judgment.id) - func.count(Judgment.undone_at),
                    func.count(Judgment.undone_at),
                )
            ).one()
            gold_items = (
                s.scalar(
                    select(func.count(func.distinct(Judgment.sample_id))).where(
                        Judgment.kind == JudgmentKind.GOLD, Judgment.undone_at.is_(None)
                    )
                )
                or 0
            )
            per_annotator = [
                AnnotatorStats(handle, int(n or 0), int(u or 0), seen, correct, trust)
                for handle, n, u, seen, correct, trust in s.execute(
                    select(
                        Annotator.handle,
                        # Outer join: an annotator without judgments has one all-NULL row, which must count 0.
                        func.sum(
                            case((and_(Judgment.id.is_not(None), Judgment.undone_at.is_(None)), 1), else_=0)
                        ),
                        func.sum(case((Judgment.undone_at.is_not(None), 1), else_=0)),
                        Annotator.gold_seen,
                        Annotator.gold_correct,
                        Annotator.trust,
                    )
                    .outerjoin(Judgment, Judgment.annotator_id == Annotator.id)
                    .group_by(Annotator.id)
                    .order_by(Annotator.handle)
                )
            ]
            watermark = s.scalar(select(func.max(Judgment.id)))
            pairs = 0
            if watermark is not None:
                pairs = len(self._aggregate(s, select(Judgment.sample_id), watermark, None)[0])

            units: dict[int, list[str]] = defaultdict(list)
            for sample_id, chosen in s.execute(
                select(Judgment.sample_id, Judgment.chosen).where(
                    Judgment.kind == JudgmentKind.HUMAN, Judgment.undone_at.is_(None)
                )
            ):
                units[sample_id].append(chosen)
            pairable = [values for values in units.values() if len(values) >= 2]
            return Stats(
                images=images,
                samples=samples,
                gold_items=gold_items,
                judgments=int(active),
                undone=int(undone),
                annotators=len(per_annotator),
                pairs=pairs,
                alpha=krippendorff_alpha_nominal(pairable),
                alpha_units=len(pairable),
                per_annotator=per_annotator,
            )

"""Choosing what an annotator sees next, and remembering that it was served."""

from __future__ import annotations

from sqlalchemy import case, func, select
from sqlalchemy.dialects import postgresql, sqlite

from annotation_db.catalog import CatalogMixin, SampleInfo
from annotation_db.models import HANDLE_MAX, LABEL_SET_NAME_MAX, Judgment, JudgmentKind, LabelSet, Sample, ServedItem
from annotation_db.validation import check_optional_text, check_text


class ServingMixin(CatalogMixin):
    """The next sample for an annotator: gold items at the configured rate, else items closest to k votes."""

    def next_sample(self, annotator: str, *, label_set: str | None = None) -> SampleInfo | None:
        """Choose the sample ``annotator`` should judge next, or None when they have judged everything.

        Never a sample they already judged. With probability ``gold_rate`` a gold item (one with a gold
        answer) they have not seen; otherwise a regular item: those with fewer than k = ``target_votes``
        votes first, and among them the closest to k, so that items reach k votes (and give a pair) instead
        of all sitting at one vote; then items at or past k, fewest votes first. Ties are broken at random.

        Args:
            annotator: handle from :meth:`ensure_annotator`.
            label_set: only samples of this label set, if given.
        """
        annotator = check_text(annotator, "annotator", HANDLE_MAX)
        label_set = check_optional_text(label_set, "label set name", LABEL_SET_NAME_MAX)
        want_gold = self._rng.random() < self.config.gold_rate
        k = self.config.target_votes
        with self.db.reading() as s:
            annotator_id = self._annotator(s, annotator).id
            gold_ids = select(Judgment.sample_id).where(
                Judgment.kind == JudgmentKind.GOLD, Judgment.undone_at.is_(None)
            )
            mine = select(Judgment.sample_id).where(
                Judgment.annotator_id == annotator_id, Judgment.undone_at.is_(None)
            )
            # The vote count is kept on the sample row: O(samples), not O(judgments).
            n = Sample.votes
            base = select(Sample.id).where(Sample.id.not_in(mine))
            if label_set is not None:
                base = base.join(LabelSet, LabelSet.id == Sample.label_set_id).where(
                    LabelSet.name == label_set
                )
            regular = base.where(Sample.id.not_in(gold_ids)).order_by(
                case((n < k, 0), else_=1),
                case((n < k, -n), else_=n),
                func.random(),
            )
            gold = base.where(Sample.id.in_(gold_ids)).order_by(func.random())
            for query in (gold, regular) if want_gold else (regular, gold):
                sample_id = s.scalar(query.limit(1))
                if sample_id is not None:
                    info = self._sample_info(s, sample_id)
                    break
            else:
                return None
        self._mark_served(annotator_id, sample_id)
        return info

    def _mark_served(self, annotator_id: int, sample_id: int) -> None:
        # Its own short write after the read: the choice above never holds the write lock.
        dialect_insert = postgresql.insert if self.db.dialect == "postgresql" else sqlite.insert
        with self.db.write_connection() as conn:
            conn.execute(
                dialect_insert(ServedItem)
                .values(annotator_id=annotator_id, sample_id=sample_id, served_at=self.now())
                .on_conflict_do_nothing(index_elements=["annotator_id", "sample_id"])
            )

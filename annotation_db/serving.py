"""Choosing what an annotator sees next, and remembering that it was served."""

from __future__ import annotations

from sqlalchemy import and_, case, func, select
from sqlalchemy.dialects import postgresql, sqlite

from annotation_db.catalog import CatalogMixin, SampleInfo
from annotation_db.models import HANDLE_MAX, LABEL_SET_NAME_MAX, Judgment, LabelSet, Sample, ServedItem
from annotation_db.validation import check_optional_text, check_text


class ServingMixin(CatalogMixin):
    """The next sample for an annotator, from one queue in which gold items are ordinary members."""

    def next_sample(self, annotator: str, *, label_set: str | None = None) -> SampleInfo | None:
        """Choose the sample ``annotator`` should judge next, or None when they have judged everything.

        One queue, one ordering key, whether or not the item is gold, so nothing a client can observe (how
        often, in which order, how fast an item comes back) tells a gold item from a regular one:

        1. never a sample they already judged;
        2. items never served to them first, then those served but not answered, least recently served first
           (so skipping items cycles through all of them instead of repeating the same few);
        3. items with fewer than k = ``target_votes`` votes first, the closest to k first (so items reach k
           votes and give a pair), then items at or past k, fewest votes first;
        4. ties at random.

        Votes count human and synthetic answers, never the gold answer itself, so a gold item sits in the
        queue exactly where a regular item with the same votes would. The share of gold items a person
        answers is therefore the catalog's share (the seeder makes about one item in ten gold).

        Cost per request: one statement, O(samples) with a LIMIT 1 top-1 sort (no worse than before); the
        annotator's judgments and served rows are read through their (annotator, ...) indexes.

        Args:
            annotator: handle from :meth:`ensure_annotator`.
            label_set: only samples of this label set, if given.
        """
        annotator = check_text(annotator, "annotator", HANDLE_MAX)
        label_set = check_optional_text(label_set, "label set name", LABEL_SET_NAME_MAX)
        k = self.config.target_votes
        with self.db.reading() as s:
            annotator_id = self._annotator(s, annotator).id
            mine = select(Judgment.sample_id).where(
                Judgment.annotator_id == annotator_id, Judgment.undone_at.is_(None)
            )
            n = Sample.votes  # kept on the sample row by the judgment writes
            query = (
                select(Sample.id)
                .outerjoin(
                    ServedItem,
                    and_(ServedItem.sample_id == Sample.id, ServedItem.annotator_id == annotator_id),
                )
                .where(Sample.id.not_in(mine))
            )
            if label_set is not None:
                query = query.join(LabelSet, LabelSet.id == Sample.label_set_id).where(LabelSet.name == label_set)
            query = query.order_by(
                case((ServedItem.served_at.is_(None), 0), else_=1),
                ServedItem.served_at,
                case((n < k, 0), else_=1),
                case((n < k, -n), else_=n),
                func.random(),
            )
            sample_id = s.scalar(query.limit(1))
            if sample_id is None:
                return None
            info = self._sample_info(s, sample_id)
        self._mark_served(annotator_id, sample_id)
        return info

    def _mark_served(self, annotator_id: int, sample_id: int) -> None:
        # Its own short write after the read: the choice above never holds the write lock. The time is
        # refreshed on every serve: "least recently served" is what rotates skipped items.
        dialect_insert = postgresql.insert if self.db.dialect == "postgresql" else sqlite.insert
        now = self.now()
        with self.db.write_connection() as conn:
            conn.execute(
                dialect_insert(ServedItem)
                .values(annotator_id=annotator_id, sample_id=sample_id, served_at=now)
                .on_conflict_do_update(index_elements=["annotator_id", "sample_id"], set_={"served_at": now})
            )

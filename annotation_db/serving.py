"""Choosing what an annotator sees next, and remembering that it was served."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import Select, bindparam, case, exists, func, select, true, union_all
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from annotation_db.catalog import CatalogMixin, SampleInfo
from annotation_db.models import HANDLE_MAX, LABEL_SET_NAME_MAX, Judgment, LabelSet, Sample, ServedItem
from annotation_db.validation import check_optional_text, check_text

# next_sample runs on every Annotate click: its statements are built once (with and without a label set), so a
# call skips statement construction and cache-key generation, which cost more than SQLite's own work here.
_LAST_ID = select(func.max(Sample.id))
_LABEL_SET_ID = select(LabelSet.id).where(LabelSet.name == bindparam("label_set"))
_NOT_ANSWERED = ~exists().where(Judgment.annotator_id == bindparam("annotator_id"),
                                Judgment.sample_id == Sample.id, Judgment.undone_at.is_(None))


def _queue_statements(only) -> dict[str, Select]:
    below = select(Sample.votes).where(Sample.votes < bindparam("votes"), only).order_by(Sample.votes.desc())
    above = select(Sample.votes).where(Sample.votes > bindparam("votes"), only).order_by(Sample.votes)
    unseen = (Sample.votes == bindparam("votes"), only, _NOT_ANSWERED,
              ~exists().where(ServedItem.annotator_id == bindparam("annotator_id"), ServedItem.sample_id == Sample.id))
    # From the random id on, else from the first: one statement, read in that order until the first hit.
    halves = [select(Sample.id).where(side, *unseen).order_by(Sample.id).limit(1).subquery()
              for side in (Sample.id >= bindparam("start"), Sample.id < bindparam("start"))]
    return {"below": below.limit(1), "above": above.limit(1),
            "unseen": union_all(*(select(half.c.id) for half in halves)).limit(1)}


_QUEUE = {False: _queue_statements(true()), True: _queue_statements(Sample.label_set_id == bindparam("label_set_id"))}


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

        Cost per request, whatever the number of samples: items never served to them are found by walking the
        ``(votes, id)`` index one vote count at a time (closest to k first), from a random id onwards and then
        from the start, skipping the items this annotator has already seen (two primary-key probes each), so a
        request reads O(vote counts + items they saw that stand ahead of the answer). Only when every item was
        served to them does it read their served rows, least recently served first, through their
        ``(annotator, served_at)`` index.

        Args:
            annotator: handle from :meth:`ensure_annotator`.
            label_set: only samples of this label set, if given.
        """
        annotator = check_text(annotator, "annotator", HANDLE_MAX)
        label_set = check_optional_text(label_set, "label set name", LABEL_SET_NAME_MAX)
        with self.db.reading() as s:
            annotator_id = self._annotator(s, annotator).id
            where = {"annotator_id": annotator_id}
            if label_set is not None:
                where["label_set_id"] = s.scalar(_LABEL_SET_ID, {"label_set": label_set})
                if where["label_set_id"] is None:
                    return None
            sample_id = self._never_served(s, where)
            if sample_id is None:
                sample_id = self._least_recently_served(s, where)
            if sample_id is None:
                return None
            info = self._sample_info(s, sample_id)
        self._mark_served(annotator_id, sample_id)
        return info

    def _vote_counts(self, s: Session, where: dict) -> Iterator[int]:
        """The vote counts samples have, in queue order: below k from k - 1 down, then k and up. Each is one
        indexed step (a loose index scan), so this reads O(distinct counts), not the samples."""
        queue = _QUEUE["label_set_id" in where]
        votes = self.config.target_votes
        while (votes := s.scalar(queue["below"], {**where, "votes": votes})) is not None:
            yield votes
        votes = self.config.target_votes - 1
        while (votes := s.scalar(queue["above"], {**where, "votes": votes})) is not None:
            yield votes

    def _never_served(self, s: Session, where: dict) -> int | None:
        """The first item of the queue never served to (nor judged by) this annotator; ties by a random start."""
        last = s.scalar(_LAST_ID)
        if last is None:
            return None
        start = self._rng.randint(1, last)  # ids are dense: every item of a vote count is about equally likely
        unseen = _QUEUE["label_set_id" in where]["unseen"]
        for votes in self._vote_counts(s, where):
            found = s.scalar(unseen, {**where, "votes": votes, "start": start})
            if found is not None:
                return found
        return None

    def _least_recently_served(self, s: Session, where: dict) -> int | None:
        """The item served to this annotator longest ago that they have not answered (skipped, or undone)."""
        k, n = self.config.target_votes, Sample.votes
        only = Sample.label_set_id == where["label_set_id"] if "label_set_id" in where else true()
        query = (
            select(ServedItem.sample_id)
            .join(Sample, Sample.id == ServedItem.sample_id)
            .where(ServedItem.annotator_id == where["annotator_id"], _NOT_ANSWERED, only)
            .order_by(ServedItem.served_at, case((n < k, 0), else_=1), case((n < k, -n), else_=n), func.random())
        )
        return s.scalar(query.limit(1), where)

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

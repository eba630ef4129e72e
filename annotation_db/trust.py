"""Vote counts and annotator trust, moved in the same transaction as the judgment that changes them."""

from __future__ import annotations

from sqlalchemy import Connection, Float, bindparam, select, update

from annotation_db.models import Annotator, Judgment, JudgmentKind, Sample
from annotation_db.store import RepositoryConfig

_GOLD_CHOSEN = select(Judgment.chosen).where(
    Judgment.sample_id == bindparam("sample_id"),
    Judgment.kind == JudgmentKind.GOLD,
    Judgment.undone_at.is_(None),
)
_HUMANS_ON = (
    select(Judgment.annotator_id, Judgment.chosen)
    .where(
        Judgment.sample_id == bindparam("sample_id"),
        Judgment.kind == JudgmentKind.HUMAN,
        Judgment.undone_at.is_(None),
    )
    .order_by(Judgment.annotator_id)  # ascending: the lock order of annotator rows
)
# trust = (correct + prior_correct) / (seen + prior_seen), moved by one gold answer; SET reads the old values.
_TRUST = (
    update(Annotator)
    .where(Annotator.id == bindparam("annotator_id"))
    .values(
        gold_seen=Annotator.gold_seen + bindparam("d_seen"),
        gold_correct=Annotator.gold_correct + bindparam("d_correct"),
        trust=(Annotator.gold_correct + bindparam("d_correct") + bindparam("prior_c", type_=Float))
        / (Annotator.gold_seen + bindparam("d_seen") + bindparam("prior_n", type_=Float)),
    )
)
_VOTES = (
    update(Sample).where(Sample.id == bindparam("sample_id")).values(votes=Sample.votes + bindparam("delta"))
)

def move_trust(conn: Connection, config: RepositoryConfig, sample_id: int, annotator_id: int, kind: JudgmentKind,
               chosen: str, sign: int) -> None:
    """The sample's vote count and trust follow the write that changes them, one annotator row at a time
    (ascending ids).

    A human answer on a gold item (or its undo, ``sign=-1``) moves that annotator's counts; a new gold
    answer moves the counts of everyone who already answered the item. O(votes on the sample).
    """
    prior = {"prior_c": config.trust_prior_correct, "prior_n": config.trust_prior_seen}
    if kind is not JudgmentKind.GOLD:  # the sample row, before any annotator row: the lock order
        conn.execute(_VOTES, {"sample_id": sample_id, "delta": sign})
    if kind is JudgmentKind.HUMAN:
        gold = conn.scalar(_GOLD_CHOSEN, {"sample_id": sample_id})
        if gold is not None:
            conn.execute(_TRUST, {"annotator_id": annotator_id, "d_seen": sign,
                                  "d_correct": sign * int(chosen == gold), **prior})
    elif kind is JudgmentKind.GOLD:
        for other, their_choice in conn.execute(_HUMANS_ON, {"sample_id": sample_id}).all():
            conn.execute(_TRUST, {"annotator_id": other, "d_seen": sign,
                                  "d_correct": sign * int(their_choice == chosen), **prior})

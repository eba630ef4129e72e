"""Maintained totals: each write that adds or undoes a judgment, annotator, image or sample moves its counter
in the same transaction, so a status read costs one indexed row per figure, O(1) in the database size.

Lock order (PostgreSQL): a write transaction touches its own judgment rows, then annotator rows in ascending
id order, and the counter rows last, in name order. Every transaction follows that order, so two of them can
wait for each other but never in a cycle: no deadlocks.
"""

from __future__ import annotations

from sqlalchemy import Connection, bindparam, select, update
from sqlalchemy.orm import Session

from annotation_db.models import Counter

COUNTERS = ("annotators", "images", "judgments", "samples", "undone")

_BUMP = (
    update(Counter)
    .where(Counter.name == bindparam("counter"))
    .values(value=Counter.value + bindparam("delta"))
)


def bump(conn: Connection | Session, **deltas: int) -> None:
    """Add ``deltas`` (counter name -> change) to the counters; call last in the write transaction."""
    for name in sorted(deltas):  # fixed order, see the module docstring
        if name not in COUNTERS:
            raise KeyError(f"unknown counter {name!r}")
        if deltas[name]:
            conn.execute(_BUMP, {"counter": name, "delta": int(deltas[name])})


def read_counters(conn: Connection | Session) -> dict[str, int]:
    """All counters (a primary-key scan of five rows)."""
    found = {name: int(value) for name, value in conn.execute(select(Counter.name, Counter.value))}
    return {name: found.get(name, 0) for name in COUNTERS}

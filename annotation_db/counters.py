"""Maintained totals: each write that adds or undoes a judgment, annotator, image or sample moves its counter
in the same transaction, so a status read costs one indexed row per figure, O(1) in the database size.

Lock order (PostgreSQL): a write transaction touches its own judgment rows, then annotator rows in ascending
id order, and the counter rows last, in name order. Every transaction follows that order, so two of them can
wait for each other but never in a cycle: no deadlocks.
"""

from __future__ import annotations

from sqlalchemy import Connection, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from annotation_db.models import Counter

COUNTERS = ("annotators", "images", "judgments", "samples", "undone")

def _upsert(dialect: str):  # noqa: ANN202 - a statement builder
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(Counter)
    # A missing row (a table emptied by hand) starts at the change: the counter then matches the rows written.
    return stmt.on_conflict_do_update(index_elements=["name"], set_={"value": Counter.value + stmt.excluded.value})


_BUMP = {dialect: _upsert(dialect) for dialect in ("sqlite", "postgresql")}


def bump(conn: Connection | Session, **deltas: int) -> None:
    """Add ``deltas`` (counter name -> change) to the counters; call last in the write transaction."""
    dialect = conn.bind.dialect.name if isinstance(conn, Session) else conn.dialect.name
    for name in sorted(deltas):  # fixed order, see the module docstring
        if name not in COUNTERS:
            raise KeyError(f"unknown counter {name!r}")
        if deltas[name]:
            conn.execute(_BUMP[dialect], {"name": name, "value": int(deltas[name])})


def read_counters(conn: Connection | Session) -> dict[str, int]:
    """All counters (a primary-key scan of five rows)."""
    found = {name: int(value) for name, value in conn.execute(select(Counter.name, Counter.value))}
    return {name: found.get(name, 0) for name in COUNTERS}

"""Helpers for tests that handle a SQLite database's file as a maintainer would (imported by test modules; pytest
puts tests/ on sys.path)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import event


def checkpoint(db_file: Path) -> None:
    """Copy the write-ahead log into the database file from another connection, as a maintainer would before
    copying the file."""
    conn = sqlite3.connect(db_file)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def checkpoint_often(repo) -> None:
    """SQLite checkpoints a WAL database by itself once the log holds 1,000 pages, in the connection that commits;
    ``repo``'s connections do it every 8 pages from now on, so that a few writes reach the file as a day's would."""
    event.listen(repo.db.engine, "connect", lambda dbapi, _: dbapi.execute("PRAGMA wal_autocheckpoint = 8"))
    repo.db.engine.dispose()

"""Snapshots of a live SQLite database, and restoring the latest one when the database file is gone.

A snapshot is taken with SQLite's online backup API, which copies a consistent state of the database
while annotators keep writing (WAL lets the copy read while others write). Snapshots are named by UTC
time, ``poclip-20250101T120000.000000Z.db``, checked, and written under a temporary name first.
PostgreSQL is backed up with its own tools (``pg_dump``), not here.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import uuid
from datetime import datetime
from pathlib import Path

from annotation_db.engine import DatabaseConfig, StoreLocation
from annotation_db.errors import BackupError
from annotation_db.store import utc_now

log = logging.getLogger(__name__)

PREFIX = "poclip-"
SUFFIX = ".db"
DEFAULT_KEEP = 10


def backup_dir(settings: StoreLocation) -> Path:
    """Where snapshots of the settings' database are kept: ``data_dir/backups``."""
    return settings.data_dir / "backups"


def snapshot_sqlite(
    db_path: Path, dest_dir: Path, *, keep: int = DEFAULT_KEEP, now: datetime | None = None
) -> Path:
    """Copy the live SQLite database at ``db_path`` into ``dest_dir``; keep the newest ``keep`` snapshots.

    Args:
        db_path: the database file (may be in use by other threads and processes).
        dest_dir: the snapshot folder (created when missing).
        keep: how many snapshots to keep, at least 1.
        now: the time in the snapshot's name (default: now, UTC).
    Returns:
        The snapshot's path.
    """
    if keep < 1:
        raise ValueError("keep must be at least 1")
    if not db_path.is_file():
        raise BackupError(f"no database file at {db_path} to back up")
    dest_dir.mkdir(parents=True, exist_ok=True)
    stamp = (now or utc_now()).strftime("%Y%m%dT%H%M%S.%fZ")
    final = dest_dir / f"{PREFIX}{stamp}{SUFFIX}"
    tmp = dest_dir / f".{final.name}.{uuid.uuid4().hex}.partial"
    try:
        source = sqlite3.connect(db_path, timeout=30)
        try:
            target = sqlite3.connect(tmp)
            try:
                # pages=-1 (the default): one step, so the copy is a single consistent read transaction.
                source.backup(target)
                verdict = target.execute("PRAGMA quick_check").fetchone()[0]
                if verdict != "ok":
                    raise BackupError(f"snapshot failed its check: {verdict}")
            finally:
                target.close()
        finally:
            source.close()
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except sqlite3.Error as exc:
        raise BackupError(f"could not snapshot {db_path}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    for old in list_snapshots(dest_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return final


def list_snapshots(dest_dir: Path) -> list[Path]:
    """Snapshots in ``dest_dir``, oldest first (their names sort by time)."""
    if not dest_dir.is_dir():
        return []
    return sorted(p for p in dest_dir.glob(f"{PREFIX}*{SUFFIX}") if p.is_file())


def take_snapshot(settings: StoreLocation, *, keep: int = DEFAULT_KEEP) -> Path:
    """Snapshot the settings' SQLite database into ``data_dir/backups`` (see :func:`snapshot_sqlite`)."""
    path = DatabaseConfig.from_settings(settings).sqlite_path
    if path is None:
        raise BackupError("snapshots are for a SQLite database file; back up PostgreSQL with pg_dump")
    return snapshot_sqlite(path, backup_dir(settings), keep=keep)


def restore_snapshot(snapshot: Path, db_path: Path) -> None:
    """Put ``snapshot`` in place as the database file. Only while no process has the database open."""
    if not snapshot.is_file():
        raise BackupError(f"no snapshot at {snapshot}")
    db_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = db_path.with_name(f".{db_path.name}.{uuid.uuid4().hex}.restoring")
    try:
        shutil.copyfile(snapshot, tmp)
        # A WAL or shared-memory file left beside the database belongs to the file being replaced.
        for leftover in (db_path.with_name(db_path.name + "-wal"), db_path.with_name(db_path.name + "-shm")):
            leftover.unlink(missing_ok=True)
        os.replace(tmp, db_path)
    finally:
        tmp.unlink(missing_ok=True)


def _judgment_count(path: Path) -> int | None:
    """Judgments in the SQLite file at ``path``; None when it has no judgments table (a fresh, empty file)."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            return int(conn.execute("SELECT count(*) FROM judgments").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return None


def restore_if_missing(settings: StoreLocation) -> Path | None:
    """At start: restore the newest snapshot when the SQLite database is missing, or empty while the snapshot
    holds judgments (a file created by a connection after the real one was deleted).

    An empty file that is replaced is kept beside it as ``<name>.empty-<time>``. Call before
    :func:`annotation_db.migrations.upgrade_schema` (``open_repository`` does both).

    The recovery point is the newest snapshot: judgments recorded after it are lost (snapshots are taken
    every ``backup_every_minutes`` by the trainer loop, and on demand from the admin tab).

    Returns:
        The snapshot that was restored, or None (database present with data, PostgreSQL, or no snapshot).
    """
    path = DatabaseConfig.from_settings(settings).sqlite_path
    if path is None:
        return None
    snapshots = list_snapshots(backup_dir(settings))
    if not snapshots:
        return None
    if path.exists():
        if (_judgment_count(path) or 0) > 0 or not _judgment_count(snapshots[-1]):
            return None
        aside = path.with_name(f"{path.name}.empty-{utc_now().strftime('%Y%m%dT%H%M%SZ')}")
        os.replace(path, aside)
        log.warning("database %s was empty while snapshot %s holds judgments; moved it to %s",
                    path, snapshots[-1].name, aside.name)
    restore_snapshot(snapshots[-1], path)
    log.warning("database %s restored from snapshot %s", path, snapshots[-1].name)
    return snapshots[-1]

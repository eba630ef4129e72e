"""Snapshots of a live SQLite database, and restoring the latest one when the database file is gone.

A snapshot is taken with SQLite's online backup API, which copies a consistent state of the database
while annotators keep writing (WAL lets the copy read while others write). Snapshots are named by UTC
time, ``poclip-20250101T120000.000000Z.db``, checked, written under a temporary name, fsynced and renamed
into place, so a reader of the folder (another machine, a restarted Space) sees whole snapshots or none.
In the default ``snapshots`` storage mode the folder is on the storage bucket and the live database on the
machine's own disk; at start the newest snapshot is restored when the local database is missing or holds
nothing. PostgreSQL is backed up with its own tools (``pg_dump``), not here.
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
                # The copy inherits WAL mode from the live file; a snapshot on the bucket must be one
                # self-contained file that readers never extend with -wal/-shm companions.
                target.execute("PRAGMA journal_mode = DELETE")
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
        _fsync_dir(dest_dir)
    except sqlite3.Error as exc:
        raise BackupError(f"could not snapshot {db_path}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    for old in list_snapshots(dest_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return final


def _fsync_dir(path: Path) -> None:
    # Make the rename itself durable (a file system may otherwise lose the new directory entry on a crash).
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some mounts (FUSE buckets) do not sync directories; the rename is still atomic there
    finally:
        os.close(fd)


def list_snapshots(dest_dir: Path) -> list[Path]:
    """Snapshots in ``dest_dir``, oldest first (their names sort by time)."""
    if not dest_dir.is_dir():
        return []
    return sorted(p for p in dest_dir.glob(f"{PREFIX}*{SUFFIX}") if p.is_file())


def take_snapshot(settings: StoreLocation, *, keep: int = DEFAULT_KEEP) -> Path:
    """Snapshot the settings' SQLite database into ``data_dir/backups`` (see :func:`snapshot_sqlite`)."""
    if settings.storage == "bucket":
        raise BackupError("the database lives on the storage bucket itself (POCLIP_STORAGE=bucket) and is held "
                          "exclusively by this app; snapshots are taken in the default mode, POCLIP_STORAGE=snapshots")
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
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        # A WAL, shared-memory or rollback journal left beside the database belongs to the file being
        # replaced; SQLite would otherwise replay it into the restored one.
        for suffix in ("-wal", "-shm", "-journal"):
            db_path.with_name(db_path.name + suffix).unlink(missing_ok=True)
        os.replace(tmp, db_path)
    finally:
        tmp.unlink(missing_ok=True)


def holds_data(db_path: Path) -> bool:
    """Whether the SQLite file at ``db_path`` holds anything people made: a judgment or a model version.

    A missing or zero-byte file, a file without our tables, or one with only seeded items holds nothing.
    Two indexed ``LIMIT 1`` reads, whatever the database's size.
    """
    if not db_path.is_file() or db_path.stat().st_size == 0:
        return False
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
        try:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            return any(conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is not None
                       for table in ("judgments", "model_versions") if table in tables)
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return False


def restore_if_missing(settings: StoreLocation) -> Path | None:
    """At start: when the SQLite database is missing or holds nothing, but a snapshot holds data, restore it.

    "Holds nothing" is :func:`holds_data` false: e.g. a fresh container whose local disk is empty, or a
    database created on an earlier start before the bucket's snapshots became visible. The newest snapshot
    that holds data is restored. Call before :func:`annotation_db.migrations.upgrade_schema`
    (``open_repository`` does both).

    Returns:
        The snapshot that was restored, or None (database holds data, PostgreSQL, or no snapshot with data).
    """
    path = DatabaseConfig.from_settings(settings).sqlite_path
    if path is None or holds_data(path):
        return None
    for snapshot in reversed(list_snapshots(backup_dir(settings))):
        if holds_data(snapshot):
            if path.exists():  # keep what was there beside it, in case anyone needs to look
                aside = path.with_name(f"{path.name}.empty-{utc_now().strftime('%Y%m%dT%H%M%SZ')}")
                os.replace(path, aside)
            restore_snapshot(snapshot, path)
            log.warning("database %s was missing or empty; restored snapshot %s", path, snapshot.name)
            return snapshot
    return None

"""Snapshots of a live SQLite database and restore on start (SQLite only: PostgreSQL uses pg_dump)."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime

import pytest

from annotation_db import (
    BackupError,
    RepositoryConfig,
    list_snapshots,
    open_repository,
    restore_if_missing,
    snapshot_sqlite,
    take_snapshot,
)
from poclip.settings import Settings


def judgment_count(path) -> int:
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return conn.execute("SELECT count(*) FROM judgments").fetchone()[0]


@pytest.fixture
def settings(tmp_path):
    return Settings(data_dir=tmp_path / "data")


def fill(repo, n_samples, png):
    repo.ensure_label_set("animals", ["cat", "dog"])
    sha = repo.store_image(png(1)).sha256
    return [repo.add_sample(sha, "animals", {"i": i}).id for i in range(n_samples)]


def test_snapshots_of_a_live_database_are_consistent(settings, png):
    repo = open_repository(settings, RepositoryConfig(rate_limit_count=None))
    samples = fill(repo, 400, png)
    writers_done = threading.Event()
    written: list[int] = []

    def write() -> None:
        for i, sample_id in enumerate(samples):
            repo.ensure_annotator(f"w{i % 4}")
            repo.record_judgment(sample_id, f"w{i % 4}", "cat", "dog")
            written.append(sample_id)
        writers_done.set()

    writer = threading.Thread(target=write)
    writer.start()
    counts = []
    try:
        while len(counts) < 2 or (not writers_done.is_set() and len(counts) < 5):
            before = len(written)
            snap = take_snapshot(settings, keep=3)
            after = len(written)
            counts.append(judgment_count(snap))
            # The snapshot is one moment of the database: between what was committed before and after.
            assert before <= counts[-1] <= after + 1
    finally:
        writer.join()
        repo.close()
    assert counts == sorted(counts) and counts[-1] <= len(samples)
    assert len(list_snapshots(settings.data_dir / "backups")) == min(len(counts), 3)


def test_keep_only_the_newest_snapshots(tmp_path):
    db = tmp_path / "x.db"
    sqlite3.connect(db).close()
    made = [
        snapshot_sqlite(db, tmp_path / "b", keep=2, now=datetime(2025, 1, d, tzinfo=UTC)) for d in (1, 2, 3)
    ]
    assert list_snapshots(tmp_path / "b") == made[1:]
    assert made[2].name == "poclip-20250103T000000.000000Z.db"


def test_restore_the_latest_snapshot_when_the_database_is_missing(settings, png):
    repo = open_repository(settings)
    sample = fill(repo, 2, png)
    repo.ensure_annotator("a")
    repo.record_judgment(sample[0], "a", "cat", "dog")
    take_snapshot(settings)
    repo.record_judgment(sample[1], "a", "dog", "cat")  # after the snapshot: lost with the file
    repo.close()
    db_file = settings.data_dir / "poclip.db"
    for suffix in ("", "-wal", "-shm"):
        db_file.with_name(db_file.name + suffix).unlink(missing_ok=True)

    repo = open_repository(settings)  # what the app does at start
    try:
        assert [j.sample_id for j in repo.judgments_of("a")] == [sample[0]]
        assert repo.get_label_set("animals").labels == ("cat", "dog")
    finally:
        repo.close()


def test_restore_if_missing_leaves_a_present_database_alone(settings):
    assert restore_if_missing(settings) is None  # no DB, no snapshot: a fresh start
    repo = open_repository(settings)
    repo.close()
    take_snapshot(settings)
    assert restore_if_missing(settings) is None  # DB present


def test_snapshot_refuses_what_it_cannot_copy(tmp_path):
    with pytest.raises(BackupError, match="no database file"):
        snapshot_sqlite(tmp_path / "missing.db", tmp_path / "b")
    postgres = Settings(data_dir=tmp_path, database_url="postgresql+psycopg://u:p@localhost/db")
    with pytest.raises(BackupError, match="pg_dump"):
        take_snapshot(postgres)
    assert restore_if_missing(postgres) is None

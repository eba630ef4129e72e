"""The database file deleted, replaced or emptied under a running app; disk full and read-only."""

from __future__ import annotations

import os
import sqlite3

import pytest

from annotation_db import (
    DatabaseGoneError,
    Location,
    RepositoryConfig,
    StorageError,
    open_repository,
    take_snapshot,
)


def fill(repo, png, n=3):
    repo.ensure_label_set("animals", ["cat", "dog"])
    repo.ensure_annotator("ann")
    for i in range(n):
        sample = repo.add_sample(repo.store_image(png(i)).sha256, "animals")
        repo.record_judgment(sample.id, "ann", "cat", "dog")


def test_deleting_the_database_file_leads_to_refusal_and_restore_from_the_snapshot_after_restart(tmp_path, png):
    where = Location(tmp_path)
    repo = open_repository(where, RepositoryConfig(rate_limit_count=None))
    fill(repo, png, 3)
    take_snapshot(where)
    db_file = tmp_path / "poclip.db"
    db_file.unlink()
    with pytest.raises(DatabaseGoneError, match="was deleted while the app was running"):
        repo.record_judgment(1, "ann", "dog", "cat")
    with pytest.raises(DatabaseGoneError):
        repo.ensure_annotator("someone-new")
    with pytest.raises(DatabaseGoneError):
        repo.counts()  # reads too: a new connection would have created an empty database
    assert not db_file.exists()
    repo.close()

    restarted = open_repository(where, RepositoryConfig(rate_limit_count=None))
    assert restarted.counts()["judgments"] == 3
    restarted.ensure_annotator("someone-new")  # writes are accepted again
    restarted.close()


def test_a_replaced_file_is_refused_and_an_empty_one_does_not_block_the_restore(tmp_path, png):
    where = Location(tmp_path)
    repo = open_repository(where, RepositoryConfig(rate_limit_count=None))
    fill(repo, png, 2)
    take_snapshot(where)
    db_file = tmp_path / "poclip.db"
    db_file.unlink()
    sqlite3.connect(db_file).close()  # an empty file where the database was (what a new connection leaves)
    with pytest.raises(DatabaseGoneError, match="replaced"):
        repo.ensure_annotator("x")
    repo.close()
    restarted = open_repository(where)
    assert restarted.counts()["judgments"] == 2
    assert any(p.name.startswith("poclip.db.empty-") for p in tmp_path.iterdir())
    restarted.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only files anyway")
def test_a_read_only_database_refuses_writes_with_a_clear_message_and_still_reads(tmp_path, png):
    where = Location(tmp_path)
    repo = open_repository(where, RepositoryConfig(rate_limit_count=None))
    fill(repo, png, 1)
    repo.close()
    for p in tmp_path.glob("poclip.db*"):
        p.chmod(0o444)
    tmp_path.chmod(0o555)
    try:
        from annotation_db import Database, DatabaseConfig, Repository, create_db_engine

        ro = Repository(Database(create_db_engine(DatabaseConfig.from_settings(where))), tmp_path)
        assert ro.counts()["judgments"] == 1
        with pytest.raises(StorageError, match="read-only"):
            ro.ensure_annotator("new")
        ro.close()
    finally:
        tmp_path.chmod(0o755)

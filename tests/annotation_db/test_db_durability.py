"""The database file deleted, replaced or emptied under a running app; disk full and read-only."""

from __future__ import annotations

import os
import sqlite3
import subprocess

import pytest
from sqlite_files import checkpoint, checkpoint_often

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




def cp(source, target) -> None:
    """``cp source target`` from another process, as a person would type it (same inode, new content). In this
    process, closing the file would also drop the locks SQLite's connections hold on it."""
    subprocess.run(["cp", str(source), str(target)], check=True)


def refused_everything(repo, where) -> None:
    """Reads and writes alike are refused with the app's message, which names no server path."""
    for act in (lambda: repo.record_judgment(1, "ann", "dog", "cat"), lambda: repo.ensure_annotator("new"),
                repo.counts, lambda: repo.next_sample("ann")):
        with pytest.raises(DatabaseGoneError, match="was replaced while the app was running") as refusal:
            act()
        assert str(where) not in str(refusal.value) and "poclip.db" not in str(refusal.value)


@pytest.mark.parametrize("journal, copy", [("WAL", "raw"), ("WAL", "snapshot"), ("DELETE", "raw")])
def test_an_older_copy_put_in_place_of_the_running_database_is_refused_not_served(tmp_path, png, journal, copy):
    where = Location(tmp_path, sqlite_journal_mode=journal)
    repo = open_repository(where, RepositoryConfig(rate_limit_count=None))
    checkpoint_often(repo)
    fill(repo, png, 30)
    db_file = tmp_path / "poclip.db"
    if copy == "raw":  # a copy of the file itself, everything checkpointed into it first
        checkpoint(db_file) if journal == "WAL" else None
        old = tmp_path / "old.db"
        cp(db_file, old)
    else:  # a snapshot of the live database (it has a rollback journal: one self-contained file)
        old = take_snapshot(where)
    for i in range(30, 50):
        sample = repo.add_sample(repo.store_image(png(i)).sha256, "animals")
        repo.record_judgment(sample.id, "ann", "cat", "dog")
    assert repo.counts()["judgments"] == 50
    inode = db_file.stat().st_ino
    cp(old, db_file)  # the same inode, older content
    assert db_file.stat().st_ino == inode
    refused_everything(repo, tmp_path)

    # What the server's log says to do: stop the app, put the wanted file in place, remove the write-ahead log
    # that belongs to the replaced file, start. The app then serves that file whole, and takes writes again.
    repo.close()
    cp(old, db_file)
    for suffix in ("-wal", "-shm"):
        db_file.with_name(db_file.name + suffix).unlink(missing_ok=True)
    restarted = open_repository(where, RepositoryConfig(rate_limit_count=None))
    assert restarted.counts()["judgments"] == 30
    restarted.ensure_annotator("someone-new")
    restarted.close()


def test_another_database_put_in_place_is_refused_whatever_its_size(tmp_path, png):
    here, there = Location(tmp_path / "here"), Location(tmp_path / "there")
    repo = open_repository(here, RepositoryConfig(rate_limit_count=None))
    fill(repo, png, 2)
    other = open_repository(there, RepositoryConfig(rate_limit_count=None))
    fill(other, png, 40)  # more writes than ours: its write counter is ahead
    other.close()
    cp(tmp_path / "there" / "poclip.db", tmp_path / "here" / "poclip.db")
    refused_everything(repo, tmp_path)
    repo.close()


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

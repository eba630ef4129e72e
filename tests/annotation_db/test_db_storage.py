"""Storage on a Space: a folder stands in for the storage bucket mounted at /data.

Default mode (``POCLIP_STORAGE=snapshots``): the live WAL database on the machine's own disk, images and heads
on the bucket before their rows, snapshots copied to the bucket atomically, restored on a fresh machine.
Bucket mode: SQLite on the bucket itself with a DELETE journal, an exclusive lock and one connection.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from annotation_db import BackupError, NotFoundError, RepositoryConfig, list_snapshots, open_repository, take_snapshot
from annotation_db.backup import holds_data
from annotation_db.engine import resolved_database_url
from annotation_db.orphans import orphan_files, sweep_orphan_files
from poclip.settings import REPO_DIR, Settings

CONFIG = RepositoryConfig(rate_limit_count=None)


def journal_mode(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA journal_mode").fetchone()[0].lower()


def rows_name_existing_files(repo) -> None:
    """No dangling row: every image and head a row names is on the bucket."""
    from sqlalchemy import select

    from annotation_db.models import Image, ModelVersion

    with repo.db.reading() as s:
        for path in s.scalars(select(Image.path)):
            assert (repo.data_dir / path).is_file(), path
        for path in s.scalars(select(ModelVersion.head_path)):
            assert (repo.data_dir / path).is_file(), path


CRASH_SCRIPT = """
import json, os, sys
from annotation_db import RepositoryConfig, open_repository
from poclip.settings import Settings
args = json.loads(sys.argv[1])
from pathlib import Path
settings = Settings(data_dir=Path(args["bucket"]), local_dir=Path(args["local"]))
repo = open_repository(settings, RepositoryConfig(rate_limit_count=None))
if args["what"] == "image":
    # The process dies between writing the picture to the bucket and inserting the row that names it.
    repo.db.writing = lambda: os._exit(3)
    repo.store_image(bytes.fromhex(args["png"]), source="upload")
else:
    import torch
    from poclip.engine.models import load_model
    from poclip.engine.policy import Policy, save_head
    path = save_head(Policy(load_model("bundled", device=torch.device("cpu"))), args["head"])
    os._exit(3)  # the head is on the bucket; register_version never ran
"""


def crash(what: str, settings: Settings, **extra) -> None:
    payload = json.dumps({"what": what, "bucket": str(settings.data_dir), "local": str(settings.local_dir), **extra})
    proc = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, payload], cwd=REPO_DIR, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 3, proc.stderr


@pytest.fixture
def space(tmp_path):
    """A Space's two disks: the bucket (durable, /data) and the container's own disk (lost on restart)."""
    return Settings(data_dir=tmp_path / "bucket", local_dir=tmp_path / "local", storage="snapshots", backup_keep=3)


def test_snapshot_mode_survives_a_restart_on_a_fresh_machine_and_a_crash_mid_write(space, png, bundled):
    from poclip.engine.policy import Policy, load_head, save_head

    repo = open_repository(space, CONFIG)
    db_file = space.local_dir / "poclip.db"
    assert db_file.is_file() and not (space.data_dir / "poclip.db").exists()
    assert journal_mode(db_file) == "wal"
    repo.ensure_label_set("animals", ["cat", "dog"])
    images = [repo.store_image(png(i)) for i in range(3)]
    samples = [repo.add_sample(im.sha256, "animals", None).id for im in images]
    repo.ensure_annotator("ann")
    for sample in samples:
        repo.record_judgment(sample, "ann", "cat", "dog")
    assert all((space.data_dir / im.path).is_file() for im in images)  # pictures live on the bucket
    head = save_head(Policy(bundled), space.data_dir / "heads" / "run1.safetensors")
    version = repo.register_version("bundled", str(head), {"pairs": 3})
    repo.promote_version(version.id)

    snap = take_snapshot(space, keep=space.backup_keep)
    assert snap.parent == space.data_dir / "backups" and holds_data(snap)
    assert [p.name for p in snap.parent.iterdir()] == [snap.name]  # no temporary file left beside it
    repo.close()

    # The Space restarts on a new machine: the local disk is empty, the bucket is what survives.
    shutil.rmtree(space.local_dir)
    repo = open_repository(space, CONFIG)
    try:
        assert db_file.is_file() and holds_data(db_file)
        assert len(repo.judgments_of("ann")) == 3
        assert repo.active_version().id == version.id
        load_head(repo.active_version().head_path, bundled)  # the head it names is on the bucket
        rows_name_existing_files(repo)
    finally:
        repo.close()

    # Crashes between a file and its row: the file is on the bucket, the row never appears.
    crash("image", space, png=png(99).hex())
    crash("head", space, head=str(space.data_dir / "heads" / "run2.safetensors"))
    repo = open_repository(space, CONFIG)
    try:
        import hashlib

        orphan_sha = hashlib.sha256(png(99)).hexdigest()
        with pytest.raises(NotFoundError):
            repo.get_image(orphan_sha)
        rows_name_existing_files(repo)  # no dangling row
        # The orphans are younger than the sweep's grace period (a replica could be about to insert the row)...
        assert sweep_orphan_files(repo) == []
        orphans = orphan_files(repo, min_age_s=0)
        assert sorted(p.name for p in orphans) == sorted([f"{orphan_sha}.png", "run2.safetensors"])
        # ...and once old enough they are swept; everything a row names stays.
        assert sweep_orphan_files(repo, min_age_s=0) == orphans
        assert not any(p.exists() for p in orphans)
        rows_name_existing_files(repo)
        assert len(repo.judgments_of("ann")) == 3
        # Storing the same picture again after the crash works (content-addressed, row now written).
        assert repo.store_image(png(99)).sha256 == orphan_sha
    finally:
        repo.close()


def test_an_empty_local_database_is_replaced_by_the_bucket_snapshot(space, png):
    repo = open_repository(space, CONFIG)
    repo.ensure_label_set("animals", ["cat", "dog"])
    sample = repo.add_sample(repo.store_image(png(1)).sha256, "animals", None)
    repo.ensure_annotator("ann")
    repo.record_judgment(sample.id, "ann", "cat", "dog")
    take_snapshot(space)
    repo.close()
    db_file = space.local_dir / "poclip.db"

    # A zero-byte file, then a migrated database with nothing people made: both count as empty.
    for make_empty in ("zero bytes", "migrated"):
        shutil.rmtree(space.local_dir)
        if make_empty == "zero bytes":
            space.local_dir.mkdir()
            db_file.write_bytes(b"")
        else:
            bare = Settings(data_dir=space.data_dir / "elsewhere", local_dir=space.local_dir)
            open_repository(bare, CONFIG).close()
            assert not holds_data(db_file)
        repo = open_repository(space, CONFIG)
        try:
            assert len(repo.judgments_of("ann")) == 1, make_empty
        finally:
            repo.close()

    # A local database that holds data is never overwritten by an older snapshot.
    repo = open_repository(space, CONFIG)
    repo.record_judgment(repo.add_sample(repo.store_image(png(2)).sha256, "animals", None).id, "ann", "dog", "cat")
    repo.close()
    repo = open_repository(space, CONFIG)
    try:
        assert len(repo.judgments_of("ann")) == 2
    finally:
        repo.close()


def test_snapshots_are_rotated_and_a_half_written_one_is_never_listed(space, png):
    repo = open_repository(space, CONFIG)
    try:
        made = [take_snapshot(space, keep=space.backup_keep) for _ in range(5)]
    finally:
        repo.close()
    backups = space.data_dir / "backups"
    assert list_snapshots(backups) == made[-3:]
    # What a crash during a snapshot leaves: a temporary name that is neither listed nor restored.
    (backups / ".poclip-20990101T000000.000000Z.db.x.partial").write_bytes(b"half")
    assert list_snapshots(backups) == made[-3:]


def test_bucket_mode_keeps_sqlite_on_the_bucket_with_one_exclusive_writer(tmp_path, png):
    settings = Settings(data_dir=tmp_path / "bucket", storage="bucket")
    repo = open_repository(settings, CONFIG)
    db_file = settings.data_dir / "poclip.db"
    try:
        with repo.db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar().lower() == "delete"
            assert conn.exec_driver_sql("PRAGMA locking_mode").scalar().lower() == "exclusive"
        repo.ensure_label_set("animals", ["cat", "dog"])
        samples = [repo.add_sample(repo.store_image(png(i)).sha256, "animals", None).id for i in range(24)]
        errors: list[BaseException] = []

        def annotate(k: int) -> None:
            try:
                repo.ensure_annotator(f"a{k}")
                for sample in samples[k::8]:
                    repo.record_judgment(sample, f"a{k}", "cat", "dog")
                    repo.stats()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=annotate, args=(k,)) for k in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert errors == []
        assert repo.stats().judgments == 24
        assert not db_file.with_name("poclip.db-wal").exists()  # no WAL on the bucket
        # No second writer: another process cannot even read the file while this app holds it.
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            with sqlite3.connect(db_file, timeout=0.2) as other:
                other.execute("SELECT count(*) FROM judgments").fetchone()
        with pytest.raises(BackupError, match="POCLIP_STORAGE=snapshots"):
            take_snapshot(settings)
    finally:
        repo.close()
    repo = open_repository(settings, CONFIG)  # a restart finds everything on the bucket
    try:
        assert repo.stats().judgments == 24
        rows_name_existing_files(repo)
    finally:
        repo.close()


def test_storage_settings_come_from_one_variable(tmp_path):
    env = {"POCLIP_DATA_DIR": str(tmp_path / "bucket"), "POCLIP_LOCAL_DIR": str(tmp_path / "local")}
    default = Settings.from_env(env)
    assert default.storage == "snapshots"
    assert resolved_database_url(default) == f"sqlite:///{tmp_path / 'local' / 'poclip.db'}"
    bucket = Settings.from_env({**env, "POCLIP_STORAGE": "bucket"})
    assert resolved_database_url(bucket) == f"sqlite:///{tmp_path / 'bucket' / 'poclip.db'}"
    with pytest.raises(ValueError, match="POCLIP_STORAGE must be one of snapshots, bucket"):
        Settings.from_env({**env, "POCLIP_STORAGE": "s3"})
    plain = Settings(data_dir=tmp_path)  # no bucket: everything in the data dir, as on a laptop
    assert resolved_database_url(plain) == f"sqlite:///{tmp_path / 'poclip.db'}"

"""Alembic migrations: an empty database upgraded to head has exactly the ORM's schema."""

from __future__ import annotations

import re
import threading
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text

from annotation_db import DatabaseConfig, create_db_engine, open_repository, upgrade_schema
from annotation_db.migrations import alembic_config, current_revision, downgrade_schema
from annotation_db.models import Base
from poclip.settings import Settings

HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()


def normalise_create(sql: str) -> list[str]:
    """A CREATE statement as its head, its columns in order, and its constraints as a set.

    SQLAlchemy and Alembic may list table constraints in a different order, and quote the table name; neither
    means anything.
    """
    sql = re.sub(r"\s+", " ", sql).strip()
    if "(" not in sql:
        return [sql]
    head, body = sql[: sql.index("(")], sql[sql.index("(") + 1 : sql.rindex(")")]
    head = head.replace('"', "")  # a table rebuilt by Alembic's batch mode has its name quoted
    parts, depth, current = [], 0, ""
    for ch in body:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    parts.append(current.strip())
    columns = [p for p in parts if not p.startswith("CONSTRAINT")]
    constraints = sorted(p for p in parts if p.startswith("CONSTRAINT"))
    return [head.strip(), *columns, *constraints]


def schema_snapshot(engine: Engine) -> dict[str, Any]:
    """Everything the database says about its tables, normalised for comparison."""
    insp = inspect(engine)
    dialect = engine.dialect
    snap: dict[str, Any] = {}
    for table in sorted(set(insp.get_table_names()) - {"alembic_version"}):
        snap[table] = {
            "columns": [
                (c["name"], c["type"].compile(dialect=dialect), c["nullable"])
                for c in insp.get_columns(table)
            ],
            "pk": insp.get_pk_constraint(table)["constrained_columns"],
            "fks": sorted(
                (
                    fk["name"],
                    tuple(fk["constrained_columns"]),
                    fk["referred_table"],
                    tuple(fk["referred_columns"]),
                )
                for fk in insp.get_foreign_keys(table)
            ),
            "indexes": sorted(
                (
                    ix["name"],
                    tuple(ix["column_names"]),
                    bool(ix["unique"]),
                    repr(sorted((k, str(v)) for k, v in ix.get("dialect_options", {}).items())),
                )
                for ix in insp.get_indexes(table)
            ),
            "uniques": sorted(
                (u["name"], tuple(u["column_names"])) for u in insp.get_unique_constraints(table)
            ),
            "checks": sorted(
                (c["name"], re.sub(r"\s+", " ", c["sqltext"])) for c in insp.get_check_constraints(table)
            ),
        }
    if dialect.name == "sqlite":
        # The CREATE statements themselves (catches e.g. AUTOINCREMENT, which the inspector does not show).
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT name, sql FROM sqlite_master WHERE name != 'alembic_version' "
                    "AND sql IS NOT NULL ORDER BY name"
                )
            ).all()
        snap["__sql__"] = [(name, normalise_create(sql)) for name, sql in rows]
    return snap


def test_upgrading_an_empty_database_yields_exactly_the_orm_schema(empty_db_url):
    engine = create_db_engine(DatabaseConfig(empty_db_url))
    try:
        assert current_revision(engine) is None
        upgrade_schema(engine)
        assert current_revision(engine) == HEAD

        with engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
            )
        assert diff == []

        migrated = schema_snapshot(engine)
        assert set(migrated) - {"__sql__"} == set(Base.metadata.tables)
        # Same database, now built straight from the ORM: every column, key, index and check must match.
        downgrade_schema(engine, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        Base.metadata.create_all(engine)
        assert schema_snapshot(engine) == migrated
    finally:
        engine.dispose()


def test_downgrade_then_upgrade_again(empty_db_url):
    engine = create_db_engine(DatabaseConfig(empty_db_url))
    try:
        upgrade_schema(engine)
        downgrade_schema(engine, "base")
        assert current_revision(engine) is None
        upgrade_schema(engine)
        upgrade_schema(engine)  # idempotent: the app runs it at every start
        assert current_revision(engine) == HEAD
    finally:
        engine.dispose()


def test_processes_starting_together_migrate_once(empty_db_url):
    engines = [create_db_engine(DatabaseConfig(empty_db_url)) for _ in range(3)]
    errors: list[Exception] = []
    barrier = threading.Barrier(len(engines))

    def start(engine: Engine) -> None:
        barrier.wait()
        try:
            upgrade_schema(engine)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert current_revision(engines[0]) == HEAD
    finally:
        for e in engines:
            e.dispose()


def test_open_repository_upgrades_the_schema_at_start(empty_db_url, tmp_path):
    settings = Settings(data_dir=tmp_path / "data", database_url=empty_db_url)
    repo = open_repository(settings)
    try:
        assert current_revision(repo.db.engine) == HEAD
        repo.ensure_label_set("animals", ["cat", "dog"])
        assert repo.get_label_set("animals").labels == ("cat", "dog")
    finally:
        repo.close()


def test_default_database_is_a_sqlite_file_in_the_data_dir(tmp_path):
    settings = Settings.from_env({"POCLIP_DATA_DIR": str(tmp_path / "d")})
    repo = open_repository(settings)
    try:
        assert (tmp_path / "d" / "poclip.db").is_file()
        with repo.db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 15_000
    finally:
        repo.close()


def test_journal_mode_is_configurable_for_network_file_systems(tmp_path):
    settings = Settings.from_env({"POCLIP_DATA_DIR": str(tmp_path), "POCLIP_SQLITE_JOURNAL": "delete"})
    repo = open_repository(settings)
    try:
        with repo.db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "delete"
    finally:
        repo.close()


def test_upgrading_to_named_versions_keeps_every_version_and_the_one_active_rule(empty_db_url):
    """Migration 0005 rebuilds model_versions on SQLite: the rows stay (as trained heads) and the partial unique
    index still allows one active version and any number of archived ones."""
    from sqlalchemy.exc import IntegrityError

    engine = create_db_engine(DatabaseConfig(empty_db_url))
    insert = text("INSERT INTO model_versions (backbone, head_path, metrics, status, created_at) "
                  "VALUES ('bundled', :path, '{}', :status, '2025-06-01 12:00:00')")
    try:
        upgrade_schema(engine, "0004")
        with engine.begin() as conn:
            for path, status in (("heads/a", "archived"), ("heads/b", "archived"), ("heads/c", "active")):
                conn.execute(insert, {"path": path, "status": status})
        upgrade_schema(engine)
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT head_path, status, kind, promoted_by FROM model_versions "
                                     "ORDER BY id")).all()
        assert [tuple(r) for r in rows] == [("heads/a", "archived", "trained", None),
                                            ("heads/b", "archived", "trained", None),
                                            ("heads/c", "active", "trained", None)]
        with engine.begin() as conn:
            conn.execute(insert, {"path": "heads/d", "status": "archived"})
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(insert, {"path": "heads/e", "status": "active"})
    finally:
        engine.dispose()

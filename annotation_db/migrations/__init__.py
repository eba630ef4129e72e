"""Alembic migrations, driven from code: no ``alembic.ini`` is needed.

``upgrade_schema(engine)`` is what the app runs at start. For a new revision after changing
:mod:`annotation_db.models`::

    python -c 'from annotation_db.migrations import new_revision; new_revision("what changed")'

then read and edit the generated file under ``versions/`` before committing it.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

from annotation_db.engine import resolved_database_url

SCRIPT_LOCATION = Path(__file__).resolve().parent
# Any fixed number: replicas starting together on one PostgreSQL take turns migrating.
_PG_MIGRATION_LOCK = 0x706F636C6970


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config for these migrations (``url`` for the command line; code passes a connection)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade_schema(engine: Engine, revision: str = "head") -> None:
    """Bring the database to ``revision`` (default: the latest), in one transaction, safe to run concurrently.

    Args:
        engine: the engine from :func:`annotation_db.engine.create_db_engine`.
        revision: Alembic revision id, or ``head``.
    """
    # On SQLite the write option makes this BEGIN IMMEDIATE: two processes starting at once queue up.
    with engine.execution_options(annotation_db_write=True).begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def downgrade_schema(engine: Engine, revision: str) -> None:
    """Step the schema back to ``revision`` (``base`` drops every table)."""
    with engine.execution_options(annotation_db_write=True).begin() as conn:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None for an empty database."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def new_revision(message: str, url: str | None = None) -> None:
    """Autogenerate a revision by diffing the models against the database at ``url`` (default: settings)."""
    if url is None:
        from poclip.settings import Settings

        url = resolved_database_url(Settings.from_env())
    command.revision(alembic_config(url), message=message, autogenerate=True)

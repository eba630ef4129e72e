"""Alembic environment: runs on the connection that :func:`annotation_db.migrations.upgrade_schema` passes."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from annotation_db.models import Base

config = context.config


def _configure(**kwargs: object) -> None:
    # Batch mode: SQLite cannot ALTER most things, so Alembic rebuilds the table; harmless on PostgreSQL.
    context.configure(target_metadata=Base.metadata, render_as_batch=True, compare_type=True, **kwargs)


if context.is_offline_mode():
    _configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
    else:
        engine = create_engine(config.get_main_option("sqlalchemy.url"))
        with engine.begin() as connection:
            _configure(connection=connection)
            with context.begin_transaction():
                context.run_migrations()
        engine.dispose()

"""Named versions and admin promotions: what a version serves, and who made it live by hand and why.

- ``model_versions.kind``: ``trained`` (a head file; every existing row), ``starter`` (the shipped starter head)
  or ``base`` (the base model, no head). A rollback to the starter head or the base model makes such a row live,
  so what serves is always the one active row, which every replica and the trainer read.
- ``model_versions.promoted_by``, ``promotion_reason``: the admin who last made the version live by hand and the
  reason they typed (required for a version the gate rejected); NULL for the gate's promotions.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

KIND = sa.Enum("trained", "starter", "base", name="version_kind", native_enum=False, create_constraint=True,
               length=16)


def _batch():
    # SQLite adds a column with a CHECK only by rebuilding the table (Alembic's batch mode copies the rows and the
    # partial unique index on status); PostgreSQL alters it in place.
    sqlite = op.get_context().dialect.name == "sqlite"
    return op.batch_alter_table("model_versions", recreate="always" if sqlite else "auto")


def upgrade() -> None:
    with _batch() as batch:
        batch.add_column(sa.Column("kind", KIND, server_default=sa.text("'trained'"), nullable=False))
        batch.add_column(sa.Column("promoted_by", sa.String(length=96), nullable=True))
        batch.add_column(sa.Column("promotion_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with _batch() as batch:
        batch.drop_column("promotion_reason")
        batch.drop_column("promoted_by")
        batch.drop_constraint(op.f("ck_model_versions_version_kind"), type_="check")
        batch.drop_column("kind")

"""Display names: what a person typed, kept beside the signed identity that acts.

- ``annotators.display_name``: the typed name (cleaned: NFKC, invisible characters removed), shown only; it
  never decides who acts (the handle does: a signed anonymous id or a Hugging Face login).
- ``annotators.display_key``: the name's confusable skeleton, unique, so two people cannot show the same (or a
  look-alike) name. Both are NULL for annotators who never typed one.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Batch mode: SQLite cannot add a unique constraint to an existing table, so it rebuilds it.
    with op.batch_alter_table("annotators") as batch:
        batch.add_column(sa.Column("display_name", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("display_key", sa.String(length=256), nullable=True))
        batch.create_unique_constraint(op.f("uq_annotators_display_key"), ["display_key"])


def downgrade() -> None:
    with op.batch_alter_table("annotators") as batch:
        batch.drop_constraint(op.f("uq_annotators_display_key"), type_="unique")
        batch.drop_column("display_key")
        batch.drop_column("display_name")

"""The annotation queue's indexes, and a killed run's retry.

- ``ix_samples_votes_id``, ``ix_samples_label_set_votes_id`` (replacing ``ix_samples_label_set_id``): choosing the
  next item walks the samples of one vote count in id order from a random point, instead of sorting them all.
- ``ix_served_items_annotator_served_at``: an annotator's unanswered items, least recently served first.
- ``training_runs.attempt``: 1 for a queued run; a run whose worker died is queued again once, as attempt 2.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_samples_label_set_id", table_name="samples")
    op.create_index("ix_samples_votes_id", "samples", ["votes", "id"])
    op.create_index("ix_samples_label_set_votes_id", "samples", ["label_set_id", "votes", "id"])
    op.create_index("ix_served_items_annotator_served_at", "served_items", ["annotator_id", "served_at"])
    # A constant default: SQLite adds the column in place, without rebuilding the table.
    op.add_column("training_runs", sa.Column("attempt", sa.Integer(), server_default=sa.text("1"), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("training_runs") as batch:
        batch.drop_column("attempt")
    op.drop_index("ix_served_items_annotator_served_at", table_name="served_items")
    op.drop_index("ix_samples_label_set_votes_id", table_name="samples")
    op.drop_index("ix_samples_votes_id", table_name="samples")
    op.create_index("ix_samples_label_set_id", "samples", ["label_set_id"])

"""Maintained counters, run leases (fencing tokens), one queued run, and the items served to each annotator.

- ``counters``: totals kept up to date by the writes that change them, so status reads one row per figure
  instead of counting the whole database; filled from the existing rows here.
- ``training_runs.lease``: a fencing token drawn at claim; heartbeats, registering and promoting a version
  must present it, so a worker that lost its run cannot act on it any more.
- ``training_runs.judgment_watermark``: the newest judgment a run trained on (the scheduler counts after it).
- ``uq_training_runs_one_queued``: at most one queued run, enforced by the database.
- ``served_items``: which samples were shown to which annotator; answers are accepted only for those.
- ``samples.votes``: the sample's counted votes (not gold, not undone), kept by the judgment writes, so choosing
  the next item reads the samples instead of grouping every judgment.

Revision ID: 0003
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "counters",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("value", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_counters")),
    )
    op.execute(
        "INSERT INTO counters (name, value) "
        "SELECT 'judgments', count(*) FROM judgments WHERE undone_at IS NULL "
        "UNION ALL SELECT 'undone', count(*) FROM judgments WHERE undone_at IS NOT NULL "
        "UNION ALL SELECT 'annotators', count(*) FROM annotators "
        "UNION ALL SELECT 'images', count(*) FROM images "
        "UNION ALL SELECT 'samples', count(*) FROM samples"
    )
    op.create_table(
        "served_items",
        sa.Column("annotator_id", sa.Integer(), nullable=False),
        sa.Column("sample_id", sa.Integer(), nullable=False),
        sa.Column("served_at", sa.DateTime(timezone=False), nullable=False),
        sa.ForeignKeyConstraint(
            ["annotator_id"], ["annotators.id"], name=op.f("fk_served_items_annotator_id_annotators")
        ),
        sa.ForeignKeyConstraint(["sample_id"], ["samples.id"], name=op.f("fk_served_items_sample_id_samples")),
        sa.PrimaryKeyConstraint("annotator_id", "sample_id", name=op.f("pk_served_items")),
    )
    with op.batch_alter_table("samples") as batch:
        batch.add_column(sa.Column("votes", sa.Integer(), server_default=sa.text("0"), nullable=False))
    op.execute(
        "UPDATE samples SET votes = (SELECT count(*) FROM judgments WHERE judgments.sample_id = samples.id "
        "AND judgments.undone_at IS NULL AND judgments.kind != 'gold')"
    )
    with op.batch_alter_table("training_runs") as batch:
        batch.add_column(sa.Column("lease", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("judgment_watermark", sa.Integer(), nullable=True))
    # Older duplicates (the in-process lock was the only guard) would block the index: keep the oldest.
    op.execute(
        "UPDATE training_runs SET status = 'failed', error = 'duplicate queued run dropped by migration 0003' "
        "WHERE status = 'queued' AND id > (SELECT min(id) FROM training_runs WHERE status = 'queued')"
    )
    op.create_index(
        "uq_training_runs_one_queued",
        "training_runs",
        ["status"],
        unique=True,
        sqlite_where=sa.text("status = 'queued'"),
        postgresql_where=sa.text("status = 'queued'"),
    )


def downgrade() -> None:
    op.drop_index("uq_training_runs_one_queued", table_name="training_runs")
    with op.batch_alter_table("training_runs") as batch:
        batch.drop_column("judgment_watermark")
        batch.drop_column("lease")
    with op.batch_alter_table("samples") as batch:
        batch.drop_column("votes")
    op.drop_table("served_items")
    op.drop_table("counters")

"""Battles: which two models a Compare vote saw, one per side, and whether they were named before it.

- ``battles``: one row per Compare vote (its judgment), with ``left_model`` and ``right_model`` (``base``,
  ``aligned`` or a peer defense's name) and ``blind`` (arena mode). The defense leaderboard counts the blind
  ones. Votes stored before this revision have none: their ``judgments.shown_left`` says only base or aligned,
  and whether they were blind was not recorded.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "battles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("judgment_id", sa.Integer(), nullable=False),
        sa.Column("left_model", sa.String(length=32), nullable=False),
        sa.Column("right_model", sa.String(length=32), nullable=False),
        sa.Column("blind", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["judgment_id"], ["judgments.id"], name=op.f("fk_battles_judgment_id_judgments"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_battles")),
        sa.UniqueConstraint("judgment_id", name=op.f("uq_battles_judgment_id")),
    )
    op.create_index("ix_battles_blind", "battles", ["blind"])


def downgrade() -> None:
    op.drop_index("ix_battles_blind", table_name="battles")
    op.drop_table("battles")
